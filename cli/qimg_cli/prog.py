"""The program as invoked, and qemu-img's ways of ending with an error.

qemu-img names itself so: every error line starts with ``argv[0]``'s last component
(:data:`NAME`, ``qemu-img: ...``) and qemu-img 10.0's hints quote ``argv[0]`` itself and the
command (``Try '/usr/bin/qemu-img info --help' for more info``); :func:`set_argv0` records both at
start (and tells the core, :func:`qimg.compat.set_program`). The ways qemu-img ends with an
error: :func:`error_exit`, :func:`usage_exit` (the hint follows), :func:`fail` (the profile's
wording of a message). Every other module of the CLI may import this one; it imports none of
them.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import NoReturn

#: ``argv[0]``'s last component: the prefix of every error line
NAME = "qimg"
#: ``argv[0]`` as given (qemu-img 10.0 quotes it in its usage hints)
ARGV0 = "qimg"
#: the command being run ("" before it is known)
COMMAND = ""


def set_argv0(argv0: str) -> None:
    global NAME, ARGV0, COMMAND
    ARGV0 = argv0 or "qimg"
    NAME = ARGV0.rstrip("/").rpartition("/")[2] or "qimg"
    COMMAND = ""
    from qimg.compat import set_program

    set_program(NAME)


def set_command(name: str) -> None:
    global COMMAND
    COMMAND = name


def text(key: str, **fields: object) -> str:
    """The selected profile's wording of ``key`` (:data:`qimg.compat.TEXTS`), with ``{prog}``
    (the program's name), ``{argv0}`` (as invoked, with the command) and ``fields`` filled in."""
    from qimg.compat import text as wording

    argv0 = f"{ARGV0} {COMMAND}" if COMMAND else ARGV0
    return wording(key).format(prog=NAME, argv0=argv0, **fields)


def try_help() -> str:
    """The hint a usage error ends with (``Try 'qemu-img --help' for more information``)."""
    return text("try-help")


def error_exit(message: str, code: int = 1) -> NoReturn:
    """Print ``prog: message`` on stderr and exit (qemu-img's error_report and exit)."""
    sys.stderr.write(f"{NAME}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def usage_exit(message: str) -> NoReturn:
    """qemu-img's ``error_exit``: the message, then the ``--help`` hint; exit 1."""
    error_exit(f"{message}\n{try_help()}")


def fail(key: str, **fields: object) -> NoReturn:
    """Exit with the profile's message ``key``; a wording ending in ``{try}`` is a usage error
    in that profile (the hint follows), any other a plain error."""
    msg = text(key, **fields, **{"try": "\x00"})
    if msg.endswith("\n\x00"):
        usage_exit(msg[:-2])
    error_exit(msg)


def warn(message: str) -> None:
    """A ``prog: message`` line on stderr that does not end the program."""
    sys.stderr.write(f"{NAME}: {message}\n")
