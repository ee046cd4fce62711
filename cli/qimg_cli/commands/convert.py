"""``qimg convert``: option parsing exactly as qemu-img; the work is qimg.ops.convert."""
from __future__ import annotations

from ..copyopts import Getopt, UsageError, lazy_command, show_help

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SHORT = ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:"
LONG = {"help": False, "object": True, "image-opts": False, "target-image-opts": False,
        "salvage": False, "target-is-zero": False, "bitmaps": False, "skip-broken-bitmaps": False,
        "force-share": False, "source-format": True, "target-format": True}


def run(argv: list[str]) -> None:
    from qimg.errors import QimgError
    from qimg.ops.convert import ConvertOptions

    from ..common import merge_o, parse_objects
    from ..copyopts import (
        check_cache,
        cvtnum,
        image_opts_target,
        load_snapshot,
        open_named,
        option_help,
        parse_rate,
        parse_snapshot_param,
        qemu_progress,
    )

    opts = ConvertOptions(out_format=None)
    fmt = None
    o_values: list[str] = []
    objects: list[str] = []
    snapshot: tuple[str | None, str | None] | None = None
    cache = src_cache = None
    progress = quiet = force_share = image_opts = tgt_image_opts = False
    explicit_sparse = False
    g = Getopt(argv, SHORT, LONG)
    for opt, val in g:
        if opt in ("h", "help"):
            show_help()
        elif opt in ("f", "source-format"):
            fmt = val
        elif opt in ("O", "target-format"):
            opts.out_format = val
        elif opt == "B":
            opts.backing_file = val
        elif opt == "C":
            opts.copy_offload = True
        elif opt == "c":
            opts.compress = True
        elif opt == "F":
            opts.backing_format = val
        elif opt == "o":
            from qimg.options import split_options

            if not val or any(not k for k, v in split_options(val) if v is None):
                raise QimgError(f"Invalid option list: {val}")
            o_values.append(val)
        elif opt == "l":
            snapshot = parse_snapshot_param(val or "")
        elif opt == "S":
            try:
                sval = cvtnum("buffer size for sparse output", val or "")
            except QimgError:
                raise QimgError("Invalid buffer size for sparse output specified. You may use k, M, G, T, "
                                "P or E suffixes for\nqimg: kilobytes, megabytes, gigabytes, terabytes, "
                                "petabytes and exabytes.") from None
            if sval % 512 or sval > 16 << 20:
                raise QimgError("Invalid buffer size for sparse output specified. Valid sizes are multiples "
                                "of 512 up to 16777216. Select 0 to disable sparse detection (fully "
                                "allocates output).")
            opts.sparse = sval
            explicit_sparse = True
        elif opt == "p":
            progress = True
        elif opt == "t":
            cache = val
        elif opt == "T":
            src_cache = val
        elif opt == "q":
            quiet = True
        elif opt == "n":
            opts.no_create = True
        elif opt == "m":
            try:
                m = int(val or "", 10)
            except ValueError:
                m = 0
            if not 1 <= m <= 16:
                raise QimgError("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16")
            opts.workers = m
        elif opt == "W":
            opts.ordered = False
        elif opt in ("U", "force-share"):
            force_share = True
        elif opt == "r":
            opts.rate_limit = parse_rate(val or "")
        elif opt == "object":
            objects.append(val or "")
        elif opt == "image-opts":
            image_opts = True
        elif opt == "target-image-opts":
            tgt_image_opts = True
        elif opt == "salvage":
            opts.salvage = True
        elif opt == "target-is-zero":
            opts.target_is_zero = True
        elif opt == "bitmaps":
            opts.bitmaps = True
        elif opt == "skip-broken-bitmaps":
            opts.skip_broken_bitmaps = True
    parse_objects(objects)
    if opts.out_format is None and not tgt_image_opts:
        opts.out_format = "raw"
    if opts.skip_broken_bitmaps and not opts.bitmaps:
        raise QimgError("Use of --skip-broken-bitmaps requires --bitmaps")
    if opts.copy_offload and opts.compress:
        raise QimgError("Cannot enable copy offloading when -c is used")
    if opts.copy_offload and explicit_sparse:
        raise QimgError("Cannot enable copy offloading when -S is used")
    if opts.copy_offload and opts.salvage:
        raise QimgError("Cannot use copy offloading in salvaging mode")
    if tgt_image_opts and not opts.no_create:
        raise QimgError("--target-image-opts requires use of -n flag")
    if opts.target_is_zero and not opts.no_create:
        raise QimgError("--target-is-zero requires use of -n flag")
    files = g.positionals
    out_filename = files[-1] if len(files) >= 2 else None
    options = merge_o(o_values)
    if options:
        from qimg.options import is_help_request

        if is_help_request(options):
            import click

            click.echo(option_help(opts.out_format or "raw", out_filename))
            raise SystemExit(0)
    if opts.no_create and options:
        raise QimgError("-o has no effect when skipping image creation")
    if out_filename is None:
        raise QimgError("Must specify image file name")
    check_cache(src_cache, source=True)  # the target's -t is checked by ops.convert, later
    opts.create_options = options or None
    opts.cache = cache or "unsafe"
    if tgt_image_opts:
        if opts.out_format is not None:
            raise QimgError("--image-opts and --format are mutually exclusive")
        opts.target_name = out_filename
        out_filename, opts.out_format, opts.target_open_options = image_opts_target(out_filename)

    sources = []
    bar = qemu_progress(progress and not quiet, 1.0)
    opts.qemu_runs = bar.enabled  # the meter moves per chunk: chunks as qemu-img's
    try:
        for name in files[:-1]:
            src = open_named(name, fmt, image_opts=image_opts, force_share=force_share)
            sources.append(src)
            if not force_share:
                _refuse_writers(src, name)
        if snapshot is not None:
            if len(sources) > 1:
                raise QimgError("No support for concatenating multiple snapshot")
            load_snapshot(sources[0], *snapshot)
        from qimg.ops.convert import convert

        convert(sources, out_filename, opts, progress=bar.update,
                warn=lambda m: __import__("sys").stderr.write(f"qimg: {m}\n"))
        bar.finish()
    except BaseException:
        if bar.enabled:
            import sys

            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    finally:
        for s in sources:
            try:
                s.close()
            except QimgError:
                pass


def _refuse_writers(img, name: str) -> None:  # noqa: ANN001 - qimg.image.Image
    """qemu-img convert shares no write permission on its sources, raw ones included."""
    from qimg import locking
    from qimg.errors import QimgError

    if locking.locking_disabled(getattr(img.driver, "options", None)):
        return
    perm, shared = locking.wanted(img.format, writable=False, no_share=True, cls=type(img.driver))
    try:
        locking.lock_image(img, perm, shared)
    except QimgError as e:
        raise QimgError(f"Could not open '{name}': {e.message}", e.exit_code) from None


def __getattr__(attr: str) -> "Any":
    """``command``, the click command, is built on first use: running directly needs no click."""
    if attr == "command":
        return lazy_command(__name__, "convert", run, "Convert an image to another format")
    raise AttributeError(attr)


__all__ = ["run", "UsageError"]
