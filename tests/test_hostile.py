"""Hostile images (tests/hostile.py) through the qimg CLI, judged against qemu-img.

For every installed format, every case and every command (info, check, map, convert -O raw,
compare), run in a forked child under a memory rlimit and a timeout:

* no Python traceback and no ``internal error`` (an exception other than QimgError escaped);
* a failure prints ``qimg: ...`` (one line, or a few qemu-img-like lines);
* qimg succeeds only where qemu-img succeeds (it may refuse more: reported, not failed);
  ``check`` may not call clean an image qemu-img calls corrupt;
* bounded time and memory (the timeout and rlimit; hitting either fails the case).

New drivers are covered as soon as they are registered (the generic cases).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from qimg.plugins import get_registry

sys.path.insert(0, os.path.dirname(__file__))
import hostile  # noqa: E402
from cli_support import CRASHER  # noqa: E402

COMMANDS = ["info", "check", "map", "convert", "compare"]
FORMATS = get_registry().format_names()
_corpus: dict[str, list[hostile.Hostile]] = {}


def have_command(name: str) -> bool:
    return importlib.util.find_spec(f"qimg_cli.commands.{name}") is not None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    def get(fmt: str) -> list[hostile.Hostile]:
        if fmt not in _corpus:
            _corpus[fmt] = hostile.build(fmt, tmp_path_factory.mktemp(f"hostile-{fmt}"))
        return _corpus[fmt]

    return get


QEMU_TIMEOUT = 10.0


def _qemu(case: hostile.Hostile, args: list[str]) -> tuple[int, bool, str]:
    """qemu-img's exit code on the same invocation, whether it hung, and its stderr."""
    if case.qemu_hangs and args[0] != "info":
        return -9, True, ""
    try:
        p = subprocess.run([hostile.QEMU_IMG, *args], capture_output=True, timeout=QEMU_TIMEOUT)
        return p.returncode, False, p.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        return -9, True, ""


def judge(case: hostile.Hostile, res: hostile.Result, qemu_rc: int, qemu_timeout: bool,
          qemu_stderr: str = "") -> list[str]:
    """Problems with one qimg run (empty: fine)."""
    cmd = f"qimg {' '.join(res.args)}  [{case.name}: {case.note}]"
    problems = []
    if res.timed_out:
        problems.append(f"{cmd}: timed out after {res.elapsed:.1f}s (qemu-img rc={qemu_rc}, hangs={qemu_timeout})")
        return problems
    if "Traceback" in res.stderr or "internal error" in res.stderr:
        problems.append(f"{cmd}: uncaught exception:\n{res.stderr.strip()[-1500:]}")
        return problems
    if res.rc < 0 or res.rc == 99:
        problems.append(f"{cmd}: died (rc={res.rc}) {res.stderr.strip()[-500:]}")
        return problems
    lines = res.stderr.splitlines()
    qlines = qemu_stderr.splitlines()
    qemu_says = any(ln.startswith("qemu-img: ") for ln in qlines)
    if res.rc == 1 and (qemu_says or qemu_rc == 0) and not any(ln.startswith("qimg: ") for ln in lines):
        problems.append(f"{cmd}: exit 1 without a 'qimg: ...' message: {res.stderr!r}")
    # one error line, or as many lines as qemu-img prints (check lists what it finds on stderr)
    errors = [ln for ln in lines if ln.startswith("qimg: ") and "warning" not in ln.lower()]
    qerrors = [ln for ln in qlines if ln.startswith("qemu-img: ") and "warning" not in ln.lower()]
    if len(errors) > max(1, len(qerrors)) or len(lines) > max(6, len(qlines) + 3):
        problems.append(f"{cmd}: stderr is not one error line (qemu-img: {len(qlines)} lines): {res.stderr[-600:]!r}")
    if res.rc == 0 and qemu_rc != 0 and not qemu_timeout:
        problems.append(f"{cmd}: succeeded where qemu-img fails (rc={qemu_rc}); stdout {res.stdout[:300]!r}")
    return problems


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_images(corpus, tmp_path, fmt, command):
    if not have_command(command):
        pytest.skip(f"qimg {command} is not implemented yet")
    cases = corpus(fmt)
    assert cases, f"no hostile cases for {fmt}"
    jobs, owners = [], []
    for case in cases:
        for args in hostile.commands_for(case, tmp_path):
            if args[0] == command:
                jobs.append(args)
                owners.append(case)
    with ThreadPoolExecutor(4) as pool:
        qimg_results = pool.submit(hostile.run_batch, jobs)
        qemu_results = list(pool.map(_qemu, owners, jobs))
        results = qimg_results.result()
    problems: list[str] = []
    stricter: list[str] = []
    for case, res, (qrc, qto, qerr) in zip(owners, results, qemu_results, strict=True):
        problems += judge(case, res, qrc, qto, qerr)
        if qrc == 0 and res.rc != 0:
            stricter.append(f"{case.name}: qimg {' '.join(res.args[:-1])}: {res.stderr.strip()[:200]}")
            if case.name.endswith("-valid"):
                problems.append(f"{case.name}: the valid control image fails: {res.stderr.strip()}")
    if stricter:
        print(f"\n{len(stricter)} cases qimg refuses but qemu-img accepts:\n  " + "\n  ".join(stricter))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


def test_runner_enforces_limits(tmp_path):
    """The sandbox itself: the memory cap and the timeout apply to the forked child."""
    img = tmp_path / "x.raw"
    img.write_bytes(bytes(8 << 20))
    job = ["convert", "-f", "raw", "-O", "raw", str(img), str(tmp_path / "y.raw")]
    ok = hostile.run_batch([job])[0]
    starved = hostile.run_batch([job], mem=32 << 20, timeout=3)[0]
    slow = hostile.run_batch([job], timeout=0.0)[0]
    assert (ok.rc, ok.timed_out, ok.stderr) == (0, False, "")
    assert starved.rc != 0  # killed or MemoryError: either way the cap held
    assert slow.timed_out and slow.rc != 0


def test_hostile_generator_covers_every_format(tmp_path):
    """Every registered format gets the generic cases, including a zero-length file."""
    for fmt in FORMATS:
        cases = hostile.generic_cases(fmt, tmp_path)
        names = [c.name for c in cases]
        assert f"{fmt}-empty" in names and f"{fmt}-random-4k" in names
        assert len(names) == len(set(names))
        for c in cases:
            assert Path(c.path).exists()
    assert Path(tmp_path / f"{FORMATS[0]}-empty.img").stat().st_size == 0


_BOOM = r"""
import sys
from qimg.driver import Format
from qimg.plugins import get_registry
from qimg.registry import FormatEntry

class Boom(Format):
    format_name = "boom"

    def __init__(self, file, *, filename, writable, options):
        super().__init__(file, filename=filename, writable=writable, options=options)
        raise KeyError("plugin bug")

get_registry().formats["boom"] = FormatEntry("boom", "unused:Boom", _cls=Boom)
from qimg_cli.main import main
main(sys.argv[1:])
"""


@pytest.mark.skipif(not have_command("info"), reason="qimg info is not implemented yet")
def test_internal_error_is_one_line(tmp_path):
    """A plugin raising something other than QimgError: one ``qimg:`` line, exit 1; QIMG_DEBUG=1
    shows the traceback instead."""
    img = tmp_path / "x.img"
    img.write_bytes(bytes(512))
    env = {k: v for k, v in os.environ.items() if k != "QIMG_DEBUG"}
    p = subprocess.run([sys.executable, "-c", _BOOM, "info", "-f", "boom", str(img)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr == "qimg: internal error: KeyError: 'plugin bug' (set QIMG_DEBUG=1 for a traceback)\n"
    p = subprocess.run([sys.executable, "-c", _BOOM, "info", "-f", "boom", str(img)], capture_output=True,
                       text=True, env={**env, "QIMG_DEBUG": "1"}, timeout=60)
    assert p.returncode == 1
    assert p.stderr.startswith("Traceback (most recent call last):")
    assert 'File "<string>", line 12, in __init__\n' in p.stderr  # the plugin's frame
    assert p.stderr.rstrip().endswith("KeyError: 'plugin bug'")


def _qcow2_writable() -> bool:
    try:
        return "qcow2" in FORMATS and have_command("convert")
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _qcow2_writable(), reason="needs qimg convert and the qcow2 driver")
@pytest.mark.parametrize("crash_after", [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18])
def test_crash_consistency_of_convert(tmp_path, qemu_img, crash_after):
    """``qimg convert -O qcow2`` killed (SIGKILL) just before its n-th write to the target: what is
    on disk must never be corrupt for qemu-img check (leaked clusters are allowed, as after a QEMU
    crash). The kill points are exact: the writes are counted in the process itself."""
    from conftest import pattern_bytes

    src = tmp_path / "src.raw"
    src.write_bytes(pattern_bytes(12 << 20))
    dst = tmp_path / "dst.qcow2"
    env = {**os.environ, "QIMG_CRASH_AFTER": str(crash_after), "QIMG_CRASH_FILES": str(dst)}
    p = subprocess.run([sys.executable, "-c", CRASHER, "convert", "-O", "qcow2", str(src), str(dst)],
                       capture_output=True, text=True, env=env, timeout=120)
    if p.returncode == 0:
        pytest.skip(f"convert finished in fewer than {crash_after} writes")
    assert p.returncode == -9, p.stderr
    with open(dst, "rb") as f:
        if f.read(4) != b"QFI\xfb":
            return  # killed before the header: nothing anyone would take for a qcow2 image
    r = qemu_img("check", "-f", "qcow2", str(dst))
    assert r.returncode in (0, 3), (f"killed before write {crash_after + 1}: qemu-img check says\n"
                                    f"{r.stdout}{r.stderr}")


@pytest.mark.skipif(not have_command("convert"), reason="qimg convert is not implemented yet")
def test_failed_convert_keeps_its_target(tmp_path, qemu_img, qimg):
    """A convert that fails after creating the target keeps it, as qemu-img does; so does a
    target it did not create (-n)."""
    if "qcow2" not in FORMATS:
        pytest.skip("needs the qcow2 driver")
    (tmp_path / "corpus").mkdir()
    cases = hostile.qcow2_cases(tmp_path / "corpus")
    bad = next(c for c in cases if c.name == "qcow2-l2-compressed-garbage")
    assert qemu_img("convert", "-O", "raw", bad.path, str(tmp_path / "q.raw")).returncode == 1
    out = tmp_path / "out.raw"
    r = qimg("convert", "-f", "qcow2", "-O", "raw", bad.path, str(out))
    assert r.returncode == 1 and r.stderr.startswith("qimg: ")
    assert out.exists() == (tmp_path / "q.raw").exists()
    keep = tmp_path / "keep.raw"
    keep.write_bytes(b"mine" * 1024 * 1024)
    r = qimg("convert", "-n", "-f", "qcow2", "-O", "raw", bad.path, str(keep))
    assert r.returncode == 1
    assert keep.exists()


def test_limits_helpers(tmp_path):
    """qimg.limits: the validation helpers drivers share refuse what they should, accept the rest."""
    from qimg import limits
    from qimg.errors import CorruptImage
    from qimg.protocol import FileProtocol

    assert limits.check_range(9, 9, 21, "cluster bits") == 9
    with pytest.raises(CorruptImage, match="Invalid cluster bits: 22"):
        limits.check_range(22, 9, 21, "cluster bits")
    with pytest.raises(CorruptImage, match="not aligned"):
        limits.check_aligned(0x10200, 0x10000, "L2 table offset")
    limits.check_extent(0, 512, 512, "header")
    for off, n in ((511, 2), (-1, 1), (2**63 - 1, 2), (0, -5)):
        with pytest.raises(CorruptImage):
            limits.check_extent(off, n, 512, "table")
    assert limits.check_table(65536, 128, 8, 1 << 20, "L1 table", alignment=512) == 1024
    with pytest.raises(CorruptImage, match="too large"):
        limits.check_table(0, 0xFFFFFFFF, 8, 1 << 40, "L1 table")
    with pytest.raises(CorruptImage, match="past the end"):
        limits.check_table(1 << 20, 16, 8, 1 << 20, "refcount table")
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    f = FileProtocol(str(p))
    try:
        assert limits.read_exact(f, 90, 10, "footer") == b"x" * 10
        with pytest.raises(CorruptImage, match="ends at 0x64"):
            limits.read_exact(f, 95, 10, "footer")
        with pytest.raises(CorruptImage, match="too large"):
            limits.read_exact(f, 0, 1 << 40, "table")
        # the file protocol itself: hostile offsets/lengths are errors, never huge allocations
        with pytest.raises(OSError):
            f.pread(2**64, 10)
        assert f.pread(50, 1 << 40) == b"x" * 50
    finally:
        f.close()
    assert limits.check_name(b"base.qcow2", "backing file") == "base.qcow2"
    for bad in (b"a\0b", b"\xff\xfe", b"a" * 5000):
        with pytest.raises(CorruptImage):
            limits.check_name(bad, "backing file")
    limits.check_no_overlap([(0, 512, "header"), (512, 512, "L1 table")])
    with pytest.raises(CorruptImage, match="L1 table at 0x100 overlaps refcount table at 0x180"):
        limits.check_no_overlap([(0x100, 0x100, "L1 table"), (0x180, 8, "refcount table")])
