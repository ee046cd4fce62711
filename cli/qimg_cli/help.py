"""``--help`` and ``--version``, built from the option tables (:mod:`qimg_cli.tables`) in the
selected profile's layout:

- qemu-img 7.2: one global help (``-h`` anywhere prints it): version, usage, each command's
  syntax line, the parameters' descriptions, the supported formats on one line;
- qemu-img 10.0: a global help listing the commands with their summaries and the formats in
  wrapped lines, and ``COMMAND --help``: the command's usage and its options' entries.

qemu-img writes its own name into these texts; qimg writes the name it was invoked as, so that
under the name ``qemu-img`` the texts are qemu-img's, byte for byte. The formats listed are
the registry's (the plugins installed).
"""
from __future__ import annotations

import sys

from . import prog

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .tables import Command

# qemu-img 7.2's help around the command syntax lines ("qemu-img" is the program's name)
_HEAD_72 = """\
usage: qemu-img [standard options] command [command options]
QEMU disk image utility

    '-h', '--help'       display this help and exit
    '-V', '--version'    output version information and exit
    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]
                         specify tracing options

Command syntax:
"""

_PARAMS_72 = """
Command parameters:
  'filename' is a disk image filename
  'objectdef' is a QEMU user creatable object definition. See the qemu(1)
    manual page for a description of the object properties. The most common
    object type is a 'secret', which is used to supply passwords and/or
    encryption keys.
  'fmt' is the disk image format. It is guessed automatically in most cases
  'cache' is the cache mode used to write the output disk image, the valid
    options are: 'none', 'writeback' (default, except for convert), 'writethrough',
    'directsync' and 'unsafe' (default for convert)
  'src_cache' is the cache mode used to read input disk images, the valid
    options are the same as for the 'cache' option
  'size' is the disk image size in bytes. Optional suffixes
    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),
    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are
    supported. 'b' is ignored.
  'output_filename' is the destination disk image filename
  'output_fmt' is the destination format
  'options' is a comma separated list of format specific options in a
    name=value format. Use -o help for an overview of the options supported by
    the used format
  'snapshot_param' is param used for internal snapshot, format
    is 'snapshot.id=[ID],snapshot.name=[NAME]', or
    '[ID_OR_NAME]'
  '-c' indicates that target image must be compressed (qcow format only)
  '-u' allows unsafe backing chains. For rebasing, it is assumed that old and
       new backing file match exactly. The image doesn't need a working
       backing file before rebasing in this case (useful for renaming the
       backing file). For image creation, allow creating without attempting
       to open the backing file.
  '-h' with or without a command shows this help and lists the supported formats
  '-p' show progress of command (only certain commands)
  '-q' use Quiet mode - do not print any output (except errors)
  '-S' indicates the consecutive number of bytes (defaults to 4k) that must
       contain only zeros for qemu-img to create a sparse image during
       conversion. If the number of bytes is 0, the source will not be scanned for
       unallocated or zero sectors, and the destination image will always be
       fully allocated
  '--output' takes the format in which the output must be done (human or json)
  '-n' skips the target volume creation (useful if the volume is created
       prior to running qemu-img)

Parameters to bitmap subcommand:
  'bitmap' is the name of the bitmap to manipulate, through one or more
       actions from '--add', '--remove', '--clear', '--enable', '--disable',
       or '--merge source'
  '-g granularity' sets the granularity for '--add' actions
  '-b source' and '-F src_fmt' tell '--merge' actions to find the source
       bitmaps from an alternative file

Parameters to check subcommand:
  '-r' tries to repair any inconsistencies that are found during the check.
       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes all
       kinds of errors, with a higher risk of choosing the wrong fix or
       hiding corruption that has already occurred.

Parameters to convert subcommand:
  '--bitmaps' copies all top-level persistent bitmaps to destination
  '-m' specifies how many coroutines work in parallel during the convert
       process (defaults to 8)
  '-W' allow to write to the target out of order rather than sequential

Parameters to snapshot subcommand:
  'snapshot' is the name of the snapshot to create, apply or delete
  '-a' applies a snapshot (revert disk to saved state)
  '-c' creates a snapshot
  '-d' deletes a snapshot
  '-l' lists all snapshots in the given image

Parameters to compare subcommand:
  '-f' first image format
  '-F' second image format
  '-s' run in Strict mode - fail on different image size or sector allocation

Parameters to dd subcommand:
  'bs=BYTES' read and write up to BYTES bytes at a time (default: 512)
  'count=N' copy only N input blocks
  'if=FILE' read from FILE
  'of=FILE' write to FILE
  'skip=N' skip N bs-sized blocks at the start of input

"""

_TAIL = """
See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
"""


def _named(text: str) -> str:
    """qemu-img's own name in a text: ``qemu-img`` under any name but qimg's (qemu-img does not
    spell it as invoked in its help texts)."""
    return text.replace("qemu-img", prog.FIXED) if prog.FIXED != "qemu-img" else text


def format_names() -> list[str]:
    from qimg.plugins import get_registry

    return get_registry().driver_names()


def version_text() -> str:
    """``--version``: ``qemu-img version X.Y.Z (qimg V)`` (X.Y.Z: the profile's qemu-img) and
    qemu-img's copyright line."""
    from qimg import __version__
    from qimg.compat import version_string

    return f"{prog.FIXED} version {version_string()} (qimg {__version__})\n{prog.text('copyright')}\n"


def global_help() -> str:
    """Everything ``--help`` prints (ends with a newline)."""
    from qimg.compat import has

    return _global_help_10() if has("command-help") else _global_help_72()


def _global_help_72() -> str:
    from .tables import NAMES_72, SYNTAX_72

    syntax = "".join(f"  {SYNTAX_72[n]}\n" for n in NAMES_72)
    return (version_text() + _named(_HEAD_72 + syntax + _PARAMS_72)
            + "Supported formats: " + " ".join(format_names()) + "\n" + _TAIL)


def _global_help_10() -> str:
    from .tables import SUMMARIES, global_options

    g = global_options()
    out = [version_text(), f"{g.summary}.  Usage:\n\n  qemu-img {g.usage}\n\nStandard options:\n"]
    out += [g.option(k).doc + "\n" for k in g.layout]
    out.append("\nRecognized commands (run qemu-img COMMAND --help for command-specific help):\n\n")
    out += [f"  {n} - {summary}\n" for n, summary in SUMMARIES.items()]
    for name, summary in plugin_commands():
        out.append(f"  {name} - {summary}\n")
    out.append("\nSupported image formats:\n")
    # qemu-img 10.0's format_print: a name goes on a new line when the line would pass 75
    n = 99
    for name in format_names():
        if n + len(name) > 75:
            out.append("\n ")
            n = 1
        item = f" {name}"
        out.append(item)
        n += len(item)
    if n:
        out.append("\n")
    out.append(_TAIL)
    return _named("".join(out))


def command_help(cmd: Command) -> str:
    """qemu-img 10.0's ``COMMAND --help``."""
    entries = []
    for item in cmd.layout:
        entries.append(item if item.startswith(" ") else cmd.option(item).doc)
    return _named(f"Usage:\n{cmd.summary}.  Usage:\n\n  qemu-img {cmd.name} {cmd.usage}\nArguments:\n"
                  "  -h, --help\n     print this help and exit\n" + "".join(e + "\n" for e in entries) + "\n")


def plugin_commands() -> list[tuple[str, str]]:
    """(name, summary) of the commands plugins add (none, without importing click,
    when no plugin implements the hook)."""
    from .plugincmds import plugin_command_summaries

    return plugin_command_summaries()


def print_global_help() -> None:
    sys.stdout.write(global_help())
    sys.stdout.flush()


def print_command_help(cmd: Command) -> None:
    """``-h``/``--help``: the command's own help (qemu-img 10.0), the global help (7.2)."""
    from qimg.compat import has

    if not cmd.name or not has("command-help"):
        print_global_help()
        return
    sys.stdout.write(command_help(cmd))
    sys.stdout.flush()


def print_version() -> None:
    sys.stdout.write(version_text())
    sys.stdout.flush()
