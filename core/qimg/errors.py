"""Errors that reach the user as one line on stderr, with qemu-img's exit code."""
from __future__ import annotations


class QimgError(Exception):
    """An error to print as ``qimg: <message>`` and exit with ``exit_code``.

    ``exit_code`` follows qemu-img: 1 for most failures; commands with their own
    code tables (check, compare, map) pass theirs explicitly.
    """

    #: the errno of a failed system call behind the error (set by the protocols); the public
    #: API (``qimg.open``, ``qimg.create``) then raises it as a :class:`QimgOSError`
    errno: int | None = None

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class NotSupported(QimgError, NotImplementedError):
    """A driver lacks a capability; the message is qemu-img's for that case. Also a
    :class:`NotImplementedError`."""


class QimgValueError(QimgError, ValueError):
    """A value the caller gave is invalid (a size, an option, a format or mode name); also a
    :class:`ValueError`, with qemu-img's message."""


class CorruptImage(QimgError):
    """An image's metadata is inconsistent or hostile."""


class SilentFailure(QimgError):
    """A failure qemu-img reports by its exit status only, with no message (the CLI prints
    nothing); e.g. ``convert -c`` to a format that refuses the end-of-stream signal."""

    def __init__(self, what: str, exit_code: int = 1) -> None:
        super().__init__(what, exit_code)


class QimgOSError(QimgError, OSError):
    """A QimgError that is also an :class:`OSError` (``errno``, ``strerror``, ``filename``):
    what failed was the system's (a file, a socket). :func:`os_error` picks the built-in
    subclass that matches the errno, so ``except FileNotFoundError`` catches a missing image.
    ``str()`` is qemu-img's message."""

    errno = OSError.errno  # OSError's own slot, not QimgError's class default

    def __new__(cls, message: str, exit_code: int = 1, errno: int | None = None, filename: str | None = None):
        if errno is None:
            return OSError.__new__(cls, message)
        import os

        return OSError.__new__(cls, errno, os.strerror(errno), filename)

    def __init__(self, message: str, exit_code: int = 1, errno: int | None = None,
                 filename: str | None = None) -> None:
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # pickles (multiprocessing) with the message, not OSError's args
        return (type(self), (self.message, self.exit_code, self.errno, self.filename))


class QimgFileNotFoundError(QimgOSError, FileNotFoundError):
    """A missing image, backing file or socket."""


class QimgPermissionError(QimgOSError, PermissionError):
    """An image that may not be read or written."""


class QimgIsADirectoryError(QimgOSError, IsADirectoryError):
    """A directory named as an image."""


class QimgConnectionError(QimgOSError, ConnectionError):
    """A server that refused, reset or dropped the connection."""


class QimgTimeoutError(QimgOSError, TimeoutError):
    """A server that did not answer in time."""


_OS_CLASSES: dict[type, type] = {
    FileNotFoundError: QimgFileNotFoundError,
    PermissionError: QimgPermissionError,
    IsADirectoryError: QimgIsADirectoryError,
    TimeoutError: QimgTimeoutError,
}


def os_error(message: str, errno: int | None, filename: str | None = None, exit_code: int = 1) -> QimgOSError:
    """The QimgError for a failed system call: an instance of the built-in OSError subclass
    Python maps ``errno`` to (FileNotFoundError for ENOENT, ConnectionRefusedError for
    ECONNREFUSED, ...) and of :class:`QimgOSError`, with qemu-img's ``message``."""
    if errno is None:
        return QimgOSError(message, exit_code)
    builtin = type(OSError(errno, ""))
    cls = _OS_CLASSES.get(builtin)
    if cls is None:
        if issubclass(builtin, ConnectionError):
            name = "Qimg" + builtin.__name__
            cls = type(name, (QimgConnectionError, builtin), {"__module__": __name__})
        elif builtin is OSError:
            cls = QimgOSError
        else:
            cls = type("Qimg" + builtin.__name__, (QimgOSError, builtin), {"__module__": __name__})
        globals().setdefault(cls.__name__, cls)  # pickled by name
        _OS_CLASSES[builtin] = cls
    return cls(message, exit_code, errno, filename)


def with_errno(err: QimgError, errno: int | None) -> QimgError:
    """``err`` marked with the errno of the system call that failed (see :attr:`QimgError.errno`)."""
    if errno is not None and not isinstance(err, OSError):
        err.errno = errno
    return err


def reworded(err: QimgError, message: str) -> QimgError:
    """``err`` with another message, of the same class; an errno stays."""
    if isinstance(err, QimgOSError):
        return type(err)(message, err.exit_code, err.errno, err.filename)
    try:
        new = type(err)(message, err.exit_code)
    except TypeError:  # a subclass with its own constructor
        new = QimgError(message, err.exit_code)
    return with_errno(new, err.errno)


def public_error(err: QimgError, message: str | None = None, filename: str | None = None) -> QimgError:
    """The error the public API raises: ``err`` (or its ``message``) as a :class:`QimgOSError`
    subclass when a system call failed (so ``except FileNotFoundError`` works), else as it is."""
    message = err.message if message is None else message
    if err.errno is not None and not isinstance(err, OSError):
        return os_error(message, err.errno, filename, err.exit_code)
    return err if message == err.message else reworded(err, message)


def os_error_text(err: OSError) -> str:
    """The strerror text QEMU prints for an errno (``No such file or directory``)."""
    import os

    if err.errno is not None:
        return os.strerror(err.errno)
    return str(err)


# -- QAPI's option errors: one wording for every -o, --object, json: and driver option --------

def bad_value(name: str, value: object) -> QimgValueError:
    """QAPI's refusal of a value its enum does not know: ``Parameter 'X' does not accept value 'Y'``."""
    return QimgValueError(f"Parameter '{name}' does not accept value '{value}'")


def missing_parameter(name: str) -> QimgValueError:
    """QAPI's ``Parameter 'X' is missing`` (a required member not given)."""
    return QimgValueError(f"Parameter '{name}' is missing")


def invalid_parameter(name: str) -> QimgValueError:
    """QemuOpts' and QAPI's ``Invalid parameter 'X'`` (a name the option list does not have)."""
    return QimgValueError(f"Invalid parameter '{name}'")


def is_strerror(text: str) -> bool:
    """Whether ``text`` is a system error's text (``strerror``): QEMU names the file in a
    message only when a system call failed, so callers that reword tell the two apart."""
    global _STRERRORS
    if _STRERRORS is None:
        import errno as _errno_mod
        import os

        _STRERRORS = {os.strerror(n) for n in _errno_mod.errorcode}
    return text in _STRERRORS


_STRERRORS: set[str] | None = None
