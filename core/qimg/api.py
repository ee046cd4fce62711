"""The public library API: ``qimg.open`` and ``qimg.create``. The CLI uses nothing else to
reach images.

Opening follows QEMU's ``bdrv_open``: a name (a path, a protocol URL, ``json:{...}``) or an
options mapping (what ``--image-opts`` gives) is parsed once (:mod:`qimg.names`); the
protocol layer opens first (the ``file`` protocol, or a plugin's: ``nbd``), then the format
is probed or taken from ``fmt``/``driver``, then the backing chain. Errors read as qemu-img's
``Could not open 'NAME': ...``; a failed system call raises a :class:`qimg.errors.QimgOSError`
subclass (``FileNotFoundError``, ``PermissionError``, ``ConnectionRefusedError``...).
"""
from __future__ import annotations

import os
import sys

from .errors import QimgError, QimgValueError, is_strerror, public_error
from .image import MAX_CHAIN_DEPTH, Image
from .plugins import get_registry
from .protocol import FileProtocol, Protocol
from .targets import parse_target, shown_name, target_from_options, uses_file_protocol

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def _print_warning(msg: str) -> None:
    print(msg, file=sys.stderr)


#: where warnings go, as they are (the CLI may replace it); qemu-img prints them on stderr
warn: Callable[[str], None] = _print_warning
#: where QEMU's ``warn_report`` lines go (the CLI prints them after its name)
report: Callable[[str], None] = _print_warning

RAW_PROBE_WARNING = (
    "WARNING: Image format was not specified for '{0}' and probing guessed raw.\n"
    "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n"
    "         Specify the 'raw' format explicitly to remove the restrictions."
)

#: the block layer's own options (every node takes them; they never reach a protocol)
_COMMON_KEYS = frozenset(("read-only", "auto-read-only", "force-share", "node-name", "discard", "detect-zeroes",
                          "cache.direct", "cache.no-flush"))


# -- protocols -------------------------------------------------------------------------------

def _protocol_class(name: str) -> type[Protocol]:
    """The protocol class registered under a driver name, or QEMU's ``Unknown driver``."""
    if name == "file":
        return FileProtocol
    entry = get_registry().protocol(name)
    if entry is None:
        raise QimgError(f"Unknown driver '{name}'")
    return entry.load()


def open_protocol(filename: str, *, writable: bool = False, create: bool = False,
                  options: dict[str, Any] | None = None) -> Protocol:
    """Open the bytes of an image by name: a host file, or the protocol its ``prefix:``
    selects (``Unknown protocol 'x'`` when none is installed). ``create``: for a new image
    (a file is created or emptied; other protocols open their existing target)."""
    entry = get_registry().find_protocol(filename)
    if entry is None or entry.name == "file":
        if create:
            return FileProtocol.create(filename)
        return FileProtocol(filename, writable=writable)
    cls = entry.load()
    if create:
        return cls.create(filename, options)
    opts = cls.parse_filename(filename, options)
    if options:
        opts.update(options)
    return cls.open(opts, writable=writable, filename=filename)


def _check_protocol_options(cls: type[Protocol], opts: Mapping[str, Any]) -> None:
    """QEMU refuses open options a protocol does not take once its node is open."""
    from .ops.qjson import qdict_order

    allowed = cls.runtime_options
    for key in qdict_order(list(opts)):
        if key in _COMMON_KEYS or key in allowed:
            continue
        if any(n.endswith(".") and key.startswith(n) for n in allowed):
            continue
        raise QimgError(f"Block protocol '{cls.protocol_name}' doesn't support the option '{key}'")


def open_child(filename: str | None, options: Mapping[str, Any] | None = None, *, writable: bool = False) -> Protocol:
    """Open the child node of a filter protocol (blkdebug's ``image``): by name (a path, or a
    protocol's ``prefix:`` name) and/or by options whose ``driver`` names a protocol
    (``{"driver": "file", "filename": "x"}``); QEMU's errors when neither says what to open."""
    opts = dict(options or {})
    driver = opts.pop("driver", None)
    if driver is not None and driver != "file" and get_registry().protocol(str(driver)) is None:
        if str(driver) in get_registry().formats:
            # a format node (blkdebug over qcow2): an image of its own under the protocol
            from .formatnode import FormatNode

            return FormatNode.open_options({"driver": driver, **opts, **({"file.filename": filename}
                                                                        if filename and "file.filename" not in opts
                                                                        and "file" not in opts else {})},
                                           writable=writable)
        raise QimgError(f"Unknown driver '{driver}'")
    if driver in (None, "file"):
        name = opts.pop("filename", None) or filename
        if driver == "file" or name is None:
            if name is None:
                raise QimgError('A block device must be specified for "file"')
            from .runtime import check_file

            check_file(opts, prefix="")
            _check_protocol_options(FileProtocol, opts)
            return FileProtocol(str(name), writable=writable)
        proto, _ = _open_file(str(name), {f"file.{k}": v for k, v in opts.items()}, writable=writable, top_driver=None,
                              parse_filename=True)
        return proto
    name = opts.get("filename", filename)
    proto, _ = _open_file(None if name is None else str(name), opts, writable=writable, top_driver=str(driver),
                          parse_filename=False)
    return proto


def _open_file(filename: str | None, options: dict[str, Any], *, writable: bool, top_driver: str | None,
               parse_filename: bool) -> tuple[Protocol, type[Protocol] | None]:
    """The protocol node of an image: chosen by ``top_driver`` (a protocol named as the
    image's driver: its options are the top-level ones), ``file.driver``, or the name's
    prefix. Returns the open protocol and, for a non-file protocol, its class (whose
    options were consumed from ``options``)."""
    if top_driver is not None:
        cls = _protocol_class(top_driver)
        popts = {k: v for k, v in options.items()
                 if k not in _COMMON_KEYS and not k.startswith(("backing", "_")) and k not in ("untrusted", "check")}
        for k in popts:
            options.pop(k, None)
    else:
        pdriver = options.pop("file.driver", None)
        if (pdriver is not None and pdriver != "file" and get_registry().protocol(str(pdriver)) is None
                and str(pdriver) in get_registry().formats):
            # a format node as the file of a format (raw with size= under qcow2): an image of
            # its own (qimg.formatnode)
            from .formatnode import FormatNode

            sub = {k[5:]: v for k, v in options.items() if k.startswith("file.")}
            for k in list(options):
                if k.startswith("file."):
                    del options[k]
            return FormatNode.open_options({"driver": pdriver, **sub}, writable=writable), FormatNode
        if pdriver is not None and pdriver != "file":
            cls = _protocol_class(str(pdriver))
        elif pdriver is None and filename is not None and parse_filename:
            entry = get_registry().find_protocol(filename)
            cls = entry.load() if entry is not None and entry.name != "file" else FileProtocol
        else:
            cls = FileProtocol
        if cls is FileProtocol:
            if filename is None:
                raise QimgError('A block device must be specified for "file"')
            return FileProtocol(filename, writable=writable), None
        popts = {k[5:]: v for k, v in options.items() if k.startswith("file.")}
        for k in list(options):
            if k.startswith("file."):
                del options[k]
    if filename is not None:
        if parse_filename:
            parsed = cls.parse_filename(filename, popts)
            parsed.update(popts)
            popts = parsed
        else:
            popts.setdefault("filename", filename)
    if cls.runtime_options:
        from .runtime import convert_typed

        convert_typed(popts, cls.runtime_options)
    proto = cls.open(popts, writable=writable, filename=filename or "")
    try:
        _check_protocol_options(cls, {k: v for k, v in popts.items() if k not in ("filename", "driver")})
    except QimgError:
        proto.close()
        raise
    return proto, cls


# -- backing names ---------------------------------------------------------------------------

def resolve_backing_name(image_filename: str, backing: str) -> str:
    """A backing name as QEMU resolves it: names with a protocol prefix, absolute paths and
    ``json:`` names as they are, relative names against the image's folder (or its URL's
    directory for a protocol); "" when the image's protocol has no directory (nbd)."""
    from .names import path_has_protocol

    if not backing or os.path.isabs(backing) or backing.startswith("json:") or path_has_protocol(backing):
        return backing
    entry = get_registry().protocol_for(image_filename)
    if entry is not None and entry.name != "file":
        try:
            return entry.load().dirname_for(image_filename) + backing
        except QimgError:
            return ""
    from .protocol import file_path

    folder = os.path.dirname(file_path(image_filename))
    return os.path.join(folder, backing) if folder else backing


def _backing_path(file: Protocol, image_filename: str, backing: str) -> str:
    """:func:`resolve_backing_name` for an open image: its protocol's directory, or QEMU's
    error when there is none."""
    from .names import path_has_protocol

    if not backing or os.path.isabs(backing) or backing.startswith("json:") or path_has_protocol(backing):
        return backing
    if isinstance(file, FileProtocol):
        return resolve_backing_name(image_filename, backing)
    return file.dirname() + backing


def full_backing_name(file: Protocol, image_filename: str, backing: str) -> str:
    """The name a recorded backing file name opens, for ``info``'s "actual path": "" when
    the image's protocol has no folder to resolve it against (qemu-img's "cannot determine
    actual path")."""
    try:
        return _backing_path(file, image_filename, backing)
    except QimgError:
        return ""


def probe_format(file: Protocol, filename: str, *, untrusted: bool = False) -> str:
    try:
        head = file.pread(0, 512)
    except OSError as e:
        text = os.strerror(e.errno) if e.errno else str(e)
        raise QimgError(f"Could not open '{filename}': Could not read image for determining its format: {text}") from None
    reg = get_registry()
    if untrusted:
        from .untrusted import check_probe

        check_probe(reg, head, filename)
    entry = reg.probe(head, filename)
    from .signatures import check_absent

    check_absent(reg, head, filename, entry)  # a format whose plugin is not installed
    if entry is None:
        raise QimgError(f"Could not open '{filename}': Could not determine image format")
    return entry.name


# -- the public open -------------------------------------------------------------------------

def open(  # noqa: A001 - the natural name for the public API
    target: str | os.PathLike[str] | Mapping[str, Any],
    fmt: str | None = None,
    *,
    writable: bool = False,
    backing: bool = True,
    force_share: bool = False,
    options: dict[str, Any] | None = None,
    image_opts: bool = False,
    name: str | None = None,
    untrusted: bool | None = None,
    no_io: bool = False,
    resize: bool = False,
    no_share: bool = False,
    probe_warning: bool = True,
    backing_override: tuple[str | None, str | None] | None = None,
) -> Image:
    """Open an image and (unless ``backing=False``) its backing chain.

    ``target`` is a path (``str`` or ``os.PathLike``), a protocol name (``nbd://host/export``,
    ``nbd+unix:///export?socket=/run/x.sock``: a prefix no installed protocol has fails with
    ``Unknown protocol 'x'``), a ``json:{...}`` name, or an options mapping as ``--image-opts``
    gives (``{"driver": "qcow2", "file": {"driver": "nbd", "server": {...}}}`` or dotted keys);
    with ``image_opts`` a ``str`` target is such an option string (``driver=raw,file.filename=x``).
    ``fmt`` None probes the format (raw as the last resort: a writable open then prints
    qemu-img's warning through :data:`warn` unless ``probe_warning`` is False).
    ``options`` are more driver open options, typed and checked as QEMU does
    (:mod:`qimg.runtime`): ``backing`` None or "" opens no backing file,
    ``backing.file.filename``/``backing.driver`` another one, other ``backing.*`` keys go to
    the backing image. ``name``: how messages name the image (default: ``target``).

    Locking (:mod:`qimg.locking`): the image file gets QEMU's permission locks; ``force_share``
    (``-U``) shares everything, ``no_io`` (``info``) skips the consistent-read permission,
    ``resize`` adds the resize permission (raw), ``no_share`` refuses writers even over raw
    (``convert`` sources); the option ``file.locking=off`` disables locking.
    ``untrusted`` (default: :func:`qimg.untrusted.is_enabled`) opens nothing the image names:
    a backing file is an error unless ``backing=False``, drivers get ``options["untrusted"]``.
    ``backing_override`` = (filename, format) opens a different backing file than recorded
    (``None`` filename: no backing at all); it is the caller's choice, so untrusted mode opens it.

    Errors: :class:`qimg.errors.QimgError` worded as qemu-img's (``Could not open 'x': ...``);
    a failed system call is also the matching ``OSError`` subclass (``FileNotFoundError``...).
    """
    shown = name if name is not None else shown_name(target)
    prefix = f"Could not open '{shown}': "
    try:
        t = parse_target(target, fmt, image_opts, options)
    except QimgError as e:
        if e.message == "--image-opts and --format are mutually exclusive":
            raise
        raise public_error(e, prefix + e.message) from None
    if force_share and writable:
        raise QimgError(f"{prefix}force-share=on can only be used with read-only images")
    reg = get_registry()
    if t.fmt is not None and t.fmt not in reg.formats and reg.protocol(t.fmt) is None:
        raise QimgValueError(f"{prefix}Unknown driver '{t.fmt}'")
    fname = t.filename
    if fname is not None and uses_file_protocol(t):
        plain = fname[5:] if t.parse_filename and fname.startswith("file:") else fname
        if plain == "":
            raise QimgError(f"{prefix}The 'file' block driver requires a file name")
        if os.path.isdir(plain):
            raise QimgError(f"{prefix}'file' driver requires '{plain}' to be a regular file")
    try:
        img = _open_node(fname, t.fmt, writable=writable, force_share=force_share, backing=backing,
                         options=t.options, resize=resize, untrusted=untrusted, no_io=no_io, no_share=no_share,
                         parse_filename=t.parse_filename, backing_override=backing_override)
    except QimgError as e:
        # QEMU prefixes every open error with the name given; the layers below prefix the
        # errors of a format driver with the file's name (and the file protocol its strerror)
        msg = e.message
        inner = f"Could not open '{fname}': "
        rest = msg[len(inner):] if msg.startswith(inner) else msg
        if msg.startswith(inner) and is_strerror(rest):
            msg = prefix + msg
        else:
            msg = prefix + rest
        raise public_error(e, msg, fname) from None
    from .runtime import unsupported_option

    bad = None
    if backing and img.backing is not None:
        # the backing image's own options, less the ones that chose it
        keys = [k[8:] for k in t.user_keys if k.startswith("backing.")]
        keys = [k for k in keys if k not in ("file.filename", "driver", "file.driver")]
        bad = unsupported_option(type(img.backing.driver), keys, True)
        bad = bad and "Could not open backing file: " + bad
    keys = t.user_keys if img.protocol_class is None else [k for k in t.user_keys if not k.startswith("file.")]
    bad = bad or unsupported_option(type(img.driver), keys, backing)
    if bad is not None:
        img.close()
        raise QimgError(prefix + bad)
    if t.user_keys and type(img.driver).protocol_class is None:
        # (a protocol named as the driver is named by its own exact name, set by _open_node)
        img.display_name = _json_name(img, t.given) or img.display_name
    if t.fmt is None and writable and img.format == "raw" and probe_warning:
        sys.stderr.write(RAW_PROBE_WARNING.format(raw_probe_name(img, fname)) + "\n")  # QEMU prints it as it is
    return img


def raw_probe_name(img: Image, fname: str) -> str:
    """The name QEMU's raw driver gives a probed image in its warning (``fname``, the name the
    user gave), which is its file node's: a json: name for a protocol without an exact one (rbd)."""
    file = img.driver.file
    if img.protocol_class is not None and file.exact_filename() is None:
        return file.filename
    return fname


def _json_name(img: Image, given: dict[str, Any]) -> str | None:
    """QEMU's name for an image opened with options that change what it is (the driver's
    strong options): ``json:`` and those options, the driver and the file, in QDict order."""
    cls = type(img.driver)
    strong = [k for k in cls.strong_runtime_options if k in given]
    if not strong:
        return None
    from .ops.qjson import dumps

    value: dict[str, Any] = {k: given[k] for k in strong}
    value["driver"] = img.format
    file = img.driver.file
    value["file"] = file.json_options() if not isinstance(file, FileProtocol) else {"driver": "file",
                                                                                     "filename": file.filename}
    return "json:" + dumps(value, pretty=False)


# -- one node and its chain ------------------------------------------------------------------

def _open_node(
    filename: str | None,
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
    parse_filename: bool = True,
    _depth: int = 0,
    _seen: frozenset[str] = frozenset(),
) -> Image:
    """Open one image by file name and driver options, and its backing chain: the layer
    under :func:`open`. Errors of a format driver read ``Could not open 'FILE': ...`` for the
    top image; backing files' errors ``Could not open backing file: ...``."""
    from . import locking
    from .untrusted import is_enabled, refuse_backing

    untrusted = is_enabled(untrusted)
    shown = filename if filename is not None else ""
    if _depth > MAX_CHAIN_DEPTH:
        raise QimgError(f"Could not open '{shown}': Backing chain is too deep (more than {MAX_CHAIN_DEPTH} images)")
    if filename is not None and filename.startswith("json:") and parse_filename:
        # a json: backing file name (as QEMU follows it; untrusted mode never gets here)
        from .names import parse_json_name

        t = target_from_options(*parse_json_name(filename), None, None, {}, joined=True)
        merged = dict(t.options)
        merged.update(options or {})
        return _open_node(t.filename, fmt or t.fmt, writable=writable, backing=backing, force_share=force_share,
                          options=merged, backing_override=backing_override, untrusted=untrusted, no_io=no_io,
                          resize=resize, no_share=no_share, parse_filename=False, _depth=_depth, _seen=_seen)
    reg = get_registry()
    top_driver = fmt if fmt is not None and fmt not in reg.formats and reg.protocol(fmt) is not None else None
    entry = reg.format(fmt) if fmt and top_driver is None else None
    options = dict(options or {})
    given = dict(options)
    if options:
        from .runtime import check_common, check_file

        try:
            check_common(options)
            if top_driver is None and options.get("file.driver") in (None, "file"):
                check_file(options)
        except QimgError as e:
            if filename is None:  # named by options alone: open() names it
                raise
            raise QimgError(f"Could not open '{shown}': {e.message}", e.exit_code) from None
    # -f file: the file protocol is the image's driver and opens the name as a path
    # (nbd://h/x is a file of that name, as QEMU's), its "file:" prefix aside
    file, pcls = _open_file(filename, options, writable=writable, top_driver=top_driver,
                            parse_filename=parse_filename and fmt != "file")
    by_options = filename is None  # the file named by options alone (file.driver=nbd,...)
    if filename is None:
        filename = file.filename
    try:
        if top_driver is not None:
            from .protofmt import format_class

            cls = format_class(top_driver, pcls or type(file))
            fmt_name = top_driver
        else:
            probed = entry is None
            if entry is None:
                entry = reg.format(probe_format(file, filename, untrusted=untrusted))
            cls = entry.load()
            fmt_name = entry.name
        drv_options = dict(options)
        if untrusted:
            drv_options["untrusted"] = True
        if not locking.locking_disabled(drv_options):
            try:
                file.set_perms(*locking.wanted(fmt_name, writable=writable, force_share=force_share,
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
            if top_driver is None and probed:
                driver.probed = True
        except QimgError as e:
            if e.message.startswith("Could not open") or _depth or not filename or by_options:
                # qemu-img names the top image only ("Could not open backing file: <error>"); an
                # image opened by options alone is named by open() (its json: name)
                raise
            raise QimgError(f"Could not open '{filename}': {e.message}", e.exit_code) from None
    except BaseException:
        file.close()
        raise
    img = Image(driver, format_name=fmt_name, filename=filename)
    img.protocol_class = pcls
    img.open_options = given
    if isinstance(file, FileProtocol) and filename.startswith("file:") and file.path != filename[5:]:
        img.display_name = file.path  # QEMU shows the path its file driver opened (./image:x)
    if pcls is not None:
        exact = file.exact_filename()
        if exact is None:
            from .ops.qjson import dumps

            node = file.json_options()
            if top_driver is None:  # a format over the protocol: its json: name holds both
                node = {"driver": fmt_name, "file": node}
            exact = "json:" + dumps(node, pretty=False)
        if exact != filename:
            img.display_name = exact
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
        try:
            full = _backing_path(file, filename, bname) if backing_override is None else bname
        except QimgError as e:
            driver.close()
            raise QimgError(e.message, e.exit_code) from None  # open() prefixes the name given
        key = os.path.realpath(full) if reg.protocol_for(full) is None and not full.startswith("json:") else full
        me = os.path.realpath(filename) if pcls is None else filename
        if key in _seen or key == me:
            driver.close()
            raise QimgError(f"Could not open '{filename}': Backing file '{bname}' creates an infinite loop")
        try:
            img.backing = _open_node(full, bfmt, writable=False, force_share=force_share, no_io=no_io,
                                     options=bopts or None, untrusted=untrusted, _depth=_depth + 1,
                                     _seen=_seen | {me})
        except QimgError as e:
            driver.close()
            msg = e.message
            if not msg.startswith("Could not open backing file"):
                msg = f"Could not open backing file: {msg}"
            raise public_error(e, msg) from None  # open() prefixes the name given
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
        return (_backing_path(driver.file, driver.filename, driver.backing_filename), fmt)
    return (name, fmt if fmt is not None else driver.backing_format)


# -- create ----------------------------------------------------------------------------------

def create(
    filename: str | os.PathLike[str],
    fmt: str,
    size: int | None = None,
    options: Mapping[str, Any] | str | None = None,
    *,
    backing_file: str | os.PathLike[str] | None = None,
    backing_fmt: str | None = None,
    unsafe: bool = False,
) -> None:
    """Create an image, as ``qemu-img create`` (:func:`qimg.ops.create.create_image`).

    ``filename`` is a path or a protocol name (an ``nbd://`` export is written in place, as
    qemu-img does). ``options`` is a mapping (values typed or as text: ``{"cluster_size":
    65536}``, ``{"cluster_size": "64k", "lazy_refcounts": True}``) or a ``-o`` string (validated
    against the driver's ``create_opts`` and the protocol's). Without ``size`` the backing
    file's size is used; the backing file is opened unless ``unsafe`` (then ``backing_fmt``
    must be given, as qemu-img requires). Errors are qemu-img's messages (without its
    ``qemu-img: FILE:`` prefix).
    """
    from .ops.create import all_create_opts, create_image, format_class

    name = os.fsdecode(os.fspath(filename))
    if options is not None and not isinstance(options, str):
        from .options import options_string

        options = options_string(options)  # checked and typed as ``-o`` (strings or typed values)
    try:
        if isinstance(options, str) and options and size is not None:
            from .options import parse_options

            options = parse_options(options, all_create_opts(format_class(fmt), name))
        if isinstance(options, dict) and size is not None:
            options = {k: v for k, v in options.items() if k != "size"}
        if backing_file is not None:
            backing_file = os.fsdecode(os.fspath(backing_file))
        create_image(name, fmt, size, options or "", backing_file=backing_file, backing_fmt=backing_fmt,
                     unsafe=unsafe)
    except QimgError as e:
        raise public_error(e, None, name) from None
