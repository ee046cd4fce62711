"""The command algorithms as library functions; the CLI is a thin layer over them.

Each module is imported on demand (``from qimg.ops import info``): info, map, check,
measure, resize, snapshot, amend, create, convert, compare, commit, rebase, dd, bench.
:mod:`qimg.ops.qjson` prints JSON the way QEMU does (key order included).
"""
