"""The oracle (qemu-img 7.2 on PATH or 10.0 from scripts/oracle-10) and QEMU's test sources:
Debian's qemu source package of the oracle's version, fetched with apt-get through a private
source list and unpacked (tests/qemu-iotests and python/ only) into the cache folder."""
from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
FORMATS = ["qcow2", "qcow", "qed", "vdi", "vpc", "vhdx", "vmdk", "raw", "luks"]
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


class Fatal(Exception):
    """The tests cannot be run: missing tool, no network, no Debian source."""


def cache_dir() -> Path:
    d = os.environ.get("QIMG_IOTESTS_CACHE")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base, "qimg", "iotests")


def say(msg: str) -> None:
    print(f"scripts/iotests: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# the oracle: where its qemu-img, qemu-io, qemu-nbd are, and its Debian source version


@dataclass
class Oracle:
    series: str  # "7.2" or "10.0"
    bindir: Path
    env: dict[str, str]
    source_version: str  # Debian version of the qemu source package
    img_version: str  # first line of qemu-img --version

    def tool(self, name: str) -> Path | None:
        p = self.bindir / name
        return p if os.access(p, os.X_OK) else None


def _qemu_img_version(exe: Path, env: dict[str, str]) -> str:
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=60).stdout
    except OSError as e:
        raise Fatal(f"cannot run {exe}: {e}") from None
    return out.splitlines()[0] if out else ""


def find_oracle(series: str) -> Oracle:
    if series == "7.2":
        exe = shutil.which("qemu-img")
        if exe is None:
            raise Fatal("qemu-img 7.2 (Debian package qemu-utils) is not installed")
        exe_p = Path(exe).resolve()
        ver = _qemu_img_version(exe_p, {})
        if not ver.startswith("qemu-img version 7.2."):
            raise Fatal(f"the qemu-img on PATH is not 7.2: {ver!r}")
        try:
            src = subprocess.run(["dpkg-query", "-W", "-f", "${source:Package} ${source:Version}",
                                  "qemu-utils"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            raise Fatal("qemu-img 7.2 is not Debian's qemu-utils (dpkg-query knows no qemu-utils): "
                        "the test sources come from the matching Debian source package") from None
        pkg, _, version = src.partition(" ")
        if pkg != "qemu" or not version:
            raise Fatal(f"qemu-utils comes from source package {pkg!r}, not qemu")
        return Oracle("7.2", exe_p.parent, {}, version, ver)
    if series == "10.0":
        try:
            d = subprocess.run([str(ROOT / "scripts" / "oracle-10")], capture_output=True, text=True,
                               check=True).stdout.strip()
        except subprocess.CalledProcessError as e:
            raise Fatal(f"qemu-img 10.0 is missing (scripts/oracle-10: {e.stderr.strip()})") from None
        base = Path(d)
        env = {"QEMU_MODULE_DIR": str(base / "usr/lib/x86_64-linux-gnu/qemu")}
        changelog = base / "usr/share/doc/qemu-utils/changelog.Debian.gz"
        try:
            with gzip.open(changelog, "rt") as f:
                first = f.readline()
        except OSError as e:
            raise Fatal(f"cannot read the 10.0 oracle's Debian changelog: {e}") from None
        m = re.match(r"qemu \(([^)]+)\)", first)
        if not m:
            raise Fatal(f"no source version in {changelog}")
        bindir = base / "usr" / "bin"
        return Oracle("10.0", bindir, env, m.group(1), _qemu_img_version(bindir / "qemu-img", env))
    raise Fatal(f"unknown qemu version {series!r} (7.2 or 10.0)")


# ---------------------------------------------------------------------------------------------
# the test sources: Debian's qemu source package, only tests/qemu-iotests and python/

KEEP = ("tests/qemu-iotests/", "python/")


def _deb822(text: str) -> list[dict[str, str]]:
    stanzas, cur, key = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, None
        elif line.startswith("#"):
            continue
        elif line[0] in " \t" and key:
            cur[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            key = key.strip()
            cur[key] = value.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def source_list() -> str:
    """deb-src stanzas for the mirrors of the machine's own Debian sources, and each release's
    backports suite on the same mirror (QEMU 10.0 comes from bookworm-backports)."""
    if not DEBIAN_SOURCES.is_file():
        raise Fatal(f"no {DEBIAN_SOURCES} to take the Debian mirror from")
    out = []
    for st in _deb822(DEBIAN_SOURCES.read_text()):
        if "deb" not in st.get("Types", "").split() or not st.get("URIs"):
            continue
        suites = st.get("Suites", "").split()
        for s in list(suites):
            if "-" not in s and f"{s}-backports" not in suites and "security" not in st["URIs"]:
                suites.append(f"{s}-backports")
        lines = ["Types: deb-src", f"URIs: {st['URIs']}", f"Suites: {' '.join(suites)}",
                 f"Components: {st.get('Components', 'main')}"]
        if st.get("Signed-By"):
            lines.append(f"Signed-By: {st['Signed-By']}")
        out.append("\n".join(lines))
    if not out:
        raise Fatal(f"no deb stanza with URIs in {DEBIAN_SOURCES}")
    return "\n\n".join(out) + "\n"


def _apt(args: list[str], aptdir: Path, cwd: Path | None = None) -> None:
    opts = [f"-o=Dir::Etc::sourcelist={aptdir / 'qimg-src.sources'}", "-o=Dir::Etc::sourceparts=-",
            f"-o=Dir::State::Lists={aptdir / 'lists'}", f"-o=Dir::Cache={aptdir / 'cache'}",
            "-o=Dir::State::status=/dev/null", "-o=APT::Sandbox::User=" + _apt_user()]
    if shutil.which("apt-get") is None:
        raise Fatal("fetching QEMU's tests needs apt-get (Debian)")
    p = subprocess.run(["apt-get", "-q", *opts, *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise Fatal(f"apt-get {' '.join(args)} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")


def _apt_user() -> str:
    # apt drops to _apt to download; our private folders belong to whoever runs the runner
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _filtered_patch(text: str) -> str:
    """The sections of a (git-style) patch that touch the kept folders."""
    out, keep, cur = [], False, []

    def flush() -> None:
        if keep and cur:
            out.extend(cur)

    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        starts = line.startswith("diff ") or (
            line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")
            and not (cur and cur[0].startswith("diff ") and not any(c.startswith("@@") for c in cur)))
        if starts:
            flush()
            cur, keep = [], False
        cur.append(line)
        m = re.match(r"(?:\+\+\+|---) (?:[ab]/)?(\S+)", line)
        if m and m.group(1) != "/dev/null":
            keep = keep or m.group(1).startswith(KEEP)
        m = re.match(r"diff --git a/(\S+) b/(\S+)", line)
        if m:
            keep = m.group(1).startswith(KEEP) or m.group(2).startswith(KEEP)
    flush()
    return "".join(out)


def _apply_debian_patches(deb: Path, tree: Path) -> None:
    """Apply, in the series' order, the parts of Debian's patches that touch the kept folders."""
    with tarfile.open(deb) as tf:
        names = set(tf.getnames())
        if "debian/patches/series" not in names:
            return
        series = tf.extractfile("debian/patches/series").read().decode()
        for line in series.splitlines():
            name = line.split("#", 1)[0].strip().split(" ")[0]
            if not name or f"debian/patches/{name}" not in names:
                continue
            patch = _filtered_patch(
                tf.extractfile(f"debian/patches/{name}").read().decode(errors="surrogateescape"))
            if not patch:
                continue
            p = subprocess.run(["patch", "-p1", "-s", "-N", "--no-backup-if-mismatch", "-d", str(tree)],
                               input=patch.encode(errors="surrogateescape"), capture_output=True)
            if p.returncode:
                raise Fatal(f"Debian patch {name} does not apply to the tests: "
                            f"{p.stdout.decode(errors='replace')[-1000:]}")


def fetch_sources(oracle: Oracle) -> Path:
    """The folder holding tests/qemu-iotests and python/ of the oracle's Debian source."""
    base = cache_dir()
    safe = re.sub(r"[^A-Za-z0-9.+~-]", "_", oracle.source_version)
    dest = base / "src" / safe
    if (dest / ".complete").exists():
        if (dest / ".complete").read_text().split()[1:] == ["upstream"]:
            say(f"the tests of qemu {oracle.source_version} are upstream's, without Debian's changes "
                "(they could not be fetched)")
        return dest
    if shutil.which("patch") is None:
        raise Fatal("unpacking QEMU's tests needs patch (Debian package patch)")
    aptdir = base / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (aptdir / sub).mkdir(parents=True, exist_ok=True)
    (aptdir / "qimg-src.sources").write_text(source_list())
    say(f"fetching Debian's qemu {oracle.source_version} source (tests/qemu-iotests only is kept)")
    _apt(["update"], aptdir)
    dl = Path(tempfile.mkdtemp(prefix="dl-", dir=base))
    try:
        try:
            _apt(["source", "--download-only", f"qemu={oracle.source_version}"], aptdir, cwd=dl)
        except Fatal as e:
            # apt keeps each file it fetched and verified: without the Debian part (some
            # mirrors lack a backport's debian.tar) the upstream tests of the same release are
            # used, and said so
            if not list(dl.glob("qemu_*.orig.tar.*")) or list(dl.glob("qemu_*.debian.tar.*")):
                raise
            say(f"Debian's changes to qemu {oracle.source_version} could not be fetched; using the upstream "
                f"release's tests without them ({str(e).splitlines()[-1] if str(e) else ''})")
        origs = sorted(dl.glob("qemu_*.orig.tar.*"))
        debs = sorted(dl.glob("qemu_*.debian.tar.*"))
        if len(origs) != 1 or len(debs) > 1:
            raise Fatal(f"unexpected files of the qemu source package: {sorted(os.listdir(dl))}")
        tmp = Path(tempfile.mkdtemp(prefix="unpack-", dir=base))
        try:
            with tarfile.open(origs[0]) as tf:
                for m in tf:
                    parts = m.name.split("/", 1)
                    if len(parts) < 2 or not (parts[1] + "/").startswith(KEEP):
                        continue
                    m.name = parts[1]
                    tf.extract(m, tmp, filter="data")
            for deb in debs:
                _apply_debian_patches(deb, tmp)
            if not (tmp / "tests/qemu-iotests/check").is_file():
                raise Fatal("the qemu source package has no tests/qemu-iotests/check")
            # "upstream" records that Debian's changes to the tests could not be applied
            (tmp / ".complete").write_text(oracle.source_version + ("" if debs else " upstream") + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(dl, ignore_errors=True)
    say(f"QEMU's tests unpacked into {dest}")
    return dest
