"""The program as invoked, and qemu-img's ways of ending with an error.

qemu-img names itself so: every error line starts with ``argv[0]``'s last component
(:data:`NAME`, ``qemu-img: ...``) and qemu-img 10.0's hints quote ``argv[0]`` itself and the
command (``Try './qemu-img info --help' for more info``): :func:`invoked_as`. Its help texts,
its version line and 7.2's hint spell it ``qemu-img`` whatever it was invoked as
(:data:`FIXED`). :func:`set_argv0` records them at start (and tells the core,
:func:`qimg.compat.set_program`). The ways qemu-img ends with an
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
#: the name qemu-img's fixed texts give it (help texts, the version line, 7.2's usage hint):
#: ``qemu-img`` under any name but qimg's own (``qimg``, ``qimg-10``...)
FIXED = "qimg"
#: ``argv[0]`` as given to Python (a script's path: see :func:`invoked_as`)
_ARGV0 = "qimg"
_invoked: str | None = None
#: the command being run ("" before it is known)
COMMAND = ""


def set_argv0(argv0: str, script: bool = False) -> None:
    """Record ``argv[0]``; ``script``: it is the running script's path (``sys.argv[0]``), which
    may stand for a bare name (:func:`invoked_as`)."""
    global NAME, FIXED, _ARGV0, _invoked, COMMAND
    _ARGV0 = argv0 or "qimg"
    _invoked = None if script else _ARGV0
    NAME = _ARGV0.rstrip("/").rpartition("/")[2] or "qimg"
    FIXED = "qimg" if NAME.startswith("qimg") else "qemu-img"
    COMMAND = ""
    from qimg.compat import set_program

    set_program(NAME, FIXED)


def invoked_as() -> str:
    """``argv[0]`` as the caller gave it, as a C program such as qemu-img sees it.

    A script started through its ``#!`` line does not get the caller's ``argv[0]``: the
    interpreter gets the path the kernel ran, so a name found by PATH lookup (a shell,
    ``execvp``, ``subprocess.run(["qemu-img", ...])``) arrives as that PATH entry joined with
    the name (``/usr/bin/qemu-img``). When ``argv[0]`` is exactly what looking its last
    component up on PATH yields, the caller gave the bare name (the one case this reads
    otherwise: the same path typed out in full). Relative and other absolute paths, and links,
    arrive as given."""
    global _invoked
    if _invoked is None:
        _invoked = _ARGV0
        name = NAME
        if "/" in _ARGV0 and name and name not in (".", ".."):
            import os

            for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
                if not d:
                    continue  # the current folder: a lookup there passes the bare name on
                cand = os.path.join(d, name)
                if os.access(cand, os.X_OK) and not os.path.isdir(cand):
                    if _ARGV0 in (cand, f"{d}/{name}"):
                        _invoked = name
                    break
    return _invoked


def set_command(name: str) -> None:
    global COMMAND
    COMMAND = name


def text(key: str, **fields: object) -> str:
    """The selected profile's wording of ``key`` (:data:`qimg.compat.TEXTS`), with ``{prog}``
    (the program's name), ``{fixed}`` (:data:`FIXED`), ``{argv0}`` (as invoked, with the
    command) and ``fields`` filled in."""
    from qimg.compat import text as wording

    argv0 = invoked_as()
    if COMMAND:
        argv0 = f"{argv0} {COMMAND}"
    return wording(key).format(prog=NAME, fixed=FIXED, argv0=argv0, **fields)


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
