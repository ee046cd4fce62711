"""Untrusted mode (docs/security.md): images cannot make qimg open other files.

The CVE patterns are built with qemu-img itself: a backing file naming a host file
(CVE-2015-5163), a ``json:`` backing name, and a qcow2 external data file naming a host file
(CVE-2024-32498). In normal mode qemu-img follows all three, and so does qimg where it
supports the name; in untrusted mode qimg refuses and still reports the names.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import qimg
from qimg import untrusted
from qimg.driver import Format
from qimg.errors import QimgError
from qimg.plugins import get_registry
from qimg.registry import FormatEntry, Registry

SECRET = b"root:x:0:0:top secret\n"
# formats with backing files that qemu-img can create
BACKING_FORMATS = [f for f in ("qcow2", "qed") if f in get_registry().formats]
HAVE_QCOW2 = importlib.util.find_spec("qimg_qcow2") is not None and "qcow2" in get_registry().formats


def have_command(name: str) -> bool:
    return importlib.util.find_spec(f"qimg_cli.commands.{name}") is not None


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "host-secret.txt"
    path.write_bytes(SECRET + bytes((1 << 20) - len(SECRET)))
    return str(path)


@pytest.fixture(autouse=True)
def _trusted_by_default(monkeypatch):
    monkeypatch.delenv("QIMG_UNTRUSTED", raising=False)
    untrusted.enable(False)
    yield
    untrusted.enable(False)


def _backing_cases():
    out = []
    for fmt in BACKING_FORMATS:
        out.append(pytest.param(fmt, "path", id=f"{fmt}-path"))
        out.append(pytest.param(fmt, "json", id=f"{fmt}-json"))
    if not out:
        out.append(pytest.param(None, None, marks=pytest.mark.skip(reason="no installed driver with backing files")))
    return out


def make_backed(qemu_img, tmp_path, fmt: str, kind: str, secret: str) -> tuple[str, str]:
    name = secret if kind == "path" else "json:" + json.dumps(
        {"driver": "raw", "file": {"driver": "file", "filename": secret}}, separators=(",", ":"))
    top = str(tmp_path / f"evil.{fmt}")
    r = qemu_img("create", "-q", "-f", fmt, "-u", "-b", name, "-F", "raw", top, "1M")
    assert r.returncode == 0, r.stderr
    return top, name


@pytest.mark.parametrize("fmt,kind", _backing_cases())
def test_backing_name_pointing_at_host_file(tmp_path, qemu_img, secret, fmt, kind):
    """CVE-2015-5163 (and json: names): followed in normal mode, refused in untrusted mode."""
    top, name = make_backed(qemu_img, tmp_path, fmt, kind, secret)
    # qemu-img follows it: that is the attack
    out = tmp_path / "qemu.raw"
    assert qemu_img("convert", "-O", "raw", top, str(out)).returncode == 0
    assert out.read_bytes().startswith(SECRET)
    # normal mode: qimg does what qemu-img does (json: names only if qimg knows the json: protocol)
    try:
        with qimg.open(top) as img:
            assert img.pread(0, len(SECRET)) == SECRET
    except QimgError:
        assert kind == "json", "qimg must follow a plain backing path like qemu-img"
    # untrusted: the backing file is never opened, whichever way untrusted mode is asked for
    for how in ("argument", "enable", "env"):
        kw = {"untrusted": True} if how == "argument" else {}
        if how == "enable":
            untrusted.enable(True)
        if how == "env":
            os.environ["QIMG_UNTRUSTED"] = "1"
        try:
            with pytest.raises(QimgError) as e:
                qimg.open(top, **kw)
            assert e.value.message == (f"Could not open '{top}': Backing file '{name}' is not opened in untrusted "
                                       "mode (the image names it; inspect it and open it explicitly if it is safe)")
            # ... but the image itself opens without its chain and reports the name
            with qimg.open(top, backing=False, **kw) as img:
                assert img.backing is None
                assert img.driver.backing_filename == name
                assert img.driver.backing_format == "raw"
                assert img.pread(0, len(SECRET)) == bytes(len(SECRET))
        finally:
            untrusted.enable(False)
            os.environ.pop("QIMG_UNTRUSTED", None)
    # an explicit backing given by the user (rebase -b, convert -B) is not a name found in the image
    with qimg.open(top, untrusted=True, backing_override=(secret, "raw")) as img:
        assert img.pread(0, len(SECRET)) == SECRET


@pytest.mark.parametrize("fmt,kind", _backing_cases())
def test_cli_untrusted_info_reports_backing(tmp_path, qemu_img, qimg, secret, fmt, kind):
    """``qimg --untrusted info``: the backing name is reported exactly as qemu-img reports it."""
    if not have_command("info"):
        pytest.skip("qimg info is not implemented yet")
    top, name = make_backed(qemu_img, tmp_path, fmt, kind, secret)
    ref = qemu_img("info", top)
    for args, env in ((["--untrusted", "info", top], None), (["info", top], {"QIMG_UNTRUSTED": "1"})):
        r = qimg(*args, env=env)
        assert (r.returncode, r.stdout) == (0, ref.stdout), r.stderr
        assert f"backing file: {name}\n" in r.stdout


@pytest.mark.parametrize("fmt,kind", _backing_cases())
def test_cli_untrusted_info_backing_chain_refused(tmp_path, qemu_img, qimg, secret, fmt, kind):
    """``info --backing-chain`` walks the chain itself: it must not open the named file either."""
    if not have_command("info"):
        pytest.skip("qimg info is not implemented yet")
    top, name = make_backed(qemu_img, tmp_path, fmt, kind, secret)
    r = qimg("--untrusted", "info", "--backing-chain", top)
    assert r.returncode == 1, r.stdout
    assert r.stdout == ""
    assert r.stderr == (f"qimg: Could not open '{top}': Backing file '{name}' is not opened in untrusted mode "
                        "(the image names it; inspect it and open it explicitly if it is safe)\n")


@pytest.mark.parametrize("fmt,kind", _backing_cases())
def test_cli_untrusted_convert_refused(tmp_path, qemu_img, qimg, secret, fmt, kind):
    """``qimg --untrusted convert`` refuses the image; without --untrusted it copies the secret like qemu-img."""
    if not have_command("convert"):
        pytest.skip("qimg convert is not implemented yet")
    top, name = make_backed(qemu_img, tmp_path, fmt, kind, secret)
    out = tmp_path / "out.raw"
    r = qimg("--untrusted", "convert", "-O", "raw", top, str(out))
    assert r.returncode == 1, r.stderr
    assert r.stderr == (f"qimg: Could not open '{top}': Backing file '{name}' is not opened in untrusted mode "
                        "(the image names it; inspect it and open it explicitly if it is safe)\n")
    assert not out.exists() or SECRET not in out.read_bytes()
    if kind == "path":
        r = qimg("convert", "-O", "raw", top, str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes().startswith(SECRET)


@pytest.mark.skipif(not HAVE_QCOW2, reason="qimg_qcow2 (the qcow2 driver, written in parallel) is not importable yet")
def test_qcow2_data_file_pointing_at_host_file(tmp_path, qemu_img, secret):
    """CVE-2024-32498: a qcow2 external data file naming a host file."""
    top = str(tmp_path / "evil.qcow2")
    scratch = str(tmp_path / "scratch.bin")
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={scratch},data_file_raw=on", top, "1M").returncode == 0
    assert qemu_img("amend", "-o", f"data_file={secret}", top).returncode == 0
    out = tmp_path / "qemu.raw"
    assert qemu_img("convert", "-O", "raw", top, str(out)).returncode == 0
    assert out.read_bytes().startswith(SECRET)  # qemu-img follows it
    with qimg.open(top) as img:  # so does qimg in normal mode
        assert img.pread(0, len(SECRET)) == SECRET
    # untrusted: opening is allowed (info reports the name) but no byte of the data file is read
    try:
        img = qimg.open(top, untrusted=True)
    except QimgError as e:
        assert "untrusted" in e.message
        return
    with img:
        info = img.driver.format_specific_info() or {}
        assert json.dumps(info).find(secret) >= 0, "the data file name must still be reported"
        with pytest.raises(QimgError, match="untrusted"):
            img.pread(0, len(SECRET))


def test_driver_receives_untrusted_option(tmp_path):
    """The seam for drivers: ``options["untrusted"]`` is set exactly in untrusted mode."""
    seen: list[dict] = []

    class Capture(Format):
        format_name = "capture-test"

        def __init__(self, file, *, filename, writable, options):
            super().__init__(file, filename=filename, writable=writable, options=options)
            seen.append(dict(options))

        @property
        def size(self) -> int:
            return 0

    reg = get_registry()
    reg.formats["capture-test"] = FormatEntry("capture-test", "unused:Capture", _cls=Capture)
    try:
        path = tmp_path / "x.img"
        path.write_bytes(b"")
        qimg.open(str(path), "capture-test").close()
        qimg.open(str(path), "capture-test", untrusted=True).close()
        untrusted.enable(True)
        qimg.open(str(path), "capture-test").close()
        untrusted.enable(False)
        qimg.open(str(path), "capture-test", options={"x": "1"}).close()
    finally:
        del reg.formats["capture-test"]
    assert [o.get("untrusted", False) for o in seen] == [False, True, True, False]
    assert seen[3] == {"x": "1"}


def _registry_with(probes: dict[str, int]) -> Registry:
    reg = Registry()
    for name, score in probes.items():
        reg.add_format(name, "unused:X", probe=lambda head, fn, s=score: s)
    return reg


def test_polyglot_probe_refused():
    """Two formats claiming the same bytes above raw's score: refused in untrusted mode only."""
    reg = _registry_with({"raw": 1, "alpha": 100, "beta": 50})
    with pytest.raises(QimgError) as e:
        untrusted.check_probe(reg, b"\0" * 512, "poly.img")
    assert e.value.message == ("Could not open 'poly.img': Image probes as several formats (alpha, beta); "
                               "refusing it in untrusted mode (specify the format with -f)")
    untrusted.check_probe(_registry_with({"raw": 1, "alpha": 100, "beta": 1, "gamma": 0}), b"", "ok.img")
    untrusted.check_probe(_registry_with({"raw": 1}), b"", "raw.img")


def test_polyglot_through_open(tmp_path, monkeypatch):
    reg = get_registry()
    for name in ("poly-a", "poly-b"):
        monkeypatch.setitem(reg.formats, name, FormatEntry(name, "qimg_raw.driver:RawFormat",
                                                           probe=lambda head, fn: 90 if head.startswith(b"POLY") else 0))
    path = tmp_path / "poly.img"
    path.write_bytes(b"POLY" + bytes(1020))
    with qimg.open(str(path)) as img:  # normal mode: the best score wins, as in QEMU
        assert img.format in ("poly-a", "poly-b")
    with pytest.raises(QimgError, match=r"probes as several formats \(poly-a, poly-b\)"):
        qimg.open(str(path), untrusted=True)
    with qimg.open(str(path), "poly-a", untrusted=True) as img:  # an explicit format is fine
        assert img.format == "poly-a"


def test_real_images_probe_cleanly(tmp_path, qemu_img):
    """Every installed format's own images pass the polyglot check (no false alarms)."""
    for fmt in get_registry().format_names():
        path = str(tmp_path / f"x.{fmt}")
        if qemu_img("create", "-q", "-f", fmt, path, "1M").returncode != 0:
            continue
        with open(path, "rb") as f:
            head = f.read(512)
        untrusted.check_probe(get_registry(), head, path)


def _in_subprocess(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=60)


def test_limits_applied_by_cli():
    code = ("import resource, sys\n"
            "from qimg_cli.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(resource.getrlimit(resource.RLIMIT_AS)[0], resource.getrlimit(resource.RLIMIT_CPU)[0])\n")
    r = _in_subprocess(code.replace("sys.argv[1:]", "['--untrusted', '-V']"))
    a_s, cpu = map(int, r.stdout.split()[-2:])
    assert a_s == untrusted.DEFAULT_AS and 0 < cpu <= untrusted.DEFAULT_CPU + 60
    r = _in_subprocess(code.replace("sys.argv[1:]", "['info', '/nonexistent']"), {"QIMG_UNTRUSTED": "1", "QIMG_UNTRUSTED_AS": "1G",
                                                              "QIMG_UNTRUSTED_CPU": "7"})
    a_s, cpu = map(int, r.stdout.split()[-2:])
    assert a_s == 1 << 30 and cpu <= 7 + 60
    r = _in_subprocess(code.replace("sys.argv[1:]", "['-V']"))
    a_s, cpu = map(int, r.stdout.split()[-2:])
    assert a_s == -1 and cpu == -1  # trusted: no limits
    r = _in_subprocess(code.replace("sys.argv[1:]", "['--untrusted', '-V']"), {"QIMG_UNTRUSTED_AS": "lots"})
    assert r.stderr == "qimg: Invalid value for QIMG_UNTRUSTED_AS: 'lots'\n"


def test_memory_limit_holds():
    r = _in_subprocess("from qimg.untrusted import apply_limits\n"
                       "apply_limits(address_space=512 << 20, cpu_seconds=0)\n"
                       "try:\n    b = bytearray(1 << 30)\nexcept MemoryError:\n    print('capped')\n")
    assert r.stdout == "capped\n", r.stderr


def test_cpu_limit_becomes_an_error():
    r = _in_subprocess("from qimg.untrusted import apply_limits\n"
                       "from qimg.errors import QimgError\n"
                       "apply_limits(address_space=0, cpu_seconds=1)\n"
                       "try:\n    while True:\n        pass\n"
                       "except QimgError as e:\n    print(e)\n")
    assert r.stdout == "CPU time limit of untrusted mode exceeded\n", r.stderr


VMDK_FLAT = """# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 2048 FLAT "{extent}" 0

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "2"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
"""


@pytest.mark.skipif("vmdk" not in get_registry().formats, reason="no vmdk driver installed")
def test_vmdk_descriptor_extent_pointing_at_host_file(tmp_path, qemu_img, secret):
    """A VMDK descriptor whose FLAT extent is a host file (the VMDK side of CVE-2024-32498)."""
    desc = tmp_path / "evil.vmdk"
    desc.write_text(VMDK_FLAT.format(extent=secret))
    out = tmp_path / "qemu.raw"
    assert qemu_img("convert", "-O", "raw", str(desc), str(out)).returncode == 0
    assert out.read_bytes().startswith(SECRET)  # qemu-img follows it
    with qimg.open(str(desc)) as img:  # so does qimg in normal mode
        assert img.format == "vmdk"
        assert img.pread(0, len(SECRET)) == SECRET
    try:
        img = qimg.open(str(desc), untrusted=True)
    except QimgError as e:
        assert e.message == f"Could not open '{desc}': Extent '{secret}' is not opened in untrusted mode"
        return
    with img:  # a driver may open the descriptor and refuse only the data
        assert secret in json.dumps(img.driver.format_specific_info())
        with pytest.raises(QimgError, match="untrusted"):
            img.pread(0, len(SECRET))


@pytest.mark.skipif("vmdk" not in get_registry().formats or not have_command("info"), reason="needs vmdk and info")
def test_cli_untrusted_vmdk_info_reports_extent(tmp_path, qemu_img, qimg, secret):
    desc = tmp_path / "evil.vmdk"
    desc.write_text(VMDK_FLAT.format(extent=secret))
    r = qimg("--untrusted", "info", "--output=json", str(desc))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format-specific"]["data"]["extents"][0]["filename"] == secret
    r = qimg("--untrusted", "convert", "-O", "raw", str(desc), str(tmp_path / "o.raw"))
    assert r.returncode == 1 and "untrusted" in r.stderr
