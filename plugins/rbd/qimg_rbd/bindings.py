"""Ceph's own Python bindings (``rados``, ``rbd``), loaded when an rbd image is first opened, and
QEMU's way of turning their errors into messages."""
from __future__ import annotations

import errno
import os

from qimg.errors import QimgError, with_errno

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MISSING = ("the Ceph Python bindings 'rados' and 'rbd' are not installed: install the Debian packages "
           "python3-rados and python3-rbd (docs/protocols/rbd.md)")

_mods: tuple[Any, Any] | None = None


#: where distributions install the bindings for their Python (Debian's, and Fedora's folders)
SYSTEM_FOLDERS = ("/usr/lib/python3/dist-packages", "/usr/lib64/python{v}/site-packages",
                  "/usr/lib/python{v}/site-packages")


def bindings() -> tuple[Any, Any]:
    """Ceph's ``rados`` and ``rbd`` modules, or a one-line QimgError saying what to install.
    In a virtual environment that does not see the system's packages, the two extension
    modules are loaded from the system's folder when they were built for this Python (and
    only they: nothing else of the system's packages comes along)."""
    global _mods
    if _mods is None:
        try:
            import rados
            import rbd
        except ImportError:
            rados, rbd = _system_bindings()
        _mods = (rados, rbd)
    return _mods


def _system_bindings() -> tuple[Any, Any]:
    import importlib.machinery
    import importlib.util
    import sys
    import sysconfig

    if sys.modules.get("rados", 0) is None or sys.modules.get("rbd", 0) is None:
        raise QimgError(MISSING)  # blocked on purpose (None in sys.modules)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for folder in SYSTEM_FOLDERS:
        folder = folder.format(v=version)
        paths = [os.path.join(folder, name + suffix) for name in ("rados", "rbd")]
        if not all(os.path.exists(p) for p in paths):
            continue
        mods = []
        try:
            for name, path in zip(("rados", "rbd"), paths, strict=True):
                loader = importlib.machinery.ExtensionFileLoader(name, path)
                spec = importlib.util.spec_from_file_location(name, path, loader=loader)
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod  # rbd imports rados by name
                loader.exec_module(mod)
                mods.append(mod)
        except Exception:  # noqa: BLE001 - built for another Python, or broken: say what to install
            for name in ("rados", "rbd"):
                sys.modules.pop(name, None)
            continue
        return mods[0], mods[1]
    raise QimgError(MISSING)


def errno_of(e: BaseException) -> int:
    code = getattr(e, "errno", None)
    return abs(code) if isinstance(code, int) and code else errno.EIO


def fail(what: str, e: BaseException) -> QimgError:
    """QEMU's error_setg_errno: ``what: strerror``, the errno kept."""
    code = errno_of(e)
    return with_errno(QimgError(f"{what}: {os.strerror(code)}"), code)


def as_oserror(e: BaseException) -> OSError:
    code = errno_of(e)
    return OSError(code, os.strerror(code))


