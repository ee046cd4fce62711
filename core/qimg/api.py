"""The public library API: ``qimg.open`` and ``qimg.create``. The CLI uses nothing else to
reach images."""
from __future__ import annotations

import os
import sys

from .errors import QimgError
from .image import MAX_CHAIN_DEPTH, Image
from .options import parse_options
from .plugins import get_registry
from .protocol import FileProtocol, Protocol

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _print_warning(msg: str) -> None:
    print(msg, file=sys.stderr)


#: where warnings go (the CLI may replace it); qemu-img prints them on stderr
warn: Callable[[str], None] = _print_warning


def open_protocol(filename: str, *, writable: bool = False, create: bool = False) -> Protocol:
    """Open the bytes of an image: a host file, or a registered protocol's ``prefix:`` name."""
    entry = get_registry().protocol_for(filename)
    if entry is None or entry.name == "file":
        if create:
            return FileProtocol.create(filename)
        return FileProtocol(filename, writable=writable)
    cls = entry.load()
    if create:
        return cls.create(filename)  # type: ignore[attr-defined]
    return cls(filename, writable=writable)  # type: ignore[call-arg]


def resolve_backing_name(image_filename: str, backing: str) -> str:
    """A backing name as QEMU resolves it: relative names against the image's folder."""
    if not backing or os.path.isabs(backing) or backing.startswith("json:"):
        return backing
    if get_registry().protocol_for(backing) is not None:
        return backing
    if get_registry().protocol_for(image_filename) is not None:
        return backing
    folder = os.path.dirname(image_filename)
    return os.path.join(folder, backing) if folder else backing


def probe_format(file: Protocol, filename: str, *, untrusted: bool = False) -> str:
    head = file.pread(0, 512)
    if untrusted:
        from .untrusted import check_probe

        check_probe(get_registry(), head, filename)
    entry = get_registry().probe(head, filename)
    if entry is None:
        raise QimgError(f"Could not open '{filename}': Could not determine image format")
    return entry.name


def open(  # noqa: A001 - the natural name for the public API
    filename: str,
    fmt: str | None = None,
    *,
    writable: bool = False,
    backing: bool = True,
    force_share: bool = False,
    options: dict[str, Any] | None = None,
    backing_override: tuple[str | None, str | None] | None = None,
    untrusted: bool | None = None,
    no_io: bool = False,
    resize: bool = False,
    no_share: bool = False,
    _depth: int = 0,
    _seen: frozenset[str] = frozenset(),
) -> Image:
    """Open an image and (unless ``backing=False``) its backing chain.

    ``fmt`` None probes the format (raw only as the last resort, with qemu-img's warning
    left to the caller). ``options`` are driver open options (``--image-opts`` keys), typed
    and checked as QEMU does (:mod:`qimg.runtime`); ``backing`` None or "" opens no backing
    file, ``backing.file.filename``/``backing.driver`` another one, other ``backing.*`` keys
    go to the backing image.
    ``backing_override`` = (filename, format) opens a different backing file than recorded
    (``None`` filename: no backing at all).

    Locking (:mod:`qimg.locking`): the image file gets QEMU's permission locks; ``force_share``
    (``-U``) shares everything, ``no_io`` (``info``) skips the consistent-read permission,
    ``resize`` adds the resize permission (raw), ``no_share`` refuses writers even over raw
    (``convert`` sources); the option ``file.locking=off`` disables locking.
    ``untrusted`` (default: :func:`qimg.untrusted.is_enabled`) opens nothing the image names:
    a backing file is an error unless ``backing=False``, drivers get ``options["untrusted"]``.
    """
    from . import locking
    from .untrusted import is_enabled, refuse_backing

    untrusted = is_enabled(untrusted)
    if _depth > MAX_CHAIN_DEPTH:
        raise QimgError(f"Could not open '{filename}': Backing chain is too deep (more than {MAX_CHAIN_DEPTH} images)")
    reg = get_registry()
    entry = reg.format(fmt) if fmt else None
    if options:
        from .runtime import check_common, check_file

        options = dict(options)
        try:
            check_common(options)
            check_file(options)
        except QimgError as e:
            raise QimgError(f"Could not open '{filename}': {e.message}", e.exit_code) from None
    file = open_protocol(filename, writable=writable)
    try:
        if entry is None:
            entry = reg.format(probe_format(file, filename, untrusted=untrusted))
        cls = entry.load()
        drv_options = dict(options or {})
        if untrusted:
            drv_options["untrusted"] = True
        if not locking.locking_disabled(drv_options):
            try:
                file.set_perms(*locking.wanted(entry.name, writable=writable, force_share=force_share,
                                               no_io=no_io, resize=resize, no_share=no_share, cls=cls))
            except locking.LockError as e:
                # qemu-img: the top image's name prefixes the message, a backing file's does not
                raise locking.LockError(e.message if _depth else f"Could not open '{filename}': {e.message}",
                                        e.exit_code) from None
        try:
            if options:
                from .runtime import convert_typed, runtime_types

                convert_typed(drv_options, runtime_types(cls))  # the format's own option types
            driver = cls(file, filename=filename, writable=writable, options=drv_options)
        except QimgError as e:
            if e.message.startswith("Could not open") or _depth:
                raise  # qemu-img names the top image only ("Could not open backing file: <error>")
            raise QimgError(f"Could not open '{filename}': {e.message}", e.exit_code) from None
    except BaseException:
        file.close()
        raise
    img = Image(driver, format_name=entry.name, filename=filename)
    # ``backing.KEY`` open options are the backing image's (``backing.encrypt.key-secret``)
    bopts = {k[8:]: v for k, v in drv_options.items() if k.startswith("backing.")}
    if backing and backing_override is None and (bopts or "backing" in drv_options):
        try:
            backing_override = _backing_from_options(driver, drv_options.get("backing", _ABSENT), bopts)
        except QimgError as e:
            driver.close()
            raise QimgError(f"Could not open '{filename}': Could not open backing file: {e.message}") from None
    if backing_override is not None:
        bname, bfmt = backing_override
    else:
        bname, bfmt = driver.backing_filename, driver.backing_format
    if backing and bname and untrusted and backing_override is None:
        driver.close()
        raise refuse_backing(filename, bname)
    if backing and bname:
        if "\0" in bname:  # C strings end there; a driver must not hand such a name over
            driver.close()
            raise QimgError(f"Could not open '{filename}': Backing file name contains a NUL byte")
        full = resolve_backing_name(filename, bname) if backing_override is None else bname
        key = os.path.realpath(full) if get_registry().protocol_for(full) is None else full
        me = os.path.realpath(filename)
        if key in _seen or key == me:
            driver.close()
            raise QimgError(f"Could not open '{filename}': Backing file '{bname}' creates an infinite loop")
        try:
            img.backing = open(full, bfmt, writable=False, force_share=force_share, no_io=no_io,
                               options=bopts or None, untrusted=untrusted, _depth=_depth + 1,
                               _seen=_seen | {me})
        except QimgError as e:
            driver.close()
            msg = e.message
            if not msg.startswith("Could not open backing file"):
                msg = f"Could not open backing file: {msg}"
            raise QimgError(f"Could not open '{filename}': {msg}" if _depth == 0 else msg, e.exit_code) from None
        driver.backing = img.backing
    return img


_ABSENT = object()


def _backing_from_options(driver: Any, reference: Any, bopts: dict[str, Any]) -> tuple[str | None, str | None] | None:
    """The backing file that open options choose, as QEMU: ``backing`` null or "" for none
    (another string names a node, and there are none), ``backing.file.filename`` and
    ``backing.driver`` instead of the recorded name and format (``bopts`` keeps the rest)."""
    if reference is None or reference == "":
        return (None, None)
    if reference is not _ABSENT:
        raise QimgError(f"Cannot find device='{reference}' nor node-name='{reference}'")
    name = bopts.pop("file.filename", None)
    fmt = bopts.pop("driver", None)
    bopts.pop("file.driver", None)
    if name is None and fmt is None:
        if not driver.backing_filename and bopts:
            raise QimgError("Must specify either driver or file")
        return None
    if name is None:
        if not driver.backing_filename:
            raise QimgError('A block device must be specified for "file"')
        return (resolve_backing_name(driver.filename, driver.backing_filename), fmt)
    return (name, fmt if fmt is not None else driver.backing_format)


def create(
    filename: str,
    fmt: str,
    size: int | None = None,
    options: dict[str, Any] | str | None = None,
    *,
    backing_file: str | None = None,
    backing_fmt: str | None = None,
    unsafe: bool = False,
) -> None:
    """Create an image, as ``qemu-img create``.

    ``options`` is a dict of typed values or a ``-o`` string (validated against the driver's
    ``create_opts``). Without ``size`` the backing file's size is used (opened unless
    ``unsafe``).
    """
    cls = get_registry().format(fmt).load()
    if isinstance(options, str) or options is None:
        opts = parse_options(options or "", cls.create_opts)
    else:
        opts = dict(options)
    if backing_file is not None:
        opts["backing_file"] = backing_file
    if backing_fmt is not None:
        opts["backing_fmt"] = backing_fmt
    if opts.get("backing_file") and not cls.supports_backing:
        raise QimgError(f"Backing file not supported for file format '{fmt}'")
    if size is None:
        size = opts.pop("size", None)
    else:
        opts.pop("size", None)
    if opts.get("backing_file") and (size is None or not unsafe):
        bname = resolve_backing_name(filename, opts["backing_file"])
        try:
            with open(bname, opts.get("backing_fmt"), force_share=True) as b:
                if size is None:
                    size = b.size
        except QimgError as e:
            if size is None or not unsafe:
                raise QimgError(f"Could not open backing image.\n{e.message}" if size is None else e.message) from None
    if size is None:
        raise QimgError("Image creation needs a size parameter")
    from .ops.create import run_driver_create

    run_driver_create(cls, filename, size, opts)
