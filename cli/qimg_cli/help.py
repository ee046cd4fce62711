"""The text of ``qimg --help``: qemu-img's, with the installed formats listed at the end."""
from __future__ import annotations


def supported_formats() -> str:
    from qimg.plugins import get_registry

    return "Supported formats: " + " ".join(get_registry().format_names())


def full_help() -> str:
    return ("usage: qimg [standard options] command [command options]\n"
            "QEMU disk image utility\n\n" + supported_formats())
