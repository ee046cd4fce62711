"""The two oracles are what they claim: qemu-img 7.2 on PATH and 10.0 from scripts/oracle-10,
each with its own block modules (a 10.0 binary loading 7.2's modules refuses them)."""
from __future__ import annotations


def test_oracle_72(qemu_img):
    r = qemu_img("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("qemu-img version 7.2.")


def test_oracle_10(qemu_img_10):
    r = qemu_img_10("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("qemu-img version 10.0.")


def test_oracle_10_modules(qemu_img_10, tmp_path):
    # the curl module is 10.0's own: an http URL reaches the network layer instead of
    # "Unknown protocol" or a module version clash
    r = qemu_img_10("info", "http://127.0.0.1:9/none.img")
    assert "Unknown protocol" not in r.stderr
    assert "module" not in r.stderr.lower(), r.stderr
