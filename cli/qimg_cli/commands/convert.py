"""``qimg convert``: option handling exactly as qemu-img's; the work is qimg.ops.convert."""
from __future__ import annotations

from ..tables import Command, Opt, help_option, object_option

#: the command's options and help, as data (qimg_cli.tables describes the model)
TABLE = Command(
    "convert",
    usage=("[-f SRC_FMT|--image-opts] [-T SRC_CACHE] [--bitmaps [--skip-broken-bitmaps]]\n"
           "        [-o TGT_OPTS|--target-image-opts] [-t TGT_CACHE] [-n]\n"
           "        [-B BACKING_FILENAME [-F BACKING_FMT]]\n"
           "        SRC_FILENAME [SRC_FILENAME2 [...]] TGT_FILENAME\n"),
    options=(
        help_option(),
        Opt("quiet", "-q --quiet@10.0", doc="  -q, --quiet\n     quiet operations"),
        object_option(),
        Opt("image_opts", "--image-opts --source-image-opts@10.0",
            doc="  --source-image-opts\n     indicates that SRC_FILENAME is a complete image specification\n"
                "     instead of a file name (incompatible with --source-format)"),
        Opt("fmt", "-f --source-format@10.0", True,
            "  -f, --source-format SRC_FMT\n     specify SRC_FILENAME source image format explicitly", complete="format"),
        Opt("src_cache", "-T --source-cache@10.0", True,
            "  -T, --source-cache SRC_CACHE\n     source image(s) cache mode (writeback)", complete="cache"),
        Opt("snapshot", "-l --snapshot@10.0", True,
            "  -l, --source-snapshot SNAPSHOT_PARAMS\n     specify source snapshot parameters"),
        Opt("sparse", "-S --sparse-size@10.0", True, "  -S, --sparse-size SPARSE_SIZE\n     XXX todo"),
        Opt("out_fmt", "-O --output-format@10.0", True,
            "  -O, --target-format TGT_FMT\n     specify TGT_FILENAME image format (default is raw)", complete="format"),
        Opt("options", "-o --options@10.0", True, "  -o, --target-options TGT_OPTS\n     TARGET_FMT-specific options",
            repeat=True),
        Opt("cache", "-t --output-cache@10.0", True,
            "  -t, --target-cache TGT_CACHE\n     cache mode when opening output image (unsafe)", complete="cache"),
        Opt("backing", "-B --backing@10.0", True,
            "  -B, --backing BACKING_FILENAME\n     create output to be a CoW on top of BACKING_FILENAME", complete="file"),
        Opt("backing_fmt", "-F --backing-format@10.0", True,
            "  -F, --backing-format BACKING_FMT\n     specify BACKING_FILENAME image format explicitly", complete="format"),
        Opt("force_share", "-U --force-share", doc="  -U, --force-share\n     open images in shared mode for concurrent access"),
        Opt("target_image_opts", "--target-image-opts",
            doc="  --target-image-opts\n     indicates that TGT_FILENAME is a complete image specification\n"
                "     instead of a file name (incompatible with --output-format)"),
        Opt("salvage", "--salvage", doc="  --salvage\n     XXX todo"),
        Opt("target_is_zero", "--target-is-zero", doc="  --target-is-zero",
            about="the target (with -n) reads as zeroes: zeroes are not written"),
        Opt("bitmaps", "--bitmaps", doc="  --bitmaps\n     also copy any persistent bitmaps present in source"),
        Opt("skip_broken_bitmaps", "--skip-broken-bitmaps",
            doc="  --skip-broken-bitmaps\n     skip (do not error out) any broken bitmaps"),
        Opt("rate", "-r --rate@10.0", True, "  -r, --rate RATE\n     I/O rate limit"),
        Opt("parallel", "-m --parallel@10.0", True, "  -m, --parallel NUM_COROUTINES\n     specify parallelism (default 8)"),
        Opt("oob_writes", "-W --oob-writes@10.0", doc="  -W, --oob-writes\n     enable out-of-order writes to improve performance"),
        Opt("copy_offload", "-C --copy-range-offloading@10.0", doc="  -C, --copy-range-offloading\n     use copy_range offloading"),
        Opt("compress", "-c", doc="  -c, --compress\n     create compressed output image (qcow and qcow2 format only)"),
        Opt("progress", "-p", doc="  -p, --progress\n     show operation progress"),
        Opt("no_create", "-n", doc="  -n, --no-create\n     omit target volume creation (eg on rbd)"),
    ),
    layout=("quiet", "progress", "fmt", "image_opts", "snapshot", "src_cache", "out_fmt", "target_image_opts",
            "options", "compress", "cache", "backing", "backing_fmt", "no_create", "target_is_zero", "sparse",
            "bitmaps", "skip_broken_bitmaps", "force_share", "rate", "parallel", "copy_offload", "salvage",
            "oob_writes", "objects",
            "  SRC_FILENAME\n     source image file name (or specification with --image-opts)",
            "  TGT_FILENAME\n     target (output) image file name"))

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..parse import Parsed


def on_option(p: Parsed, key: str, value: str | None) -> None:
    """qemu-img convert's getopt loop: values are checked and converted as they are met."""
    from qimg.errors import QimgError

    from ..common import cvtint, cvtnum
    from ..copyopts import parse_rate, parse_snapshot_param

    st = p.state
    val = value or ""
    if key == "options":
        from qimg.ops.create import valid_option_list

        if not valid_option_list(value or ""):
            raise QimgError(f"Invalid option list: {value}")
    elif key == "snapshot":
        st["snapshot"] = parse_snapshot_param(val)
    elif key == "sparse":
        sval = cvtnum("buffer size for sparse output", val)
        if sval % 512 or sval > 16 << 20:
            raise QimgError("Invalid buffer size for sparse output specified. Valid sizes are multiples "
                            "of 512 up to 16777216. Select 0 to disable sparse detection (fully "
                            "allocates output).")
        st["sparse"] = sval
    elif key == "parallel":
        from qimg.compat import has

        if has("range-checked-numbers"):
            st["parallel"] = cvtint("number of coroutines", val, 1, 16)
            return
        try:
            m = int(val, 10)
        except ValueError:
            m = 0
        if not 1 <= m <= 16:
            raise QimgError("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16")
        st["parallel"] = m
    elif key == "rate":
        st["rate"] = parse_rate(val)


def run(p: Parsed) -> None:
    from qimg.errors import QimgError
    from qimg.ops.convert import ConvertOptions

    from ..common import merge_o, warn
    from ..copyopts import (
        check_cache,
        image_opts_target,
        load_snapshot,
        open_named,
        option_help,
        qemu_progress,
        stream_done,
        with_stream,
    )

    st = p.state
    opts = ConvertOptions(out_format=p.out_fmt, backing_file=p.backing, backing_format=p.backing_fmt,
                          copy_offload=p.copy_offload, compress=p.compress, no_create=p.no_create,
                          salvage=p.salvage, target_is_zero=p.target_is_zero, bitmaps=p.bitmaps,
                          skip_broken_bitmaps=p.skip_broken_bitmaps)
    if "sparse" in st:
        opts.sparse = st["sparse"]
    if "parallel" in st:
        opts.workers = st["parallel"]
    if "rate" in st:
        opts.rate_limit = st["rate"]
    if p.oob_writes:
        opts.ordered = False
    fmt, o_values, snapshot = p.fmt, p.options, st.get("snapshot")
    cache, src_cache, progress, quiet = p.cache, p.src_cache, p.progress, p.quiet
    force_share, image_opts, tgt_image_opts = p.force_share, p.image_opts, p.target_image_opts
    explicit_sparse = "sparse" in st
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
    files = p.args
    out_filename = files[-1] if len(files) >= 2 else None
    options = merge_o(o_values)
    if options:
        from qimg.options import is_help_request

        if is_help_request(options):
            import sys

            sys.stdout.write(option_help(opts.out_format or "raw", out_filename) + "\n")
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

        convert(sources, out_filename, opts, progress=with_stream(bar.update, "convert", "copy"),
                warn=warn)
        bar.finish()
        stream_done("convert")
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

    if locking.locking_disabled(img.driver.options):
        return
    perm, shared = locking.wanted(img.format, writable=False, no_share=True, cls=type(img.driver))
    try:
        locking.lock_image(img, perm, shared)
    except QimgError as e:
        raise QimgError(f"Could not open '{name}': {e.message}", e.exit_code) from None
