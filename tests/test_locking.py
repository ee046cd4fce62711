"""Image locking: qimg and QEMU see each other's OFD permission locks (qimg.locking).

The reference is qemu-img 7.2 itself: for every lock byte another process may hold, the same
operation done by qemu-img and by qimg must both succeed or both fail with the same message.
Holders are another open file description in this process (OFD locks conflict between
descriptions, not processes), qemu-nbd, or qimg in a subprocess.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import struct
import subprocess
import sys
import time

import pytest
import qimg
from qimg import locking
from qimg.plugins import get_registry

FLOCK = "@hhqqi0q"
ALL_BYTES = [locking.PERM_BASE + i for i in range(4)] + [locking.SHARED_BASE + i for i in range(4)]
# formats qemu-img creates with defaults and that have metadata (their file is never shared for writes)
META_FORMATS = [f for f in ("qcow2", "qed", "vmdk", "vdi", "vpc", "vhdx", "qcow", "parallels")
                if f in get_registry().formats]
SIZE = "1M"
# the CLI and cross-process tests use raw and one metadata format (the matrix covers them all)
SAMPLE_FORMATS = ["raw"] + (["qcow2"] if "qcow2" in META_FORMATS else META_FORMATS[:1])


@contextlib.contextmanager
def held(path: str, *lock_bytes: int):
    """Hold shared locks on ``lock_bytes`` of ``path`` through a separate open file description."""
    fd = os.open(path, os.O_RDWR)
    try:
        for b in lock_bytes:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(FLOCK, fcntl.F_RDLCK, os.SEEK_SET, b, 1, 0))
        yield
    finally:
        os.close(fd)


def lock_bytes_of(path: str) -> set[int]:
    """Lock bytes another description holds on ``path`` (tested from a fresh descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        perm, unshared = locking.holders(fd)
    finally:
        os.close(fd)
    return ({locking.PERM_BASE + i for i in range(4) if perm & (1 << i)}
            | {locking.SHARED_BASE + i for i in range(4) if unshared & (1 << i)})


def qimg_open_error(path: str, fmt: str, **kw) -> str | None:
    try:
        img = qimg.open(path, fmt, **kw)
    except qimg.QimgError as e:
        return e.message
    img.close()
    return None


def qemu_error(r) -> str | None:
    if r.returncode == 0:
        return None
    return r.stderr.strip().removeprefix("qemu-img: ")


# (qemu-img arguments, qimg.open keywords) for each way commands open an image
def _modes(fmt: str, img: str, other: str) -> dict[str, tuple[list[str], dict]]:
    modes = {
        "info": (["info", "-f", fmt, img], {"no_io": True, "backing": False}),
        "read": (["map", "--output=json", "-f", fmt, img], {}),
        "force-share": (["map", "--output=json", "-U", "-f", fmt, img], {"force_share": True}),
    }
    if fmt == "raw":
        modes["write"] = (["convert", "-n", "-f", "raw", "-O", "raw", other, img], {"writable": True})
        modes["resize"] = (["resize", "-f", "raw", img, SIZE], {"writable": True, "resize": True})
        modes["convert-source"] = (["convert", "-f", "raw", "-O", "raw", img, other + ".out"], {"no_share": True})
    else:
        modes["write"] = (["bench", "-w", "-c", "1", "-s", "512", "-f", fmt, img], {"writable": True})
    return modes


CASES = [(f, m) for f in ["raw", *META_FORMATS]
         for m in (["info", "read", "force-share", "write"] + (["resize", "convert-source"] if f == "raw" else []))]


@pytest.mark.parametrize("fmt,mode", CASES)
def test_lock_matrix_matches_qemu_img(tmp_path, qemu_img, fmt, mode):
    """Every lock byte another process may hold: qimg refuses exactly when qemu-img does, same text."""
    img = str(tmp_path / f"img.{fmt}")
    other = str(tmp_path / "other.raw")
    assert qemu_img("create", "-q", "-f", fmt, img, SIZE).returncode == 0
    assert qemu_img("create", "-q", "-f", "raw", other, SIZE).returncode == 0
    qemu_args, kw = _modes(fmt, img, other)[mode]
    refused = 0
    for b in ALL_BYTES:
        with held(img, b):
            expect = qemu_error(qemu_img(*qemu_args))
            got = qimg_open_error(img, fmt, **kw)
        assert got == expect, f"lock byte {b} held: qemu-img says {expect!r}, qimg {got!r}"
        refused += expect is not None
    if mode != "info" or fmt != "raw":
        assert refused, "the matrix must contain refusals"  # qemu-img's info on raw takes no locks


def test_qimg_locks_seen_by_qemu_img(tmp_path, qemu_img):
    """While qimg holds an image open for writing, qemu-img's readers that refuse writers fail."""
    img = str(tmp_path / "w.raw")
    qemu_img("create", "-q", "-f", "raw", img, SIZE)
    script = ("import sys, qimg\n"
              "img = qimg.open(sys.argv[1], sys.argv[2], writable=True)\n"
              "print('ready', flush=True)\n"
              "sys.stdin.read()\n")
    fmts = [("raw", img)]
    for fmt in SAMPLE_FORMATS[1:]:
        p = str(tmp_path / f"w.{fmt}")
        qemu_img("create", "-q", "-f", fmt, p, SIZE)
        fmts.append((fmt, p))
    for fmt, path in fmts:
        holder = subprocess.Popen([sys.executable, "-c", script, path, fmt], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert holder.stdout.readline() == b"ready\n", holder.stderr.read()
            if fmt == "raw":
                # qemu-img convert's source refuses writers, map shares with them
                r = qemu_img("convert", "-f", "raw", "-O", "raw", path, str(tmp_path / "o.raw"))
                assert r.returncode == 1
                assert r.stderr == (f"qemu-img: Could not open '{path}': Failed to get shared \"write\" lock\n"
                                    f"Is another process using the image [{path}]?\n")
                assert qemu_img("map", "-f", "raw", path).returncode == 0
            else:
                r = qemu_img("info", "-f", fmt, path)
                assert r.returncode == 1
                assert r.stderr == (f"qemu-img: Could not open '{path}': Failed to get shared \"write\" lock\n"
                                    f"Is another process using the image [{path}]?\n")
                assert qemu_img("info", "-U", "-f", fmt, path).returncode == 0
            # a second writer: raw writers share with each other, metadata formats refuse
            r = qemu_img("bench", "-w", "-c", "1", "-s", "512", "-f", fmt, path)
            if fmt == "raw":
                assert r.returncode == 0, r.stderr
            else:
                assert r.returncode == 1 and 'Failed to get "write" lock' in r.stderr
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        # the locks die with the process
        assert lock_bytes_of(path) == set()


def test_qimg_advertises_what_qemu_img_does(tmp_path, qemu_img):
    """The bytes qimg holds are those qemu-img holds for the same access (read from /proc-free GETLK)."""
    for fmt in ["raw", *META_FORMATS]:
        path = str(tmp_path / f"a.{fmt}")
        qemu_img("create", "-q", "-f", fmt, path, SIZE)
        with qimg.open(path, fmt) as _img:
            ro = lock_bytes_of(path)
        with qimg.open(path, fmt, writable=True) as _img:
            rw = lock_bytes_of(path)
        with qimg.open(path, fmt, force_share=True) as _img:
            fs = lock_bytes_of(path)
        assert lock_bytes_of(path) == set()
        if fmt == "raw":
            assert (ro, rw, fs) == ({100}, {100, 101}, {100})
        else:
            assert (ro, rw, fs) == ({100, 201, 203}, {100, 101, 103, 201, 203}, {100})


@contextlib.contextmanager
def qemu_nbd(path: str, fmt: str, tmp_path, read_only: bool = False):
    from conftest import _need

    exe = _need("qemu-nbd")  # fails instead of skipping when CI is set
    sock = str(tmp_path / f"nbd-{os.getpid()}-{time.monotonic_ns()}.sock")
    args = [exe, "-f", fmt, f"--socket={sock}", "--persistent", *(["-r"] if read_only else []), path]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not lock_bytes_of(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"qemu-nbd did not start: {proc.stderr.read() if proc.poll() is not None else ''}")
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_qemu_nbd_holder(tmp_path, qemu_img):
    """A real QEMU user (qemu-nbd serving an image read-write) against qimg's opens."""
    fmt = META_FORMATS[0] if META_FORMATS else "raw"
    path = str(tmp_path / f"served.{fmt}")
    qemu_img("create", "-q", "-f", fmt, path, SIZE)
    with qemu_nbd(path, fmt, tmp_path):
        for kw in ({}, {"writable": True}, {"force_share": True}, {"no_io": True}):
            expect = qemu_error(qemu_img(*({"writable": ["resize", "-f", fmt, path, SIZE]}.get(
                next(iter(kw), ""), ["map", *(["-U"] if kw.get("force_share") else []), "-f", fmt, path]))))
            if kw.get("no_io"):
                expect = qemu_error(qemu_img("info", "-f", fmt, path))
            assert qimg_open_error(path, fmt, **kw) == expect, kw
        if fmt != "raw":
            assert qimg_open_error(path, fmt) is not None  # qemu-nbd writes: a reader refuses it
        assert qimg_open_error(path, fmt, force_share=True) is None


def test_create_does_not_truncate_an_image_in_use(tmp_path, qemu_img):
    """qemu-img create on a served image fails before truncating it; qimg too."""
    path = str(tmp_path / "busy.raw")
    with open(path, "wb") as f:
        f.write(b"precious" * 1000)
    with qemu_nbd(path, "raw", tmp_path):
        r = qemu_img("create", "-f", "raw", path, SIZE)
        assert r.returncode == 1
        expect = r.stderr.splitlines()[-2].removeprefix(f"qemu-img: {path}: ") + "\n" + r.stderr.splitlines()[-1]
        with pytest.raises(qimg.QimgError) as e:
            qimg.create(path, "raw", 1 << 20)
        assert e.value.message.endswith(expect)
        with open(path, "rb") as f:
            assert f.read(8) == b"precious"
    qimg.create(path, "raw", 1 << 20)  # free again
    assert os.path.getsize(path) == 1 << 20


def test_backing_file_locks(tmp_path, qemu_img):
    """A backing file is opened refusing writers; a held backing file fails the open as in qemu-img."""
    if not META_FORMATS or "qcow2" not in META_FORMATS:
        pytest.skip("needs a format with backing files: qimg_qcow2 is not installed yet")
    base = str(tmp_path / "base.qcow2")
    top = str(tmp_path / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, SIZE)
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    for b in (101, 103, 200):
        with held(base, b):
            expect = qemu_error(qemu_img("convert", "-O", "raw", top, str(tmp_path / "o.raw")))
            assert qimg_open_error(top, "qcow2") == expect
            assert qimg_open_error(top, "qcow2", force_share=True) is None if b != 200 else True
    with held(base, 101):
        # info --backing-chain opens each image of the chain as a top image
        expect = qemu_error(qemu_img("info", "--backing-chain", top))
        assert qimg_open_error(base, "qcow2", no_io=True) == expect
        assert qimg_open_error(top, "qcow2", no_io=True, backing=False) is None


def test_locking_off_and_relock(tmp_path, qemu_img):
    path = str(tmp_path / "x.raw")
    qemu_img("create", "-q", "-f", "raw", path, SIZE)
    with held(path, 201):  # someone refuses to share write
        assert qimg_open_error(path, "raw", writable=True) is not None
        # --image-opts file.locking=off, as QEMU
        with qimg.open(path, "raw", writable=True, options={"file.locking": "off"}):
            pass
    with pytest.raises(qimg.QimgError, match="invalid parameter value: maybe"):  # QEMU's OnOffAuto
        qimg.open(path, "raw", options={"file.locking": "maybe"})
    with qimg.open(path, "raw") as img:
        assert lock_bytes_of(path) == {100}
        locking.lock_image(img, *locking.wanted("raw", writable=True))
        assert lock_bytes_of(path) == {100, 101}
        with held(path, 203):
            with pytest.raises(locking.LockError) as e:
                locking.lock_image(img, *locking.wanted("raw", writable=True, resize=True))
            assert e.value.message == f'Failed to get "resize" lock\nIs another process using the image [{path}]?'
        assert lock_bytes_of(path) == {100, 101}  # unchanged after the refusal
    assert lock_bytes_of(path) == set()


def _have_command(name: str) -> bool:
    return importlib.util.find_spec(f"qimg_cli.commands.{name}") is not None


def run_both(qemu_img, qimg_runner, *args: str):
    return qemu_img(*args), qimg_runner(*args)


@pytest.mark.parametrize("fmt", SAMPLE_FORMATS)
def test_cli_against_a_held_image(tmp_path, qemu_img, qimg, fmt):
    """The commands: info fails without -U and works with it; write commands fail; same text and code."""
    cmds = [c for c in ("info", "map", "check", "resize", "compare", "convert") if _have_command(c)]
    if not cmds:
        pytest.skip("no qimg subcommand is implemented yet")
    path = str(tmp_path / f"h.{fmt}")
    qemu_img("create", "-q", "-f", fmt, path, SIZE)
    out = str(tmp_path / "out.raw")
    argsets = {
        "info": [["info", "-f", fmt, path], ["info", "-U", "-f", fmt, path]],
        "map": [["map", "-f", fmt, path], ["map", "-U", "-f", fmt, path]],
        "check": [["check", "-f", fmt, path], ["check", "-U", "-f", fmt, path]],
        "resize": [["resize", "-f", fmt, path, SIZE]],
        "compare": [["compare", "-f", fmt, "-F", fmt, path, path], ["compare", "-U", "-f", fmt, "-F", fmt, path, path]],
        "convert": [["convert", "-f", fmt, "-O", "raw", path, out], ["convert", "-U", "-f", fmt, "-O", "raw", path, out]],
    }
    # hold it the way a running VM does: writing, refusing writers and resizers
    with held(path, 100, 101, 103, 201, 203):
        for c in cmds:
            for args in argsets[c]:
                a, b = run_both(qemu_img, qimg, *args)
                assert (b.returncode, b.stderr.replace("qimg:", "qemu-img:")) == (a.returncode, a.stderr), args


def test_refused_open_leaves_no_locks(tmp_path):
    """A refused open takes nothing with it: the holder alone stays visible."""
    path = str(tmp_path / "r.raw")
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    with held(path, 201):
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(locking.LockError):
                locking.apply(fd, locking.CONSISTENT_READ | locking.WRITE, locking.ALL, path)
        finally:
            os.close(fd)
        assert lock_bytes_of(path) == {201}
        with pytest.raises(qimg.QimgError):
            qimg.open(path, "raw", writable=True)
        assert lock_bytes_of(path) == {201}
    assert lock_bytes_of(path) == set()


@pytest.mark.skipif(not _have_command("resize"), reason="qimg resize is not implemented yet")
def test_cli_resize_raw_needs_the_resize_permission(tmp_path, qemu_img, qimg):
    """qemu-nbd serving a raw image refuses resizes only: resize must fail, a write must not."""
    path = str(tmp_path / "served.raw")
    qemu_img("create", "-q", "-f", "raw", path, SIZE)
    with held(path, 203):
        a = qemu_img("resize", "-f", "raw", path, "2M")
        b = qimg("resize", "-f", "raw", path, "2M")
        assert a.returncode == 1 and 'Failed to get "resize" lock' in a.stderr
        assert (b.returncode, b.stderr.replace("qimg:", "qemu-img:")) == (a.returncode, a.stderr)
        assert os.path.getsize(path) == 1 << 20


@pytest.mark.skipif(not _have_command("create"), reason="qimg create is not implemented yet")
@pytest.mark.parametrize("fmt", SAMPLE_FORMATS)
def test_cli_create_over_an_image_in_use(tmp_path, qemu_img, qimg, fmt):
    """``create`` over a file a VM uses: same text and code as qemu-img, file untouched."""
    path = str(tmp_path / "busy.img")
    with open(path, "wb") as f:
        f.write(b"precious" * 4096)
    with held(path, 100, 101, 203):
        a = qemu_img("create", "-f", fmt, path, SIZE)
        b = qimg("create", "-f", fmt, path, SIZE)
    assert a.returncode == 1 and 'Failed to get "resize" lock' in a.stderr
    assert (b.returncode, b.stdout, b.stderr.replace("qimg:", "qemu-img:")) == (a.returncode, a.stdout, a.stderr)
    with open(path, "rb") as f:
        assert f.read(8) == b"precious"
