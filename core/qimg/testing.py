"""qimg.testing: a pytest plugin with a conformance suite for format drivers.

Opt in with ``pytest -p qimg.testing`` or, in your project's root ``conftest.py``,
``pytest_plugins = ["qimg.testing"]``; then subclass :class:`FormatConformance`::

    from qimg.testing import FormatConformance

    class TestMyFormat(FormatConformance):
        qimg_formats = ["myfmt"]      # omit: every installed format that can create images

(``pytest_plugins`` in a test module works too; call
``pytest.register_assert_rewrite("qimg.testing")`` before the import there to keep pytest's
detailed assertion messages.)

Every test of the class runs once per format name (``qimg_format`` fixture). The names come
from, in order: the class's ``qimg_formats``, the module's ``qimg_formats``, the
``--qimg-format`` command-line option (repeatable), else all installed formats whose driver
implements ``create``. The suite exercises the public API (``qimg.create``/``qimg.open``) the
way the commands do: create, size, reads of a new image, writes and reads at unaligned offsets
across cluster boundaries, block status covering the range, write_zeroes, reopening, backing
files (fall-through reads, copy-on-write) for formats that have them, a fixed pseudo-random mix
of operations against a model, probing, and ``qimg info`` (when the CLI is installed).
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

#: virtual size of conformance images: several clusters of any common cluster size
IMAGE_SIZE = 4 << 20

#: slack a format may add when it rounds the virtual size up (vpc: CHS geometry)
SIZE_ROUNDING = 1 << 20


def writes(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the writes: unaligned, crossing 512 B, 4 KiB and 64 KiB boundaries."""
    return [(0, 1), (1, 7), (511, 2), (4095, 4099), (65535, 65538), (65536 * 3 + 100, 200_000),
            (size - 3, 3), (1 << 20, 1 << 20)]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--qimg-format", action="append", default=[], metavar="NAME",
                     help="format to run qimg's conformance suite for (repeatable; default: all installed)")


def creatable_formats() -> list[str]:
    """Installed formats whose driver can create images (those the suite can test). Drivers
    that declare ``needs_secret = True`` (luks: no image without a passphrase) are left out: the
    suite passes no secrets; such a plugin tests against its own oracle."""
    from qimg.driver import Format
    from qimg.plugins import get_registry

    reg = get_registry()
    names = []
    for name in reg.format_names():
        cls = reg.format(name).load()
        if cls.needs_secret:
            continue
        if getattr(cls, "create", None) is not None and cls.create.__func__ is not Format.create.__func__:
            names.append(name)
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qimg_format" not in metafunc.fixturenames:
        return
    names = (getattr(metafunc.cls, "qimg_formats", None)
             or getattr(metafunc.module, "qimg_formats", None)
             or metafunc.config.getoption("qimg_format")
             or creatable_formats())
    metafunc.parametrize("qimg_format", list(names), ids=[str(n) for n in names])


def pattern(length: int, seed: int) -> bytes:
    """Deterministic non-zero bytes that differ between writes (built in C, not per byte)."""
    unit = bytes((seed * 31 + i * 7) % 251 + 1 for i in range(251))
    return (unit * (length // len(unit) + 1))[:length]


@pytest.fixture
def qimg_new_image(tmp_path: Any, qimg_format: str) -> Callable[..., str]:
    """Factory: ``qimg_new_image(size=IMAGE_SIZE, options=None, **qimg_create_kwargs)`` creates an
    image of the format under test and returns its path."""
    import qimg

    counter = iter(range(1 << 30))

    def make(size: int = IMAGE_SIZE, options: dict[str, Any] | str | None = None, **create_kw: Any) -> str:
        path = str(tmp_path / f"conformance-{next(counter)}.{qimg_format}")
        qimg.create(path, qimg_format, size, options, **create_kw)
        return path

    return make


def _runs(img: Any, offset: int = 0, length: int | None = None) -> Iterator[Any]:
    """This layer's block status runs over a range, checking each run's length."""
    end = img.size if length is None else offset + length
    while offset < end:
        st = img.block_status(offset, end - offset)
        assert 0 < st.length <= end - offset, f"block_status({offset}, {end - offset}) returned length {st.length}"
        yield offset, st
        offset += st.length


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from qimg_cli.main import main; sys.argv[0] = 'qimg'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def created_size(path: str, fmt: str) -> int:
    """The virtual size of a new conformance image: the requested one, maybe rounded up."""
    import qimg

    with qimg.open(path, fmt) as img:
        size = img.size
    assert IMAGE_SIZE <= size <= IMAGE_SIZE + SIZE_ROUNDING, f"created {IMAGE_SIZE} bytes, got {size}"
    return size


class FormatConformance:
    """The conformance tests; subclass it as ``Test...`` (see the module docstring)."""

    def test_create_open_size(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        import qimg

        path = qimg_new_image()
        size = created_size(path, qimg_format)
        with qimg.open(path, qimg_format) as img:
            assert img.size == size
            assert img.format == qimg_format
            assert not img.writable
        # a second image of another size is independent of the first
        other = qimg_new_image(size=IMAGE_SIZE * 2)
        with qimg.open(other, qimg_format) as img:
            assert IMAGE_SIZE * 2 <= img.size <= IMAGE_SIZE * 2 + SIZE_ROUNDING
        assert created_size(path, qimg_format) == size

    def test_new_image_reads_zero(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        import qimg
        from qimg.image import is_zero

        path = qimg_new_image()
        size = created_size(path, qimg_format)
        with qimg.open(path, qimg_format) as img:
            assert is_zero(img.pread(0, size)), "a new image does not read as zeroes"
            # past the end reads as zeroes too (the generic layer's rule)
            assert img.pread(size - 1, 10) == bytes(10)

    def test_block_status_covers_range(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        import qimg
        from qimg.blockstatus import ZERO

        path = qimg_new_image()
        size = created_size(path, qimg_format)
        with qimg.open(path, qimg_format, writable=True) as img:
            img.pwrite(70_000, pattern(100_000, 1))
        with qimg.open(path, qimg_format) as img:
            runs = list(_runs(img))
            assert sum(st.length for _, st in runs) == size, "block status runs do not add up to the size"
            for off, st in runs:
                if st.flags & ZERO:
                    assert img.pread(off, st.length) == bytes(st.length), f"ZERO run at {off} reads non-zero"
            assert any(st.data and off < 170_000 and off + st.length > 70_000 for off, st in runs), \
                "the written range is not reported as data"
            # queries starting mid-run and with short lengths stay within bounds
            for off in (1, 4097, 70_001, size - 1):
                for length in (1, 513, size - off):
                    list(_runs(img, off, min(length, size - off)))

    def test_write_read_unaligned(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        import qimg

        path = qimg_new_image()
        size = created_size(path, qimg_format)
        model = bytearray(size)
        with qimg.open(path, qimg_format, writable=True) as img:
            for i, (off, n) in enumerate(writes(size)):
                data = pattern(n, i)
                img.pwrite(off, data)
                model[off : off + n] = data
                # read back around the write, unaligned
                lo, hi = max(0, off - 777), min(size, off + n + 777)
                assert img.pread(lo, hi - lo) == bytes(model[lo:hi]), f"read-back after write {i} at {off}"
            assert img.pread(0, size) == bytes(model), "whole-image read differs after the writes"
        with qimg.open(path, qimg_format) as img:
            assert img.size == size
            assert img.pread(0, size) == bytes(model), "data differs after reopening"
            buf = bytearray(5000)
            img.preadinto(4093, memoryview(buf))
            assert bytes(buf) == bytes(model[4093:9093]), "preadinto differs"

    def test_write_zeroes(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        import qimg

        path = qimg_new_image()
        size = created_size(path, qimg_format)
        model = bytearray(pattern(size, 5))
        with qimg.open(path, qimg_format, writable=True) as img:
            img.pwrite(0, model)
            for off, n, unmap in ((1000, 3000, False), (65536, 65536, True), (200_001, 300_000, False),
                                  (1 << 20, 1 << 20, True), (size - 1, 1, False)):
                img.write_zeroes(off, n, unmap)
                model[off : off + n] = bytes(n)
                lo, hi = max(0, off - 100), min(size, off + n + 100)
                assert img.pread(lo, hi - lo) == bytes(model[lo:hi]), f"write_zeroes({off}, {n}, unmap={unmap})"
        with qimg.open(path, qimg_format) as img:
            assert img.pread(0, size) == bytes(model), "data differs after reopening"

    def test_backing_file(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        """Formats with backing files: reads fall through, partial writes copy-on-write."""
        import qimg
        from qimg.plugins import get_registry

        if not get_registry().format(qimg_format).load().supports_backing:
            pytest.skip(f"format {qimg_format} has no backing files")
        base = qimg_new_image()  # of the same format: some (vmdk) accept no other
        model = bytearray(pattern(IMAGE_SIZE, 11))
        with qimg.open(base, qimg_format, writable=True) as img:
            img.pwrite(0, model)
        path = qimg_new_image(backing_file=base, backing_fmt=qimg_format)
        size = created_size(path, qimg_format)
        with qimg.open(path, qimg_format, writable=True) as img:
            assert img.backing is not None, "the backing image was not opened"
            assert img.pread(0, IMAGE_SIZE) == bytes(model), "reads do not fall through to the backing file"
            for i, (off, n) in enumerate(writes(IMAGE_SIZE)):
                data = pattern(n, 20 + i)
                img.pwrite(off, data)
                model[off : off + n] = data
            img.write_zeroes(300_000, 70_000)
            model[300_000:370_000] = bytes(70_000)
            assert img.pread(0, IMAGE_SIZE) == bytes(model), "copy-on-write lost backing data"
            st = img.chain_status(IMAGE_SIZE // 2 + 12345, 1)
            assert st.length == 1 and st.flags & 0x01, "unwritten ranges are not data of the backing file"
        with qimg.open(path, qimg_format) as img:
            assert img.pread(0, IMAGE_SIZE) == bytes(model), "data differs after reopening"
            if size > IMAGE_SIZE:
                assert img.pread(IMAGE_SIZE, size - IMAGE_SIZE) == bytes(size - IMAGE_SIZE)
        with qimg.open(base, qimg_format) as img:
            assert img.pread(0, IMAGE_SIZE) == pattern(IMAGE_SIZE, 11), "the backing file was modified"

    def test_random_operations(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        """A fixed pseudo-random mix of writes, zero writes and reads, reopening now and then."""
        import random

        import qimg

        rng = random.Random(0x51A6)
        path = qimg_new_image()
        size = created_size(path, qimg_format)
        model = bytearray(size)
        img = qimg.open(path, qimg_format, writable=True)
        try:
            for step in range(300):
                op = rng.random()
                off = rng.randrange(size)
                n = min(size - off, rng.choice((1, rng.randrange(1, 4096), rng.randrange(1, 300_000))))
                if op < 0.45:
                    data = pattern(n, step)
                    img.pwrite(off, data)
                    model[off : off + n] = data
                elif op < 0.6:
                    img.write_zeroes(off, n, unmap=rng.random() < 0.5)
                    model[off : off + n] = bytes(n)
                else:
                    assert img.pread(off, n) == bytes(model[off : off + n]), f"step {step}: read {n} at {off}"
                if step % 75 == 74:
                    img.close()
                    img = qimg.open(path, qimg_format, writable=True)
            assert img.pread(0, size) == bytes(model), "whole-image read differs after the random operations"
        finally:
            img.close()

    def test_read_only_refuses_writes(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        import qimg
        from qimg.errors import QimgError

        with qimg.open(qimg_new_image(), qimg_format) as img:
            with pytest.raises(QimgError):
                img.pwrite(0, b"x")

    def test_probe(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        import qimg
        from qimg.plugins import get_registry

        if get_registry().format(qimg_format).probe is None:
            pytest.skip(f"format {qimg_format} registers no probe")
        path = qimg_new_image()
        with qimg.open(path, qimg_format, writable=True) as img:
            img.pwrite(0, pattern(4096, 9))  # data must not confuse the probe
        with qimg.open(path) as img:
            assert img.format == qimg_format

    def test_info(self, qimg_new_image: Callable[..., str], qimg_format: str) -> None:
        try:
            import qimg_cli.commands.info  # noqa: F401
        except ImportError:
            pytest.skip("the qimg CLI's info command is not installed")
        path = qimg_new_image()
        size = created_size(path, qimg_format)
        r = _cli("info", "--output=json", "-f", qimg_format, path)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert data["format"] == qimg_format
        assert data["virtual-size"] == size
        assert data["filename"] == path
        from qimg.plugins import get_registry

        probed = get_registry().format(qimg_format).probe is not None  # else only -f names it
        r = _cli("info", path) if probed else _cli("info", "-f", qimg_format, path)
        assert r.returncode == 0, r.stderr
        assert f"file format: {qimg_format}\n" in r.stdout
        assert f"({size} bytes)" in r.stdout
