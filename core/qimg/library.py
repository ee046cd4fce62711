"""The library API: one function per qemu-img command's job, with keyword arguments, typed
results (:mod:`qimg.results`) and progress callbacks. ``import qimg`` reaches them lazily
(``qimg.info``, ``qimg.convert``...); docs/library.md is the guide.

Every function takes its image as a path (``str`` or ``os.PathLike``), a protocol name
(``nbd://...``), a ``json:{...}`` name, an options mapping (as :func:`qimg.open`), or an
:class:`qimg.Image` already open (then used as it is and left open). Errors are
:class:`qimg.QimgError` with qemu-img's message, also the matching built-in exception where
there is one (``FileNotFoundError``, ``PermissionError``, ``ValueError``, ``NotImplementedError``).

They run the same code as the command line (:mod:`qimg.ops`): the same checks, the same
results, the same files written.

Threads: the functions may be called from several threads at once on different images (each
opens its own handles; convert runs its own worker threads). An open :class:`qimg.Image` (and
its file object) is not safe for concurrent use: give each thread its own, or hold a lock.
Progress callbacks may be called from a worker thread.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Union

from .api import create, open
from .errors import QimgError, QimgValueError, public_error
from .image import Image, ImageFile
from .results import Allocation, CheckReport, Comparison, ImageInfo, MapEntry, Measurement, Progress

__all__ = ["open", "open_file", "create", "info", "check", "convert", "compare", "commit", "rebase", "resize",
           "measure", "map", "Progress", "Allocation", "ImageInfo", "CheckReport", "MapEntry", "Measurement",
           "Comparison"]

#: what names an image: a path, a protocol or ``json:`` name, an options mapping, or an open Image
Target = Union[str, "os.PathLike[str]", Mapping[str, Any], Image]
#: a progress callback: called with a :class:`Progress` as the operation advances
ProgressCallback = Callable[[Progress], None]


@contextmanager
def _opened(target: Target, fmt: str | None = None, **kw: Any) -> Iterator[Image]:
    """``target`` open (by :func:`qimg.open` with ``kw``), closed afterwards unless the caller
    gave an open Image."""
    if isinstance(target, Image):
        if fmt is not None and fmt != target.format:
            raise QimgValueError(f"'{target.filename}' is open as {target.format}, not {fmt}")
        if kw.get("writable") and not target.writable:
            raise QimgValueError(f"'{target.filename}' is opened read-only")
        yield target
        return
    img = open(target, fmt, probe_warning=False, **kw)
    try:
        if fmt is None and kw.get("writable") and img.format == "raw" and not isinstance(target, Mapping):
            from .api import RAW_PROBE_WARNING

            _warn([RAW_PROBE_WARNING.format(_name(target))], stacklevel=4)
        yield img
    finally:
        img.close()


def _name(target: Target) -> str:
    if isinstance(target, Image):
        return target.filename
    if isinstance(target, Mapping):
        from .names import options_text

        return options_text(target)
    return os.fsdecode(os.fspath(target))


class _Reporter:
    """An ``ops`` progress function (``done, total``) that calls the caller's ``progress`` with
    a :class:`Progress` and feeds the ``QIMG_PROGRESS_FD`` stream (:mod:`qimg.progress`).
    ``scale``: the ops function reports a percentage; bytes are that share of ``scale``."""

    def __init__(self, progress: ProgressCallback | None, operation: str, phase: str,
                 scale: int | None = None) -> None:
        from . import progress as stream

        self.progress = progress
        self.sink = stream.sink()
        self.operation = operation
        self.phase = phase
        self.scale = scale
        self.total = 0 if scale is None else scale

    @property
    def wanted(self) -> bool:
        return self.progress is not None or self.sink is not None

    def __call__(self, done: float, total: float) -> None:
        if self.scale is not None:
            done, total = self.scale * done / (total or 100.0), self.scale
        self.total = int(total)
        self._send(Progress(self.operation, self.phase, int(done), int(total)))

    def _send(self, p: Progress) -> None:
        if self.sink is not None:
            self.sink(p)
        if self.progress is not None:
            self.progress(p)

    def finish(self, total: int = 0) -> None:
        """The last report of a successful operation: phase ``done``, all of the total
        (the last one reported, else ``total``)."""
        total = self.total or total
        self._send(Progress(self.operation, "done", total, total))


def _reporter(progress: ProgressCallback | None, operation: str, phase: str,
              scale: int | None = None) -> _Reporter | None:
    r = _Reporter(progress, operation, phase, scale)
    return r if r.wanted else None


def _public(err: QimgError, name: str | None = None) -> QimgError:
    return public_error(err, None, name)


# -- objects: secrets and TLS credentials ----------------------------------------------------------

def define_object(definition: str) -> None:
    """Define an object as qemu-img's ``--object`` does, in its syntax: a ``secret``
    (``"secret,id=sec0,data=passphrase"``, or ``file=``, ``format=base64``) for encrypted
    images (``key-secret``, ``encrypt.key-secret``), or TLS credentials
    (``"tls-creds-x509,id=tls0,dir=/etc/pki/qemu"``) for nbd nodes (``tls-creds``). Objects
    live for the process; ids are unique (QimgError with qemu-img's message otherwise)."""
    from . import secrets

    secrets.add_object(definition)


def forget_objects() -> None:
    """Forget every object :func:`define_object` defined."""
    from . import secrets, tlscreds

    secrets._secrets.clear()
    tlscreds.clear()


# -- opening as a file ---------------------------------------------------------------------------

def open_file(target: str | os.PathLike[str] | Mapping[str, Any], fmt: str | None = None, mode: str = "rb",
              **kwargs: Any) -> ImageFile:
    """Open an image's guest view as a binary file (``io.RawIOBase``): ``mode`` ``"rb"`` or
    ``"r+b"`` (writable); other keywords as :func:`qimg.open`. Closing the file closes the image."""
    if mode not in ("rb", "r+b", "rb+"):
        raise QimgValueError(f"invalid mode: {mode!r} (an image file is 'rb' or 'r+b')")
    img = open(target, fmt, writable=mode != "rb", **kwargs)
    return ImageFile(img, owns_image=True)


# -- the commands -------------------------------------------------------------------------------

def info(target: Target, *, fmt: str | None = None, backing_chain: bool = False, force_share: bool = False,
         image_opts: bool = False) -> ImageInfo:
    """``qemu-img info``: an image's facts; with ``backing_chain`` its backing images' too
    (``result.backing``, ``result.chain``). ``force_share`` (``-U``): read an image another
    process has open for writing."""
    if isinstance(target, Image):
        from .ops.info import flatten_chain, image_info

        try:
            d = image_info(target, backing_chain)
        except QimgError as e:
            raise _public(e) from None
        dicts = flatten_chain(d) if backing_chain else [d]
    else:
        from .ops.info import collect

        if isinstance(target, Mapping):
            from .names import options_text

            target, image_opts = options_text(target), True
        try:
            dicts = collect(os.fsdecode(os.fspath(target)), fmt, image_opts=image_opts, force_share=force_share,
                            backing_chain=backing_chain)
        except QimgError as e:
            raise _public(e) from None
    out = None
    for d in reversed(dicts):
        out = ImageInfo.from_dict(d, out)
    assert out is not None
    return out


def check(target: Target, *, fmt: str | None = None, repair: str | None = None,
          force_share: bool = False) -> CheckReport:
    """``qemu-img check``: consistency of an image's metadata; ``repair`` ``"leaks"`` or
    ``"all"`` (``-r``) opens it writable and repairs. The report's ``exit_code`` is qemu-img's;
    a format without checks raises :class:`qimg.NotSupported` (a ``NotImplementedError``)."""
    from .ops.check import parse_repair

    fix: set[str] = set()
    if repair is not None:
        try:
            fix = parse_repair(repair)
        except QimgError as e:
            raise QimgValueError(e.message) from None
    from .ops.check import check_image

    messages: list[str] = []
    try:
        with _opened(target, fmt, force_share=force_share, writable=bool(fix), options={"check": True}) as img:
            r = check_image(img, fix, emit=messages.append)
    except QimgError as e:
        raise _public(e) from None
    return CheckReport(filename=_name(target), format=r.format, check_errors=r.check_errors,
                       corruptions=r.corruptions, leaks=r.leaks, corruptions_fixed=r.corruptions_fixed,
                       leaks_fixed=r.leaks_fixed, image_end_offset=r.image_end_offset,
                       total_clusters=r.total_clusters, allocated_clusters=r.allocated_clusters,
                       fragmented_clusters=r.fragmented_clusters, compressed_clusters=r.compressed_clusters,
                       messages=tuple(messages))


def map(target: Target, *, fmt: str | None = None, start: int = 0, length: int | None = None,  # noqa: A001
        force_share: bool = False) -> list[MapEntry]:
    """``qemu-img map --output=json``: the image's guest ranges, merged as qemu-img merges
    them, each with the chain layer that holds it and where its data lives. ``start`` and
    ``length`` limit the range (``--start-offset``, ``--max-length``)."""
    from .ops.map import map_extents

    if start < 0 or (length is not None and length < 0):
        raise QimgValueError("start and length must not be negative")
    try:
        with _opened(target, fmt, force_share=force_share) as img:
            entries = map_extents(img, start, length)
    except QimgError as e:
        raise _public(e) from None
    return [MapEntry(start=e["start"], length=e["length"], depth=e["depth"], present=e["present"], zero=e["zero"],
                     data=e["data"], compressed=e.get("compressed", False), offset=e.get("offset"),
                     filename=e.get("filename")) for e in entries]


def measure(out_fmt: str = "raw", *, size: int | None = None, source: Target | None = None,
            fmt: str | None = None, options: str | Mapping[str, Any] | None = None,
            force_share: bool = False) -> Measurement:
    """``qemu-img measure``: the bytes a new ``out_fmt`` image needs, empty of ``size`` bytes
    or holding ``source`` (``fmt``: the source's format). ``options``: the new image's create
    options (a dict or a ``-o`` string)."""
    from .ops.measure import measure as ops_measure

    if (size is None) == (source is None):
        raise QimgValueError("Either size or source must be given (not both)")
    text = _options_text(options)
    try:
        if source is None:
            r = ops_measure(out_fmt, size, text, None)
        else:
            with _opened(source, fmt, force_share=force_share) as img:
                r = ops_measure(out_fmt, None, text, img)
    except QimgError as e:
        raise _public(e) from None
    return Measurement(required=r["required"], fully_allocated=r["fully-allocated"], bitmaps=r.get("bitmaps"))


def _options_text(options: str | Mapping[str, Any] | None) -> str:
    """Create options as a ``-o`` string."""
    if not options:
        return ""
    if isinstance(options, str):
        return options
    from .options import options_string

    return options_string(options)


def convert(source: Target | Iterable[Target], target: str | os.PathLike[str], *, fmt: str | None = None,
            out_fmt: str = "raw", options: str | Mapping[str, Any] | None = None,
            backing_file: str | os.PathLike[str] | None = None, backing_fmt: str | None = None,
            compress: bool = False, sparse: int = 4096, workers: int = 8, ordered: bool = True,
            no_create: bool = False, target_is_zero: bool = False, rate_limit: int = 0,
            bitmaps: bool = False, force_share: bool = False,
            progress: ProgressCallback | None = None) -> None:
    """``qemu-img convert``: copy ``source`` (several sources are concatenated) into a new
    ``out_fmt`` image ``target`` (``no_create``: into the existing one). ``options`` are the
    target's create options (``-o``: ``{"compat": "1.1", "cluster_size": 65536}``), ``backing_file``
    makes it an overlay (``-B``: only what differs is copied), ``compress`` (``-c``), ``sparse``
    (``-S``, 0: allocate everything), ``workers`` (``-m``), ``ordered=False`` (``-W``),
    ``rate_limit`` bytes/s (``-r``), ``bitmaps`` (``--bitmaps``). ``progress`` is called with a
    :class:`Progress` (operation ``"convert"``) as data is copied."""
    from .ops.convert import ConvertOptions
    from .ops.convert import convert as ops_convert

    sources = [source] if isinstance(source, (str, os.PathLike, Mapping, Image)) else list(source)
    if not sources:
        raise QimgValueError("convert needs at least one source image")
    out = os.fsdecode(os.fspath(target))
    opts = ConvertOptions(out_format=out_fmt, create_options=_options_text(options) or None,
                          backing_file=None if backing_file is None else os.fsdecode(os.fspath(backing_file)),
                          backing_format=backing_fmt, compress=compress, sparse=sparse, workers=workers,
                          ordered=ordered, no_create=no_create, target_is_zero=target_is_zero,
                          rate_limit=rate_limit, bitmaps=bitmaps)
    report = _reporter(progress, "convert", "copy")
    opened: list[Image] = []
    warnings: list[str] = []
    try:
        for s in sources:
            if isinstance(s, Image):
                opened.append(s)
            else:
                opened.append(open(s, fmt, force_share=force_share))
        ops_convert(opened, out, opts, progress=report, warn=warnings.append)
    except QimgError as e:
        raise _public(e, out) from None
    finally:
        for s, img in zip(sources, opened, strict=False):  # opened: those before a failure
            if not isinstance(s, Image):
                img.close()
    _warn(warnings)
    if report is not None:
        report.finish()


def _warn(lines: list[str], stacklevel: int = 3) -> None:
    if lines:
        import warnings

        for line in lines:
            warnings.warn(line, QimgWarning, stacklevel=stacklevel)


class QimgWarning(UserWarning):
    """What qemu-img prints as a warning and goes on (the library issues it with :mod:`warnings`)."""


def compare(first: Target, second: Target, *, fmt1: str | None = None, fmt2: str | None = None,
            strict: bool = False, force_share: bool = False,
            progress: ProgressCallback | None = None) -> Comparison:
    """``qemu-img compare``: whether two images show the same guest data (``strict``: and the
    same size and allocation). The result is true when they do; else ``offset`` is the first
    difference. Errors reading either image raise (qemu-img's exit status 2)."""
    from .ops.compare import compare as ops_compare

    lines: list[str] = []
    try:
        with _opened(first, fmt1, force_share=force_share) as a, _opened(second, fmt2, force_share=force_share) as b:
            report = _reporter(progress, "compare", "compare")
            rc = ops_compare(a, b, strict=strict, say=lines.append, progress=report,
                             name1=_name(first), name2=_name(second))
            size = max(a.size, b.size)
    except QimgError as e:
        raise _public(e) from None
    message = next((ln for ln in lines if not ln.startswith("Warning:")), lines[-1] if lines else "")
    offset = None
    m = re.search(r"[Oo]ffset (\d+)", message)
    if m:
        offset = int(m.group(1))
    if rc == 0 and report is not None:
        report.finish(size)
    return Comparison(identical=rc == 0, offset=offset, message=message)


def commit(target: Target, *, fmt: str | None = None, base: str | os.PathLike[str] | None = None,
           drop: bool = False, rate_limit: int = 0, progress: ProgressCallback | None = None) -> None:
    """``qemu-img commit``: write an overlay's data into its backing image (``base``: a deeper
    image of the chain, by name; it implies ``drop``). ``drop`` (``-d``) leaves the overlay as it
    was; else it is emptied, as qemu-img does."""
    from .ops.commit import base_named
    from .ops.commit import commit as ops_commit

    drop = drop or base is not None
    try:
        with _opened(target, fmt, writable=True) as img:
            b = base_named(img, os.fsdecode(os.fspath(base)), _name(target)) if base is not None else None
            report = _reporter(progress, "commit", "commit")
            ops_commit(img, b, drop=drop, progress=report, rate_limit=rate_limit)
            size = img.size
    except QimgError as e:
        raise _public(e) from None
    if report is not None:
        report.finish(size)


def rebase(target: Target, backing: str | os.PathLike[str] | None, *, fmt: str | None = None,
           backing_fmt: str | None = None, unsafe: bool = False, compress: bool = False,
           force_share: bool = False, progress: ProgressCallback | None = None) -> None:
    """``qemu-img rebase``: make ``backing`` (None: no backing file) the image's backing file,
    copying into the image whatever differs between the old and the new backing chain, so the
    guest data stays the same; ``unsafe`` (``-u``) only changes the recorded name."""
    from .ops.rebase import rebase as ops_rebase

    name = None if backing is None else os.fsdecode(os.fspath(backing))
    try:
        with _opened(target, fmt, writable=True, backing=not unsafe) as img:
            report = _reporter(progress, "rebase", "copy", scale=img.size)
            ops_rebase(img, name, backing_fmt, unsafe=unsafe, force_share=force_share, progress=report,
                       compress=compress)
            size = img.size
    except QimgError as e:
        raise _public(e) from None
    if report is not None:
        report.finish(size)


def resize(target: Target, size: int | str, *, fmt: str | None = None, shrink: bool = False,
           preallocation: str | None = None) -> int:
    """``qemu-img resize``: set the virtual size to ``size`` bytes (or qemu-img's text: ``"+1G"``,
    ``"-512M"``, ``"10G"``); returns the new size. Shrinking needs ``shrink=True`` (else
    :class:`qimg.QimgValueError`); ``preallocation`` (``off``, ``metadata``, ``falloc``,
    ``full``) applies to the grown area."""
    from .ops.resize import resize as ops_resize

    try:
        with _opened(target, fmt, writable=True, resize=True) as img:
            return ops_resize(img, size, shrink=shrink, preallocation=preallocation or "off")
    except QimgError as e:
        raise _public(e) from None


__all__ += ["QimgWarning", "Target", "ProgressCallback"]
