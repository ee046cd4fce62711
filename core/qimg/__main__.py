"""``python -m qimg``: the qimg command line, when it is installed.

The core does not depend on the command line (distribution qimg-cli); this module only hands
over to it, or says what to install."""
import sys


def main() -> int:
    try:
        from qimg_cli.main import main as cli_main
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "qimg_cli":
            raise
        sys.stderr.write("qimg: the command line is not installed: install the qimg-cli distribution "
                         "(pip install qimg-cli; from a checkout: pip install ./cli, or pip install . for everything)\n")
        return 1
    cli_main(prog_name="qimg")  # argv[0] is this file's path: the program is qimg
    return 0


if __name__ == "__main__":
    sys.exit(main())
