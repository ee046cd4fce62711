"""Image locking compatible with QEMU's: OFD byte-range locks that advertise permissions.

Every user of an image file advertises two sets of permissions with shared (read) locks on
single bytes of the file, independent of its contents:

* byte ``PERM_BASE + i`` while it *holds* permission bit ``i``;
* byte ``SHARED_BASE + i`` while it *refuses to share* permission bit ``i``.

Before using an image a process takes its own bytes, then tests (``F_OFD_GETLK`` with a write
lock, which conflicts with any lock of another open file description) that nobody refuses a
permission it wants and nobody holds one it refuses to share. Both sides lock before they test,
so of two racing openers at least one sees the other. The locks are open-file-description
locks: they live as long as the descriptor and vanish with the process, as QEMU's do, so qimg
and QEMU (qemu-img, qemu-io, qemu-nbd, a running VM) see each other's claims.

Which permissions an open wants follows qemu-img 7.2 (measured against it, see
tests/test_locking.py): a format with metadata (anything but raw) never shares ``write`` or
``resize`` of its file, because its metadata must not change under it; raw shares everything
unless the caller asks otherwise; writers want ``write`` (and ``resize`` for metadata formats);
``force_share`` (``-U``) shares everything; ``no_io`` (``info``) wants no ``consistent read``.
"""
from __future__ import annotations

import errno
import os
import struct

from .errors import QimgError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

PERM_BASE = 100
SHARED_BASE = 200

# QEMU's BLK_PERM_* bits, in the order their lock bytes use
CONSISTENT_READ = 1 << 0
WRITE = 1 << 1
WRITE_UNCHANGED = 1 << 2
RESIZE = 1 << 3
ALL = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE

PERM_NAMES = ("consistent read", "write", "write unchanged", "resize")

# struct flock (x86_64/aarch64 Linux): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid, padded to 8 bytes ("0q")
_FLOCK = "@hhqqi0q"

_FAIL_ERRNOS = (errno.EAGAIN, errno.EACCES)
# the file system (or kernel) cannot lock: go on without locking, as QEMU's locking=auto
_UNSUPPORTED_ERRNOS = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EBADF)

try:  # Linux only; elsewhere locking is a no-op
    import fcntl

    _SETLK = fcntl.F_OFD_SETLK
    _GETLK = fcntl.F_OFD_GETLK
    _RDLCK, _WRLCK, _UNLCK = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    fcntl = None  # type: ignore[assignment]


class LockError(QimgError):
    """Another process holds a conflicting permission (qemu-img's message and hint)."""


def _bits(mask: int):
    for i in range(len(PERM_NAMES)):
        if mask & (1 << i):
            yield i


def _setlk(fd: int, typ: int, byte: int) -> None:
    fcntl.fcntl(fd, _SETLK, struct.pack(_FLOCK, typ, os.SEEK_SET, byte, 1, 0))


def _conflicts(fd: int, byte: int) -> bool:
    """True when another open file description holds a lock on ``byte``."""
    out = fcntl.fcntl(fd, _GETLK, struct.pack(_FLOCK, _WRLCK, os.SEEK_SET, byte, 1, 0))
    return struct.unpack(_FLOCK, out)[0] != _UNLCK


def _hint(display: str) -> str:
    return f"\nIs another process using the image [{display}]?"


def apply(fd: int, perm: int, shared: int, display: str, held: tuple[int, int] = (0, ALL)) -> bool:
    """Advertise ``perm`` (held) and ``~shared`` (refused) on ``fd`` and check for conflicts.

    ``held`` is what this descriptor advertised before (changing permissions of an open
    image); on a conflict the old state is restored and :class:`LockError` raised with
    qemu-img's text (``Failed to get "write" lock`` / ``Failed to get shared "write" lock``
    plus ``Is another process using the image [display]?``). Returns False when the file
    system cannot lock (nothing is advertised then), True otherwise.
    """
    if fcntl is None:
        return False
    unshared = ALL & ~shared
    old_perm, old_unshared = held[0], ALL & ~held[1]
    try:
        # take the union first so that we are never unprotected while changing
        for i in _bits(perm | old_perm):
            _setlk(fd, _RDLCK, PERM_BASE + i)
        for i in _bits(unshared | old_unshared):
            _setlk(fd, _RDLCK, SHARED_BASE + i)
    except OSError as e:
        if e.errno in _UNSUPPORTED_ERRNOS:
            return False
        if e.errno in _FAIL_ERRNOS:
            # only possible if someone holds an exclusive lock on a byte we use
            _restore(fd, held)
            raise LockError(f"Failed to lock byte {PERM_BASE}" + _hint(display)) from None
        raise
    try:
        for i in _bits(perm):
            if _conflicts(fd, SHARED_BASE + i):
                _restore(fd, held)
                raise LockError(f'Failed to get "{PERM_NAMES[i]}" lock' + _hint(display))
        for i in _bits(unshared):
            if _conflicts(fd, PERM_BASE + i):
                _restore(fd, held)
                raise LockError(f'Failed to get shared "{PERM_NAMES[i]}" lock' + _hint(display))
    except OSError as e:
        if e.errno in _UNSUPPORTED_ERRNOS:
            return False
        raise
    _restore(fd, (perm, shared))
    return True


def _restore(fd: int, state: tuple[int, int]) -> None:
    """Advertise exactly ``state`` = (perm, shared) on ``fd``, releasing other bytes."""
    perm, shared = state
    unshared = ALL & ~shared
    for i in range(len(PERM_NAMES)):
        _setlk(fd, _RDLCK if perm & (1 << i) else _UNLCK, PERM_BASE + i)
        _setlk(fd, _RDLCK if unshared & (1 << i) else _UNLCK, SHARED_BASE + i)


def release(fd: int) -> None:
    """Drop every lock byte (closing the descriptor does it too)."""
    if fcntl is None:
        return
    try:
        _restore(fd, (0, ALL))
    except OSError:
        pass


def holders(fd: int) -> tuple[int, int]:
    """What *other* users advertise on a file: (permissions held, permissions refused)."""
    perm = unshared = 0
    if fcntl is None:
        return 0, 0
    for i in range(len(PERM_NAMES)):
        if _conflicts(fd, PERM_BASE + i):
            perm |= 1 << i
        if _conflicts(fd, SHARED_BASE + i):
            unshared |= 1 << i
    return perm, unshared


def is_filter_format(format_name: str, cls: Any = None) -> bool:
    """Formats whose file child is plain guest data (raw): QEMU lets others share it.

    A driver may set ``lock_as_filter = True`` to be treated like raw.
    """
    if cls is not None and cls.lock_as_filter is not None:
        return bool(cls.lock_as_filter)
    return format_name == "raw"


def wanted(format_name: str, *, writable: bool, force_share: bool = False, no_io: bool = False,
           resize: bool = False, no_share: bool = False, cls: Any = None) -> tuple[int, int]:
    """(perm, shared) that qemu-img 7.2 requests on an image's file.

    ``no_io``: metadata only (``info``). ``resize``: the caller changes the size (``resize``
    of raw). ``no_share``: refuse writers even over raw (``convert`` sources).
    """
    perm = 0 if no_io else CONSISTENT_READ
    shared = ALL
    flt = is_filter_format(format_name, cls)
    if writable:
        perm |= WRITE
        if resize or not flt:
            perm |= RESIZE
    if resize:
        perm |= RESIZE
    if not flt or no_share:
        shared &= ~(WRITE | RESIZE)
    if force_share:
        shared = ALL
    return perm, shared


def create_perms() -> tuple[int, int]:
    """What creating (truncating) an image file wants: write and resize, sharing no resize."""
    return WRITE | RESIZE, ALL & ~RESIZE


def locking_disabled(options: dict[str, Any] | None) -> bool:
    """``file.locking=off`` (or ``locking=off``) in open options turns locking off, as in QEMU."""
    if not options:
        return False
    for key in ("file.locking", "locking"):
        val = options.get(key)
        if val is None:
            continue
        if isinstance(val, bool):
            return not val
        if val == "off":
            return True
        if val not in ("on", "auto"):
            raise QimgError(f"invalid parameter value: {val}")  # QEMU's OnOffAuto
    return False


def lock_image(image: Any, perm: int, shared: int) -> None:
    """Change the permissions an open :class:`qimg.image.Image` advertises on its file.

    For commands that change their needs on an open image (``commit`` makes the base
    writable): raises :class:`LockError` without the ``Could not open`` prefix, as
    qemu-img's reopen does.
    """
    file = image.driver.file
    file.set_perms(perm, shared)
