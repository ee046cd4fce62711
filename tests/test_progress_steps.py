"""``convert -p`` and ``compare -p`` move in qemu-img's steps: one per chunk, and chunks end
where QEMU's block status of the source ends (a grain of a vmdk, a cluster of a qcow, a block
of a vdi), so sources whose drivers report little at a time print the same lines. Compressing, a run
shorter than a target cluster counts as a whole cluster of data, as qemu-img counts it."""
from __future__ import annotations

import pytest
from cli_support import compare_in_copies, formats_available, run_qemu, run_qemu_io

SOURCES = {"vmdk": [], "qcow": [], "vdi": [], "vmdk-stream": ["-o", "subformat=streamOptimized"],
           "vdi-static": ["-o", "static=on"], "qcow2": [], "vpc": [], "raw": []}


def _setup(fmt: str, opts: list[str]):
    def setup(folder):
        run_qemu("create", "-q", "-f", "raw", "src.raw", "8M", cwd=folder)
        run_qemu_io("-f", "raw", "-c", "write -P 1 0 1M", "-c", "write -P 2 3M 64k", "-c", "write -P 0 6M 64k",
                    "src.raw", cwd=folder)
        run_qemu("convert", "-O", fmt, *opts, "src.raw", "src.img", cwd=folder)
    return setup


@pytest.mark.parametrize("kind", sorted(SOURCES))
@pytest.mark.parametrize("cmd", [["convert", "-p", "-O", "raw", "src.img", "out.raw"],
                                 ["convert", "-p", "-O", "qcow2", "src.img", "out.qcow2"],
                                 ["convert", "-p", "-S", "0", "-O", "qcow2", "src.img", "out.qcow2"],
                                 ["convert", "-p", "-c", "-O", "qcow2", "src.img", "out.qcow2"],
                                 ["compare", "-p", "src.raw", "src.img"]])
def test_progress_lines(tmp_path, kind, cmd):
    fmt = kind.split("-")[0]
    if fmt not in formats_available():
        pytest.skip(f"{fmt} plugin not installed")
    compare_in_copies(_setup(fmt, SOURCES[kind]), tmp_path, *cmd)
