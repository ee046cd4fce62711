"""The parts of scripts/iotests: where QEMU's tests come from (sources), how they run
(running), how the runs compare (report)."""
