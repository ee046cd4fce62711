"""Option parsing and values shared by convert, compare, dd, commit, rebase and bench
(qemu-img's texts).

These commands validate each option inside their getopt loop, in qemu-img's order (an invalid
``-m 0`` is reported before a later unknown option), so they iterate over :class:`Getopt`,
a loop over :func:`qimg_cli.getopt.getopt` (the one glibc ``getopt_long`` emulation), and
their handler gets the raw arguments from :class:`GetoptCommand`.
"""
from __future__ import annotations

from qimg.errors import QimgError

TYPE_CHECKING = False  # neither typing nor click is imported when the command runs directly
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, NoReturn


class UsageError(Exception):
    """An option error qemu-img reports followed by the ``--help`` hint (exit 1)."""


class Getopt:
    """``for opt, val in Getopt(argv, ":hf:", {"help": False})``: qemu-img's getopt loop.

    ``argv[0]`` is the command name. ``opt`` is the option letter or the long name. The
    options before a getopt error are yielded first, then :class:`UsageError` is raised with
    qemu-img's message, so per-option checks keep qemu-img's order. ``positionals`` holds
    the (permuted) non-option arguments.
    """

    def __init__(self, argv: list[str], short: str, long: dict[str, bool]) -> None:
        from .getopt import GetoptError, Opt, getopt

        opts = [Opt(c, c, (), takes) for c, takes in _parse_short(short).items()]
        opts += [Opt(name, None, (name,), takes) for name, takes in long.items()]
        self._items: list[tuple[str, str | None]] = []
        self._error: str | None = None
        self.positionals: list[str] = []
        try:
            _, self.positionals = getopt(list(argv[1:]), opts, prog=argv[0] if argv else "",
                                         on_option=lambda o, v: self._items.append((o.key, v)))
        except GetoptError as e:
            self._error = str(e)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        yield from self._items
        if self._error is not None:
            raise UsageError(self._error)


def _parse_short(spec: str) -> dict[str, bool]:
    """A getopt option string (``":hf:O:"``) -> {letter: takes an argument}."""
    out: dict[str, bool] = {}
    spec = spec.lstrip(":+-")
    i = 0
    while i < len(spec):
        takes = spec[i + 1 : i + 2] == ":"
        out[spec[i]] = takes
        i += 2 if takes else 1
    return out


def show_help() -> NoReturn:
    """``-h``/``--help`` inside a command: the global help, exit 0 (as qemu-img)."""
    from .app import print_help

    print_help()
    raise SystemExit(0)


def run_direct(args: list[str]) -> None:
    """Run ``[name, *arguments]`` of a getopt command without click (no global options came
    before it); a :class:`UsageError` exits as the click command would."""
    import importlib

    mod = importlib.import_module(f"qimg_cli.commands.{args[0]}")
    try:
        mod.run(list(args))
    except UsageError as e:
        from .common import usage_exit

        usage_exit(str(e))


_command_class: Any = None


def GetoptCommand(name: str, handler: Callable[[list[str]], None], help: str = "") -> Any:  # noqa: N802
    """A click command that hands its raw arguments to ``handler([name, *args])`` (the class
    is made on first use, so that importing a command module does not import click)."""
    global _command_class
    if _command_class is None:
        import click

        class _GetoptCommand(click.Command):
            def __init__(self, name: str, handler: Callable[[list[str]], None], help: str = "") -> None:
                super().__init__(name, add_help_option=False, help=help,
                                 context_settings={"ignore_unknown_options": True})
                self.handler = handler

            def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
                ctx.meta["qimg.argv"] = list(args)
                return []

            def invoke(self, ctx: click.Context) -> None:
                try:
                    self.handler([self.name or "", *ctx.meta.get("qimg.argv", [])])
                except UsageError as e:
                    from .common import usage_exit

                    usage_exit(str(e))

        _command_class = _GetoptCommand
    return _command_class(name, handler, help)


def lazy_command(module: str, name: str, handler: Callable[[list[str]], None], help: str) -> Any:
    """For a command module's ``__getattr__("command")``: build and keep its click command."""
    import sys

    cmd = GetoptCommand(name, handler, help=help)
    sys.modules[module].command = cmd  # type: ignore[attr-defined]
    return cmd


CACHE_MODES = ("none", "off", "writeback", "writethrough", "directsync", "unsafe")

SIZE_SUFFIX_HINT = ("You may use k, M, G, T, P or E suffixes for\n"
                    "qimg: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")


def check_cache(mode: str | None, source: bool = False) -> None:
    """``-t``/``-T``: only QEMU's cache mode names are accepted (they change nothing here)."""
    if mode is not None and mode not in CACHE_MODES:
        raise QimgError(f"Invalid {'source ' if source else ''}cache option: {mode}")


def cvtnum(what: str, text: str) -> int:
    """qemu-img's cvtnum: a size with suffixes, or ``Invalid <what> specified...``."""
    from qimg.units import parse_size

    try:
        if text.strip().startswith("-"):
            raise ValueError(text)
        return parse_size(text)
    except ValueError:
        raise QimgError(f"Invalid {what} specified. {SIZE_SUFFIX_HINT}") from None


def parse_rate(text: str) -> int:
    return cvtnum("rate limit", text)


def parse_snapshot_param(text: str) -> tuple[str | None, str | None]:
    """``-l``: ``snapshot.id=ID,snapshot.name=NAME`` or a bare ID_OR_NAME -> (id, name)."""
    if not text.startswith("snapshot."):
        return None, text
    from qimg.options import split_options

    sid = name = None
    for key, value in split_options(text):
        if key == "snapshot.id":
            sid = value or ""
        elif key == "snapshot.name":
            name = value or ""
        else:
            raise QimgError(f"Invalid parameter '{key}'\nqimg: Failed in parsing snapshot param '{text}'")
    return sid, name


def load_snapshot(img: Any, sid: str | None, name: str | None) -> None:
    """Show an internal snapshot's data (``convert -l``), with qemu-img's error texts."""
    from qimg.driver import Format

    drv = img.driver
    if type(drv).snapshot_load_readonly is Format.snapshot_load_readonly:
        raise QimgError(f"Failed to load snapshot: Block format '{img.format}' used by device '' "
                        "does not support temporarily loading internal snapshots")
    try:
        if sid is None and name is not None:
            # a bare ID_OR_NAME: try as id first, then as name (as QEMU does)
            try:
                drv.snapshot_load_readonly(name, None)
            except QimgError:
                drv.snapshot_load_readonly(None, name)
        else:
            drv.snapshot_load_readonly(sid, name)
    except QimgError as e:
        msg = e.message
        if not msg.startswith("Failed to load snapshot"):
            msg = f"Failed to load snapshot: {msg}"
        raise QimgError(msg, e.exit_code) from None


# the file protocol's creation options, merged into the list when a target name is given
_FILE_OPTS = [
    ("extent_size_hint", "size", "Extent size hint for the image file, 0 to disable"),
    ("nocow", "bool", "Turn off copy-on-write (valid only on btrfs)"),
    ("preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)"),
    ("size", "size", "Virtual disk size"),
]


def option_help(fmt: str, filename: str | None) -> str:
    """The text of ``-o help`` for a target format (with protocol options if a file is named)."""
    from qimg.options import Option, options_help
    from qimg.plugins import get_registry

    cls = get_registry().format(fmt).load()
    declared = list(cls.create_opts)
    if filename is None:
        return options_help(fmt, declared)
    get_registry().find_protocol(filename)  # QEMU's "Unknown protocol 'x'"
    names = {o.name for o in declared}
    for name, kind, text in _FILE_OPTS:
        if name not in names:
            declared.append(Option(name, kind, text))
    lines = ["Supported options:"] + [o.help_line() for o in sorted(declared, key=lambda o: o.name)]
    return "\n".join(lines)


def image_opts_target(text: str) -> tuple[str, str | None, dict[str, Any]]:
    """``--target-image-opts`` string -> (filename, driver, open options)."""
    from qimg.api import target_from_image_opts

    return target_from_image_opts(text)


def _f32(x: float) -> float:
    import struct

    return struct.unpack("f", struct.pack("f", x))[0]


def qemu_progress(enabled: bool, min_skip: float = 1.0) -> Any:
    """A progress line that prints exactly when qemu's does (qemu_progress_print): on a move
    of more than ``min_skip`` points (convert 1, compare and rebase 2), at 0 and at 100, with
    qemu's single-precision arithmetic."""
    from .common import Progress

    class QemuProgress(Progress):
        def update(self, done: float, total: float) -> None:
            cur = _f32(100.0 if total <= 0 else min(100.0, done * 100.0 / total))
            self.current = cur
            last = self.last_printed
            if not self.enabled:
                return
            if (cur > _f32(last + min_skip) or cur < _f32(last - min_skip) or cur == 0 or cur == 100):
                self._print()

    bar = QemuProgress(enabled)
    if bar.last_printed < 0:
        bar.last_printed = 0.0
    return bar


def open_named(filename: str, fmt: str | None = None, **kw: Any) -> Any:
    """common.open_image (an empty name or format fails as qemu-img's)."""
    from .common import open_image

    return open_image(filename, fmt, **kw)
