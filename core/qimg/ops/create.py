"""``qemu-img create``: option lists, ``-o help`` text, the ``Formatting ...`` line, and the
creation sequence of QEMU's ``bdrv_img_create`` (checks in its order, with its messages).

Options accepted by ``-o`` are the format's ``create_opts`` plus the protocol's (the file
protocol's: ``extent_size_hint``, ``nocow``, ``preallocation``, ``size``), as QEMU appends
the protocol driver's list to the format's.
"""
from __future__ import annotations

from .. import trace
from ..errors import QimgError, QimgValueError
from ..options import BOOL, NUMBER, SIZE, SIZE_UNSET, STRING, Option, as_int64, parse_options, split_options

TYPE_CHECKING = False  # typing's own import costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..driver import Format

#: the file protocol's create options (QEMU's file-posix)
FILE_CREATE_OPTS: list[Option] = [
    # in QEMU's list order, which the Formatting line follows
    Option("size", SIZE, "Virtual disk size"),
    Option("nocow", BOOL, "Turn off copy-on-write (valid only on btrfs)"),
    Option("preallocation", STRING, "Preallocation mode (allowed values: off, falloc, full)"),
    Option("extent_size_hint", SIZE, "Extent size hint for the image file, 0 to disable"),
]


def format_class(fmt: str) -> "type[Format]":
    """The driver class of ``-f``/``-O`` ``fmt``: a format, or a protocol named as one."""
    from ..plugins import get_registry

    reg = get_registry()
    if fmt not in reg.formats and reg.protocol(fmt) is not None:
        from ..protofmt import format_class as protocol_format

        return protocol_format(fmt, reg.protocol(fmt).load())
    return reg.format(fmt).load()


def supports_create(cls: "type[Format]") -> bool:
    from ..driver import Format

    return getattr(cls.create, "__func__", None) is not Format.create.__func__


def check_protocol_creates(filename: str) -> None:
    """QEMU's refusal of a protocol without create options (http: read-only)."""
    from ..plugins import get_registry

    entry = get_registry().protocol_for(filename)
    if entry is not None and entry.name != "file" and not entry.load().can_create:
        raise QimgError(f"Protocol driver '{entry.name}' does not support image creation")


def protocol_create_opts(filename: str) -> list[Option]:
    """Create options of the protocol that ``filename`` selects (``create_opts`` attribute of
    a registered protocol class; the file protocol's list for plain paths)."""
    from ..plugins import get_registry

    entry = get_registry().protocol_for(filename)
    if entry is None or entry.name == "file":
        return list(FILE_CREATE_OPTS)
    return list(entry.load().create_opts)


def merged_opts(first: list[Option], second: list[Option]) -> list[Option]:
    """QEMU's qemu_opts_append: ``second``'s options not already named in ``first``."""
    names = {o.name for o in first}
    return list(first) + [o for o in second if o.name not in names]


def all_create_opts(cls: "type[Format]", filename: str | None) -> list[Option]:
    opts = list(cls.create_opts)
    if filename is not None:
        opts = merged_opts(opts, protocol_create_opts(filename))
    return opts


def help_text(fmt: str, filename: str | None = None) -> str:
    """The text of ``create -f FMT -o help [FILENAME]`` (no trailing newline)."""
    cls = format_class(fmt)
    if not supports_create(cls):
        raise QimgError(f"Format driver '{fmt}' does not support image creation")
    if filename is not None:
        from ..plugins import get_registry

        get_registry().find_protocol(filename)  # QEMU's "Unknown protocol 'x'"
    opts = all_create_opts(cls, filename)
    lines = ["Supported options:" if filename is not None else f"Supported {fmt} options:"]
    lines += [o.help_line() for o in sorted(opts, key=lambda o: o.name)]
    if filename is None:
        lines += ["", "The protocol level may support further options.",
                  "Specify the target filename to include those options."]
    return "\n".join(lines)


def valid_option_list(text: str) -> bool:
    """qemu-img refuses ``-o ''``, a leading comma and an odd run of trailing commas."""
    if not text or text[0] == ",":
        return False
    trailing = len(text) - len(text.rstrip(","))
    return trailing % 2 == 0


def option_texts(text: str, declared: list[Option]) -> dict[str, str]:
    """The value text of each given option as QEMU prints it (numbers normalised)."""
    by_name = {o.name: o for o in declared}
    out: dict[str, str] = {}
    for key, value in split_options(text):
        opt = by_name.get(key)
        if opt is None:
            continue
        if value is None:
            value = "on" if opt.type == BOOL else ""
        if opt.type in (SIZE, NUMBER):
            try:
                value = str(as_int64(opt.convert(value, quiet=True)))  # QEMU prints int64
            except QimgError:
                pass
        out[key] = value
    return out


def _default_text(opt: Option) -> str | None:
    if opt.default is None:
        return None
    if isinstance(opt.default, bool):
        return "on" if opt.default else "off"
    return str(opt.default)


def formatting_line(filename: str, fmt: str, cls: "type[Format]", declared: list[Option],
                    texts: dict[str, str]) -> str:
    """``Formatting 'f', fmt=F opt=value ...`` in the driver's declared print order."""
    if cls.create_print_order:
        order = list(cls.create_print_order)
    else:
        # QEMU's option lists mostly begin with size and the backing options
        order = [n for n in ("size", "backing_file", "backing_fmt") if n in {o.name for o in cls.create_opts}]
        order += [o.name for o in cls.create_opts if o.name not in order]
    order += [o.name for o in declared if o.name not in order]
    if cls.create_print_defaults is not None:
        defaults = dict(cls.create_print_defaults)
    else:
        defaults = {o.name: t for o in cls.create_opts if (t := _default_text(o)) is not None}
    types = {o.name: o.type for o in declared}
    parts = [f"Formatting '{filename}', fmt={fmt}"]
    for name in order:
        if name not in types:
            continue
        value = texts.get(name, defaults.get(name))
        if value is not None:
            if types[name] == STRING:
                value = value.replace(",", ",,")  # QEMU prints string values escaped
            parts.append(f"{name}={value}")
    return " ".join(parts)


PREALLOC_NAMES = ("off", "metadata", "falloc", "full")


def check_protocol_preallocation(filename: str, cls: "type[Format]", typed: dict[str, Any]) -> None:
    """A ``preallocation`` the format does not declare goes to the file protocol, which knows
    off/falloc/full: an unknown name is refused before the file exists, ``metadata`` after
    QEMU has created (and emptied) it."""
    mode = typed.get("preallocation")
    if mode is None or any(o.name == "preallocation" for o in cls.create_opts):
        return
    from ..plugins import get_registry

    entry = get_registry().protocol_for(filename)
    if entry is not None and entry.name != "file":
        return  # a remote protocol's own create refuses what it cannot do
    if mode not in PREALLOC_NAMES:
        raise QimgError(f"invalid parameter value: {mode}")
    if mode == "metadata" and not cls.takes_preallocation:
        import os

        try:
            if not os.path.exists(filename) or os.path.isfile(filename):
                with open(filename, "wb"):
                    pass
        except OSError:
            pass
        raise QimgError("Unsupported preallocation mode: metadata")


def run_driver_create(cls: "type[Format]", filename: str, size: int, opts: dict[str, Any]) -> None:
    """``cls.create``, leaving the file as QEMU does when the driver refuses: its
    ``create_failure`` says whether QEMU had created it empty first ("empty") or removes it
    ("delete"); otherwise the file is left alone."""
    import os

    cls.create_check(filename, size, opts)
    policy = cls.create_failure
    from ..plugins import get_registry

    entry = get_registry().protocol_for(filename)
    if entry is not None and entry.name != "file":
        policy = None  # a remote protocol (rbd) creates once, in the driver's create
    if policy:
        # QEMU's first step: the protocol creates the file; its errors (lock held, permission)
        # leave an existing file as it was
        from ..api import open_protocol

        open_protocol(filename, create=True, writable=True).close()
    try:
        cls.create(filename, size, opts)
    except QimgError:
        try:
            if policy == "empty" and (not os.path.exists(filename) or os.path.isfile(filename)):
                with open(filename, "wb"):
                    pass
            elif policy == "delete" and os.path.isfile(filename):
                os.unlink(filename)
        except OSError:
            pass
        raise


def create_node(filename: str, fmt: str, size: int, opts: dict[str, Any]) -> None:
    """QEMU's ``bdrv_create``: the driver makes a ``size``-byte image at ``filename`` (a path
    or a protocol's name) with typed create options (``backing_file``... included), leaving
    the file as QEMU does when it refuses. ``create`` ends here, and ``convert`` and ``dd``
    create their targets with it; each words the error its own way around this message."""
    cls = format_class(fmt)
    if opts.get("backing_file") and not cls.supports_backing:
        raise QimgError(f"Backing file not supported for file format '{fmt}'")
    check_protocol_preallocation(filename, cls, opts)
    try:
        run_driver_create(cls, filename, size, opts)
    except OSError as e:
        # a protocol's own wording ("Could not resize file: ...") stands as it is; the errno
        # stays on the error (create turns EFBIG into its own message)
        text = e.strerror or str(e)
        err = QimgError(text if text.startswith("Could not resize file") else f"Could not create '{filename}': {text}")
        err.errno = e.errno  # type: ignore[attr-defined]
        raise err from None


def create_image(filename: str, fmt: str = "raw", size: int | None = None, options: str | dict[str, Any] = "", *,
                 backing_file: str | None = None, backing_fmt: str | None = None, unsafe: bool = False,
                 echo: Callable[[str], None] | None = None) -> None:
    """Create an image as ``qemu-img create`` does (QEMU's ``bdrv_img_create``: the checks,
    the backing file's size, then :func:`create_node`); ``echo`` receives the Formatting line.
    ``options`` is a ``-o`` string or a dict of typed values.

    Errors are QimgError without the ``filename:`` prefix the CLI adds.
    """
    from ..api import _open_node as open_image
    from ..api import resolve_backing_name
    from ..errors import is_strerror
    from ..plugins import get_registry

    cls = format_class(fmt)
    get_registry().find_protocol(filename)  # QEMU's "Unknown protocol 'x'", before anything else
    if not supports_create(cls):
        raise QimgError(f"Format driver '{fmt}' does not support image creation")
    check_protocol_creates(filename)
    declared = all_create_opts(cls, filename)
    names = {o.name for o in declared}
    if isinstance(options, dict):
        typed: dict[str, Any] = dict(options)
        texts = {k: ("on" if v else "off") if isinstance(v, bool) else str(v) for k, v in options.items()}
    else:
        typed = parse_options(options, declared) if options else {}
        texts = option_texts(options, declared) if options else {}
    if "size" in typed:
        if size is not None:
            raise QimgValueError("The image size must be specified only once")
        size = typed.pop("size")
        if size == SIZE_UNSET:
            size = None  # QEMU's -1: no size given
    texts.pop("size", None)
    if backing_file is not None:
        if "backing_file" not in names:
            raise QimgError(f"Backing file not supported for file format '{fmt}'")
        typed["backing_file"] = texts["backing_file"] = backing_file
    if backing_fmt is not None:
        if "backing_fmt" not in names:
            raise QimgError(f"Backing file format not supported for file format '{fmt}'")
        typed["backing_fmt"] = texts["backing_fmt"] = backing_fmt
    bf = typed.get("backing_file")
    bfmt = typed.get("backing_fmt")
    if bf is not None:
        if bf == filename:
            raise QimgValueError("Error: Trying to create an image with the same filename as the backing file")
        if bf == "":
            raise QimgValueError("Expected backing file name, got empty string")
    if bf and not unsafe:
        try:
            # metadata only (QEMU's BDRV_O_NO_IO): an encrypted backing file opens without its key
            with open_image(resolve_backing_name(filename, bf), bfmt, backing=False, force_share=True,
                            options={"_no_io": True}) as b:
                detected, bsize = b.format, b.size
        except QimgError as e:
            # QEMU names the backing file only before an errno's text (its driver's own
            # messages stand alone), and an unknown -F names a driver
            msg = e.message
            inner = f"Could not open '{resolve_backing_name(filename, bf)}': "
            if msg.startswith(inner) and not is_strerror(msg[len(inner):]):
                msg = msg[len(inner):]
            if bfmt and msg == f"Unknown file format '{bfmt}'":
                msg = f"Unknown driver '{bfmt}'"
            raise QimgError(f"{msg}\nCould not open backing image.") from None
        if not bfmt:
            # qemu-img prints this hint without a final newline
            raise QimgError(f"Backing file specified without backing format\nDetected format of {detected}.")
        if size is None:
            size = bsize
    elif bf and not bfmt:
        raise QimgValueError("Backing file specified without backing format")
    if size is None:
        raise QimgValueError("Image creation needs a size parameter")
    if echo is not None:
        texts_all = dict(texts)
        texts_all["size"] = str(as_int64(size))
        echo(formatting_line(filename, fmt, cls, declared, texts_all))
    if isinstance(options, str) and options and cls.create_reparses_options:
        parse_options(options, declared)  # QEMU's second reading (7.2's hex-size warnings again)
    trace.event("create_image", filename=filename, format=fmt, size=size)
    try:
        create_node(filename, fmt, size, typed)
    except QimgError as e:
        import errno

        if getattr(e, "errno", None) == errno.EFBIG:  # bdrv_img_create's own message for EFBIG
            hint = " (try using a larger cluster size)" if typed.get("cluster_size") else ""
            raise QimgError(f"The image size is too large for file format '{fmt}'{hint}") from None
        raise
