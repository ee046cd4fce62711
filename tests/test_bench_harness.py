"""bench/run.py works: a --quick run measures both tools on every workload it can run, writes
the JSON it promises, and refuses to run (exit 2) without qemu-img."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"


def test_quick_run(tmp_path: Path, qemu_img) -> None:  # qemu_img: skip/fail like every oracle test
    out = tmp_path / "results.json"
    p = subprocess.run([sys.executable, str(RUN), "--quick", "--json", str(out), "--workdir", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["reps"] == 1
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["python"]
    names = [w["name"] for w in doc["workloads"]]
    assert "convert raw->raw" in names and any("baseline" in n for n in names)
    ran = [w for w in doc["workloads"] if not w.get("skipped") and "baseline" not in w["name"]]
    assert ran, "no workload ran"
    for w in ran:
        for tool in ("qimg", "qemu-img"):
            r = w[tool]
            assert r["failed"] is None, (w["name"], tool, r["failed"])
            assert len(r["times"]) == 1 and r["median_s"] > 0 and r["peak_rss_kib"] > 0
        assert w["time_ratio"] == w["qimg"]["median_s"] / w["qemu-img"]["median_s"]
    for w in doc["workloads"]:
        if w.get("skipped"):
            assert "not installed" in w["skipped"]
    # the table has one row per workload, with both tools' columns
    table = [ln for ln in p.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| ---")]
    assert table[0].startswith("| workload | qimg median s | qemu-img median s | time ratio")
    assert len(table) == 1 + len(names)
    # the work folder holds only the inputs: outputs are removed
    assert not list((tmp_path / "w").glob("out.*"))


def test_refuses_without_qemu_img(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(RUN), "--quick", "--qemu-img", str(tmp_path / "no-such-qemu-img")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "qemu-img not found" in p.stderr
