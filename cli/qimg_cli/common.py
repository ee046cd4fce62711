"""Helpers every subcommand shares: qemu-img's option parsing (:class:`QemuCommand`), opening
images the qemu-img way, -o merging, --output, progress (-p and SIGUSR1), quiet printing,
--object secrets, size arguments."""
from __future__ import annotations

import sys

from .main import PROG, error_exit

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, NoReturn

    import click


def say(text: str, quiet: bool = False) -> None:
    """Print a line on stdout unless -q."""
    if not quiet:
        import click

        click.echo(text)


def warn(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")


def usage_exit(message: str) -> NoReturn:
    """qemu-img's ``error_exit``: the message plus the ``--help`` hint, exit 1."""
    error_exit(f"{message}\nTry '{PROG} --help' for more information")


def check_output_format(value: str | None) -> str:
    """``--output`` accepts human or json; anything else is qemu-img's error."""
    if value is None or value == "human":
        return "human"
    if value == "json":
        return "json"
    error_exit("--output must be used with human or json as argument.")


def merge_o(values: Iterable[str]) -> str:
    """Repeated ``-o`` options merge into one comma-separated string."""
    from qimg.options import merge_option_strings

    return merge_option_strings(values)


def parse_objects(objects: Iterable[str]) -> None:
    """Register ``--object secret,id=...,data=...|file=...`` definitions with the core."""
    if not objects:
        return
    from qimg import secrets

    for text in objects:
        if text in ("help", "?"):
            # qimg knows one kind of user creatable object
            sys.stdout.write("List of user creatable objects:\n  secret\n")
            raise SystemExit(0)
        secrets.add_object(text)


def strtosz(text: str) -> int:
    """QEMU's ``qemu_strtosz`` (see :func:`qimg.ops.sizes.strtosz`), warnings on stderr."""
    from qimg.ops.sizes import strtosz as _strtosz

    return _strtosz(text, warn)


def image_size_arg(text: str) -> int:
    """A size argument of create/measure, with qemu-img's messages (qemu's ``cvtnum``)."""
    from qimg.errors import QimgError

    try:
        return strtosz(text)
    except OverflowError:
        raise QimgError("Invalid image size specified. Must be between 0 and 9223372036854775807.") from None
    except ValueError:
        raise QimgError(
            "Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
            f"{PROG}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."
        ) from None


# -- qemu-img's getopt parsing on top of click ----------------------------------------------------

def _getopt_spec(cmd: click.Command) -> tuple[list[Any], dict[str, Any]]:
    """Opt list for a click command, and Opt key -> the click option token to re-emit."""
    import click

    params = [p for p in cmd.params if isinstance(p, click.Option)]
    return getopt_spec(params, getattr(cmd, "legacy_longs", None))


def getopt_spec(params: Iterable[Any], legacy: Iterable[str] | None) -> tuple[list[Any], dict[str, Any]]:
    """Opt list for options with click's ``opts``, ``name`` and ``is_flag`` attributes (click
    Options, or the click-free fast path's :class:`qimg_cli.fast.Option`), and Opt key -> the
    option token to re-emit."""
    from .getopt import Opt

    legacy = list(legacy) if legacy is not None else None
    opts: list[Opt] = []
    tokens: dict[str, Any] = {}
    have_h = False
    for p in params:
        shorts = [s[1] for s in p.opts if len(s) == 2 and s[0] == "-" and s[1] != "-"]
        longs = [s[2:] for s in p.opts if s.startswith("--")]
        old = tuple(n for n in longs if legacy is None or n in legacy)
        new = tuple(n for n in longs if n not in old)
        short = shorts[0] if shorts else None
        have_h = have_h or short == "h"
        o = Opt(p.name or p.opts[0], short, old, not p.is_flag, new)
        opts.append(o)
        tokens[o.key] = (p.opts[0], p.is_flag)
    if not have_h:
        opts.insert(0, Opt("__help__", "h", ("help",), False))
    if legacy is not None:
        rank = {n: i for i, n in enumerate(legacy)}
        opts.sort(key=lambda o: min((rank.get(n, len(rank)) for n in o.longs), default=len(rank)))
    return opts, tokens


def qemu_getopt(name: str, opts: list[Any], args: list[str], hook: Any, state: dict[str, Any],
                glibc_errors: bool = False) -> tuple[list[Any], list[str]]:
    """qemu-img's getopt loop for one command: ``(found (Opt, value) pairs, positionals)``.

    ``--object`` values are defined as they are met, ``-h``/``--help`` prints the full help and
    exits 0 there, ``hook(key, value, state)`` sees every option; usage errors exit as qemu-img.
    """
    from .getopt import GetoptError, getopt

    def on_option(o: Any, value: str | None) -> None:
        if hook is not None:
            hook(o.key, value, state)
        if o.key == "objects":
            # qemu-img defines --object objects while parsing, before later usage errors
            parse_objects([value or ""])
            return
        if o.key == "__help__":
            from .app import print_help

            print_help()
            raise SystemExit(0)

    try:
        return getopt(list(args), opts, on_option=on_option, prog=name)
    except GetoptError as e:
        if glibc_errors:
            # getopt printed its own message, then qemu-img showed the help (exit 0)
            sys.stderr.write(f"{name}: {e.glibc}\n")
            sys.stderr.flush()
            from .app import print_help

            print_help()
            raise SystemExit(0) from None
        usage_exit(str(e))


def normalize_args(cmd: click.Command, args: list[str], state: dict[str, Any] | None = None) -> list[str]:
    """Parse ``args`` as qemu-img would for ``cmd`` and return canonical click tokens.

    Usage errors exit with qemu-img's text; ``-h``/``--help`` prints the full help and exits 0
    at the point getopt meets it.
    """
    opts, tokens = _getopt_spec(cmd)
    found, positionals = qemu_getopt(cmd.name or "", opts, args, getattr(cmd, "getopt_hook", None),
                                     {} if state is None else state, getattr(cmd, "glibc_errors", False))
    out: list[str] = []
    for o, value in found:
        if o.key == "objects":
            continue  # already defined
        token, is_flag = tokens[o.key]
        out.append(token)
        if not is_flag:
            out.append(value if value is not None else "")
    out.append("--")
    out.extend(positionals)
    return out


def check_option_list(key: str, value: str | None, state: dict[str, Any]) -> None:
    """getopt hook for ``-o``: qemu-img's ``Invalid option list`` while parsing."""
    if key == "options":
        from qimg.ops.create import valid_option_list

        if not valid_option_list(value or ""):
            error_exit(f"Invalid option list: {value}")


def __getattr__(name: str) -> Any:
    # the click-based command class loads click: only commands that run through click need it
    if name in ("QemuCommand", "qemu_command"):
        from . import clickcmd

        return getattr(clickcmd, name)
    raise AttributeError(name)


# -- opening images ---------------------------------------------------------------------------------

def open_image(filename: str, fmt: str | None = None, *, image_opts: bool = False,
               writable: bool = False, force_share: bool = False, backing: bool = True,
               quiet_probe_warning: bool = True, options: dict[str, Any] | None = None,
               resize: bool = False) -> Any:
    """Open an image for a command: :func:`qimg.open`, which parses the name (a path, a
    protocol URL, ``json:{...}``, or with ``image_opts`` an option string) and words every
    error as qemu-img (``Could not open 'x': ...``). ``quiet_probe_warning`` is kept for
    compatibility and ignored (a writable open of a probed raw image prints qemu's warning)."""
    import qimg
    from qimg import api

    api.report = warn  # QEMU's warn_report lines carry the program name
    return qimg.open(filename, fmt, image_opts=image_opts, writable=writable, force_share=force_share,
                     backing=backing, options=options, resize=resize)


class Progress:
    """qemu-img's progress line ``    (12.34/100%)\\r``; also printed once on SIGUSR1."""

    def __init__(self, enabled: bool, initial: bool = True) -> None:
        """``initial`` False: print nothing until the first update (qemu's amend)."""
        self.enabled = enabled
        self.current = 0.0
        self.last_printed = -1.0
        # the C module: signal.py wraps it in enums (and imports enum), start-up for nothing
        import _signal

        try:
            _signal.signal(_signal.SIGUSR1, self._on_signal)
        except (ValueError, OSError, AttributeError):
            pass
        if enabled and initial:
            self._print()

    def end(self) -> None:
        """qemu_progress_end: only the final newline (after a failure, no 100%)."""
        if self.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()

    def _on_signal(self, *_: Any) -> None:
        self._print(force=True)

    def _print(self, force: bool = False) -> None:
        sys.stdout.write(f"    ({self.current:.2f}/100%)\r")
        sys.stdout.flush()
        self.last_printed = self.current

    def update(self, done: float, total: float) -> None:
        pct = 100.0 if total <= 0 else min(100.0, done * 100.0 / total)
        self.current = pct
        # qemu-img prints when progress moved by at least 1 percent
        if self.enabled and pct - self.last_printed >= 1.0:
            self._print()

    def finish(self) -> None:
        if self.enabled:
            self.current = 100.0
            self._print()
            sys.stdout.write("\n")
            sys.stdout.flush()
