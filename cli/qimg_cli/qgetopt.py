"""glibc ``getopt_long`` semantics for the commands that must parse exactly as qemu-img.

qemu-img parses with ``getopt_long`` (argument permutation, clustered short options, attached
values, unique-prefix long options, ``--``) and reports an error with the *argv element before
optind*, which is what a user sees in ``unrecognized option '-pZ'``. Emulating the algorithm
(including the permutation of the argument list) reproduces those messages byte for byte.

A command is a :class:`GetoptCommand`: click hands it the raw arguments and it calls a handler
``handler(args)`` which loops over :func:`getopt` itself, so per-option validation happens in
the same order as qemu-img's (an invalid ``-m 0`` before a later unknown option).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import click

from .main import PROG

END = object()


class UsageError(Exception):
    """An option error qemu-img reports followed by the ``--help`` hint."""


def usage_exit(message: str) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    sys.stderr.write(f"{PROG}: {message}\nTry '{PROG} --help' for more information\n")
    sys.stderr.flush()
    raise SystemExit(1)


def _parse_short(spec: str) -> dict[str, bool]:
    out: dict[str, bool] = {}
    i = 0
    spec = spec.lstrip(":+-")
    while i < len(spec):
        c = spec[i]
        takes = i + 1 < len(spec) and spec[i + 1] == ":"
        out[c] = takes
        i += 2 if takes else 1
    return out


def getopt(argv: list[str], short: str, long: dict[str, bool]) -> Iterator[tuple[str, str | None]]:
    """Yield ``(option, value)`` pairs; option is the letter or the long name.

    ``argv[0]`` is the command name (as qemu-img passes it). After the loop, the positional
    arguments are ``argv[optind:]`` of the permuted list: read them from :class:`Getopt`.
    """
    g = Getopt(argv, short, long)
    while True:
        item = g.next()
        if item is END:
            return
        yield item  # type: ignore[misc]


class Getopt:
    """Stateful parser; ``positionals`` is valid once :meth:`next` returned END."""

    def __init__(self, argv: list[str], short: str, long: dict[str, bool]) -> None:
        self.args = list(argv)
        self.short = _parse_short(short)
        self.long = long
        self.optind = 1
        self.nextchar = ""
        self.first_nonopt = self.last_nonopt = 1
        self.positionals: list[str] = []

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        while True:
            item = self.next()
            if item is END:
                return
            yield item  # type: ignore[misc]

    @staticmethod
    def _nonoption(arg: str) -> bool:
        return not arg.startswith("-") or arg == "-"

    def _exchange(self) -> None:
        a = self.args[self.first_nonopt:self.last_nonopt]
        b = self.args[self.last_nonopt:self.optind]
        self.args[self.first_nonopt:self.optind] = b + a
        self.first_nonopt += len(b)
        self.last_nonopt = self.optind

    def _error(self, kind: str) -> UsageError:
        bad = self.args[self.optind - 1] if self.optind - 1 < len(self.args) else ""
        if kind == "?":
            return UsageError(f"unrecognized option '{bad}'")
        return UsageError(f"missing argument for option '{bad}'")

    def next(self) -> object:
        n = len(self.args)
        if not self.nextchar:
            self.last_nonopt = min(self.last_nonopt, self.optind)
            self.first_nonopt = min(self.first_nonopt, self.optind)
            if self.first_nonopt != self.last_nonopt and self.last_nonopt != self.optind:
                self._exchange()
            elif self.last_nonopt != self.optind:
                self.first_nonopt = self.optind
            while self.optind < n and self._nonoption(self.args[self.optind]):
                self.optind += 1
            self.last_nonopt = self.optind
            if self.optind != n and self.args[self.optind] == "--":
                self.optind += 1
                if self.first_nonopt != self.last_nonopt and self.last_nonopt != self.optind:
                    self._exchange()
                elif self.first_nonopt == self.last_nonopt:
                    self.first_nonopt = self.optind
                self.last_nonopt = n
                self.optind = n
            if self.optind == n:
                if self.first_nonopt != self.last_nonopt:
                    self.optind = self.first_nonopt
                self.positionals = self.args[self.optind:]
                return END
            arg = self.args[self.optind]
            if arg.startswith("--"):
                return self._long(arg[2:])
            self.nextchar = arg[1:]
        c = self.nextchar[0]
        self.nextchar = self.nextchar[1:]
        if not self.nextchar:
            self.optind += 1
        if c not in self.short or c == ":":
            raise self._error("?")
        if not self.short[c]:
            return c, None
        if self.nextchar:
            value = self.nextchar
            self.optind += 1
        elif self.optind >= n:
            self.nextchar = ""
            raise self._error(":")
        else:
            value = self.args[self.optind]
            self.optind += 1
        self.nextchar = ""
        return c, value

    def _long(self, text: str) -> tuple[str, str | None]:
        name, eq, value = text.partition("=")
        self.optind += 1
        if name in self.long:
            match = name
        else:
            found = [k for k in self.long if k.startswith(name)]
            if len(found) != 1:
                raise self._error("?")
            match = found[0]
        takes = self.long[match]
        if not takes:
            if eq:
                raise self._error("?")
            return match, None
        if eq:
            return match, value
        if self.optind < len(self.args):
            value = self.args[self.optind]
            self.optind += 1
            return match, value
        raise self._error(":")


def show_help() -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    """``-h``/``--help`` inside a command: the global help, exit 0 (as qemu-img)."""
    from .app import print_help

    print_help()
    raise SystemExit(0)


class GetoptCommand(click.Command):
    """A click command that gives its raw arguments to ``handler(args)``."""

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
            usage_exit(str(e))
