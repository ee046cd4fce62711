"""Untrusted mode: open images from strangers without letting them reach anything else.

An image names other files: backing files, external data files (qcow2 ``data_file``), VMDK
extents, ``json:`` pseudo-files and protocol URLs. Following such names is how an uploaded
image reads the host's files (CVE-2015-5163 backing ``/etc/passwd``, CVE-2024-32498 qcow2
``data_file``). In untrusted mode qimg opens exactly the file it was given:

* the library refuses to follow names found in an image (:func:`refuse_backing`); drivers see
  ``options["untrusted"] = True`` and must not open data files or extents either;
* ``info`` still reports the names (they come from the header, not from opening them);
* probing refuses polyglots that two formats claim (:func:`check_probe`);
* the CLI caps address space and CPU time of the process (:func:`apply_limits`).

Enable it with ``qimg --untrusted``, ``QIMG_UNTRUSTED=1`` or ``qimg.open(..., untrusted=True)``.
Limits: ``QIMG_UNTRUSTED_AS`` (bytes, suffixes allowed, ``0`` = unlimited, default 2G) and
``QIMG_UNTRUSTED_CPU`` (seconds, ``0`` = unlimited, default 300).
"""
from __future__ import annotations

import os

from .errors import QimgError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from .registry import Registry

ENV = "QIMG_UNTRUSTED"
ENV_AS = "QIMG_UNTRUSTED_AS"
ENV_CPU = "QIMG_UNTRUSTED_CPU"
DEFAULT_AS = 2 << 30
DEFAULT_CPU = 300

_enabled = False


def enable(on: bool = True) -> None:
    """Turn untrusted mode on for every later ``qimg.open`` of this process."""
    global _enabled
    _enabled = on


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "on", "true")


def is_enabled(explicit: bool | None = None) -> bool:
    """The mode in force: an explicit argument wins, then :func:`enable`, then ``QIMG_UNTRUSTED``."""
    if explicit is not None:
        return explicit
    return _enabled or _env_true(ENV)


def refuse_backing(filename: str, backing: str) -> QimgError:
    """The error for an image whose backing file untrusted mode will not open."""
    return QimgError(f"Could not open '{filename}': Backing file '{backing}' is not opened in untrusted mode "
                     "(the image names it; inspect it and open it explicitly if it is safe)")


def check_follow(filename: str, backing: str, untrusted: bool | None = None) -> None:
    """For code that walks a backing chain itself (``info --backing-chain``): call before
    opening a backing name read from ``filename``; raises in untrusted mode."""
    if is_enabled(untrusted):
        raise refuse_backing(filename, backing)


def refuse_named_file(filename: str, kind: str, name: str) -> QimgError:
    """For drivers: the error when reaching a file the image names (``kind``: "data file", "extent")."""
    return QimgError(f"Could not open '{filename}': {kind[0].upper() + kind[1:]} '{name}' is not opened in untrusted mode")


def check_probe(registry: "Registry", head: bytes, filename: str) -> None:
    """Refuse a file that more than one format claims with a score above raw's.

    A crafted file can carry two headers (e.g. a qcow2 header that is also a valid VMDK
    descriptor); which format wins then depends on probe scores, and an attacker picks the one
    a validator does not look at. Raw's score is the floor: every format beats it.
    """
    try:
        scores = registry.scores(head, filename)
    except Exception:  # noqa: BLE001 - a probe must never crash on hostile bytes
        scores = {}
    floor = scores.get("raw", 1)
    claimed = sorted(n for n, s in scores.items() if s > floor and n != "raw")
    if len(claimed) > 1:
        raise QimgError(f"Could not open '{filename}': Image probes as several formats ({', '.join(claimed)}); "
                        "refusing it in untrusted mode (specify the format with -f)")


def _parse_limit(name: str, default: int, size: bool) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        if size:
            from .units import parse_size

            return int(parse_size(text.strip()))
        return int(text.strip())
    except (ValueError, QimgError):
        raise QimgError(f"Invalid value for {name}: '{text}'") from None


def limits_from_env() -> tuple[int, int]:
    """(address space bytes, CPU seconds) for untrusted mode; 0 means no limit."""
    return _parse_limit(ENV_AS, DEFAULT_AS, True), _parse_limit(ENV_CPU, DEFAULT_CPU, False)


def _on_xcpu(signum: int, frame: object) -> None:
    raise QimgError("CPU time limit of untrusted mode exceeded")


def apply_limits(address_space: int | None = None, cpu_seconds: int | None = None) -> None:
    """Cap this process (the CLI calls this; a library user may too).

    The soft CPU limit raises :class:`QimgError` in the main thread (SIGXCPU); the hard limit,
    5 s later, kills the process. Only lowers limits, never raises them.
    """
    import resource
    import signal

    env_as, env_cpu = limits_from_env()
    address_space = env_as if address_space is None else address_space
    cpu_seconds = env_cpu if cpu_seconds is None else cpu_seconds

    def lower(which: int, soft: int, hard: int) -> None:
        cur_soft, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        if cur_soft != resource.RLIM_INFINITY and cur_soft < soft:
            return
        resource.setrlimit(which, (soft, hard))

    if address_space and address_space > 0:
        lower(resource.RLIMIT_AS, address_space, address_space)
    if cpu_seconds and cpu_seconds > 0:
        used = int(sum(os.times()[:2]))
        try:
            signal.signal(signal.SIGXCPU, _on_xcpu)
        except (ValueError, OSError):  # not the main thread
            pass
        lower(resource.RLIMIT_CPU, used + cpu_seconds, used + cpu_seconds + 5)


def enable_cli() -> None:
    """What ``qimg --untrusted`` (or ``QIMG_UNTRUSTED=1``) does before the command runs."""
    enable(True)
    apply_limits()
