"""Errors that reach the user as one line on stderr, with qemu-img's exit code."""
from __future__ import annotations


class QimgError(Exception):
    """An error to print as ``qimg: <message>`` and exit with ``exit_code``.

    ``exit_code`` follows qemu-img: 1 for most failures; commands with their own
    code tables (check, compare, map) pass theirs explicitly.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class NotSupported(QimgError):
    """A driver lacks a capability; the message is qemu-img's for that case."""


class CorruptImage(QimgError):
    """An image's metadata is inconsistent or hostile."""


class SilentFailure(QimgError):
    """A failure qemu-img reports by its exit status only, with no message (the CLI prints
    nothing); e.g. ``convert -c`` to a format that refuses the end-of-stream signal."""

    def __init__(self, what: str, exit_code: int = 1) -> None:
        super().__init__(what, exit_code)


def os_error_text(err: OSError) -> str:
    """The strerror text QEMU prints for an errno (``No such file or directory``)."""
    import os

    if err.errno is not None:
        return os.strerror(err.errno)
    return str(err)
