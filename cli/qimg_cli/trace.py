"""``-T/--trace [[enable=]PATTERN][,events=FILE][,file=FILE]`` as qemu-img parses it."""
from __future__ import annotations

import sys

from . import prog
from .prog import error_exit

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable


def configure_one(text: str) -> None:
    """Apply one ``-T`` argument (called in option order, as qemu's trace_opt_parse)."""
    from qimg import trace
    from qimg.options import split_options

    pairs = split_options(text)
    for i, (key, value) in enumerate(pairs):
        if value is None and i == 0:
            key, value = "enable", key
        if key == "enable" and value is not None:
            _enable_pattern(value)
        elif key == "events" and value is not None:
            try:
                with open(value) as f:
                    lines = f.read().splitlines()
            except OSError as e:
                # qemu prints this one without the space after the program name
                sys.stderr.write(f"{prog.NAME}:{value}: {e.strerror}\n")
                raise SystemExit(1) from None
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    _enable_pattern(line)
        elif key == "file" and value is not None:
            try:
                trace.set_output(open(value, "a"))  # noqa: SIM115 - lives until exit
            except OSError as e:
                error_exit(f"could not open trace file '{value}': {e.strerror}")
        else:
            error_exit(f"Invalid parameter '{key}'")


def _enable_pattern(pattern: str) -> None:
    from qimg import trace
    from qimg.plugins import load_plugins

    load_plugins()  # plugins declare their events when their package is imported

    from .qemu_events import names

    if pattern == "help":
        # qemu-img's list (qimg's own events: docs/tracing.md)
        sys.stdout.write("".join(f"{name}\n" for name in names()))
        raise SystemExit(0)
    state = True
    if pattern.startswith("-"):
        pattern, state = pattern[1:], False
    if not trace.enable(pattern, state) and not any(c in pattern for c in "*?[") and pattern not in names():
        sys.stderr.write(f"{prog.NAME}: warning: trace event '{pattern}' does not exist\n")


def configure(values: Iterable[str]) -> None:
    for v in values:
        configure_one(v)
