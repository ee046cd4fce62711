"""Whose behaviour qimg reproduces: a *profile*, chosen by the environment variable
``QIMG_COMPAT``: ``10.0`` (the default, what current distributions ship) or ``7.2``.

A profile covers everything a script can see: help texts, which options exist, output lines and
JSON keys, messages, exit codes. The differences between profiles are data, kept in the tables
below (and beside each command's option table), never ``if version`` branches scattered through
the code: code asks :func:`has` for a named behaviour, or :func:`text` for a message whose
wording changed, and the tables say which profile has what.
"""
from __future__ import annotations

import os

#: the profiles, oldest first: name -> the qemu-img version it reproduces
PROFILES: dict[str, tuple[int, int, int]] = {
    "7.2": (7, 2, 0),
    "10.0": (10, 0, 2),
}
DEFAULT = "10.0"

#: named behaviours -> the first profile that has them (older profiles do not)
FEATURES: dict[str, str] = {
    # the command line (qimg_cli): getopt prints its own messages ("invalid option -- 'z'")
    # after "argv[0] COMMAND:", and a usage error's hint names the command
    "getopt-messages": "10.0",
    # COMMAND --help prints the command's own help (7.2: -h anywhere prints the global help)
    "command-help": "10.0",
    # --output's value is checked as the option is met, before later usage errors
    "output-checked-in-loop": "10.0",
    # sizes (qemu_strtosz, QEMU 8.1's rework; qimg.units.strtosz): a negative number is out of
    # range (7.2: invalid), a suffix on a hex number is refused (7.2: accepted with a deprecation
    # warning), a fraction may lack integral digits (".5M"), one that reads as 1.0 is one more
    # unit (7.2: none); the same in QemuOpts size options ("Value '-1' is out of range for
    # parameter 'offset'", 7.2: not a non-negative number)
    "strtosz-rework": "10.0",
    # bench's counts and convert -m are checked as integers in a range (cvtnum's messages)
    "range-checked-numbers": "10.0",  # also dd's count= and skip=
    # snapshot with no -l/-a/-c/-d lists (7.2: opens the image for writing, does nothing)
    "snapshot-lists-by-default": "10.0",
    # standard options without a command are a usage error (7.2: only no arguments at all)
    "no-command-is-an-error": "10.0",
    # LUKS (qimg.luks): QCryptoHashAlgo sm3 and QCryptoCipherAlgo sm4 exist
    "qcrypto-sm3-sm4": "10.0",
    # LUKS info has "detached-header"; the luks format creates and opens detached headers
    "luks-detached-header": "10.0",
    # LUKS key material overlap test with 64-bit last sectors (ranges_overlap)
    "luks-ranges-overlap": "10.0",
    # URLs are parsed by GLib (g_uri_parse, g_uri_parse_params): query parameters are split at
    # '&' only, every piece needs an '=', a repeated name keeps its last value (7.2: QEMU's own
    # util/uri.c: '&' or ';', empty pieces skipped, a repeated name counts twice)
    "glib-uri": "10.0",
    # parallels: data_off checks, repair of writable images on open, reuse of free clusters,
    # discard of whole clusters, duplicate BAT entries in check (QEMU 8.x's rework)
    "parallels-repair": "10.0",
    # the nbd client asks for NBD_OPT_EXTENDED_HEADERS (QEMU 9.0's client; 7.2: structured only)
    "nbd-extended-headers": "10.0",
    # rbd's encrypt options take format luks-any and a parent's encryption (QEMU 8.0's layered
    # encryption; librbd 16 then refuses them at open)
    "rbd-layered-encryption": "10.0",
    # tls-creds-* objects have no "loaded" property (7.2: read-only, "is not writable")
    "tls-creds-without-loaded": "10.0",
}

#: messages whose wording changed -> {first profile with this wording: text}. The CLI fills
#: in ``{prog}`` (the program's name as invoked), ``{fixed}`` (the name qemu-img spells out
#: as ``qemu-img`` whatever it runs as: :func:`fixed_name`) and ``{argv0}`` (argv[0] and the command); a
#: CLI wording that ends in ``{try}`` is a usage error there (qimg_cli.prog.fail).
TEXTS: dict[str, dict[str, str]] = {
    "try-help": {"7.2": "Try '{fixed} --help' for more information", "10.0": "Try '{argv0} --help' for more info"},
    "copyright": {"7.2": "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers",
                  "10.0": "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers"},
    "cvtnum-invalid": {"7.2": "Invalid {what} specified. You may use k, M, G, T, P or E suffixes for\n"
                              "{prog}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
                       "10.0": "Invalid {what} specified: '{value}'."},
    "bad-repair": {"7.2": "Unknown option value for -r (expecting 'leaks' or 'all'): {value}\n{try}",
                   "10.0": "--repair (-r) expects 'leaks' or 'all' not '{value}'\n{try}"},
    "bad-output": {"7.2": "--output must be used with human or json as argument.",
                   "10.0": "--output expects 'human' or 'json' not '{value}'\n{try}"},
}


class UnknownProfile(ValueError):
    pass


# -- what the commands print and do (qimg.ops, the drivers): docs/compat.md lists every entry --
FEATURES.update({
    # info: the block graph below each image ("children" in JSON, "Child node '/file':" sections
    # in the human text, each child's filename, protocol type, file length, disk size)
    "info-child-nodes": "10.0",
    # the file protocol reports format-specific info (type "file"; an XFS extent size hint)
    "file-specific-info": "10.0",
    # info: a format-specific block with no data (rbd's) prints nothing (7.2: its heading)
    "info-empty-specific-hidden": "10.0",
    # map --output=json: every entry has "compressed"; runs merge only with equal compression
    "map-compressed": "10.0",
    # rebase compares and writes whole (sub)clusters, data up to the old backing's end even
    # where a chunk crosses it, and skips what an image of the chain shows (since 8.2)
    "rebase-aligned-copy": "10.0",
    # create -b without -F: "Detected format of qcow2." ends with a newline (7.2: none)
    "detected-format-newline": "10.0",
    # bitmap and commit inactivate every node before closing (qimg.Image.inactivate): a failure
    # there is "Error while closing the image: ...", exit 1 (7.2: reported, exit 0); parallels
    # leaves such an image marked in use
    "inactivate-before-close": "10.0",
    # vpc: the virtual size comes from the footer's current_size unless Virtual PC ("vpc ") or
    # QEMU ("qemu") made the image (7.2: from the CHS geometry unless one of a list of
    # creators that use current_size made it)
    "vpc-current-size-default": "10.0",
    # parallels images can carry persistent dirty bitmaps (QEMU 8.2): measure -O qcow2 of a
    # parallels image prints "bitmaps size" (its bitmaps are loaded as non-persistent: 0)
    "parallels-bitmaps": "10.0",
})
TEXTS.update({
    # the snapshot table (info, snapshot -l): header, row layout (printf), VM clock (printf)
    "snapshot-table-header": {
        "7.2": "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT",
        "10.0": "ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT"},
    "snapshot-table-row": {"7.2": "%-9s %-16s %8s%20s%13s%11s", "10.0": "%-7s %-16s %8s %19s %15s %10s"},
    "snapshot-vm-clock": {"7.2": "%02d:%02d:%02d.%03d", "10.0": "%04d:%02d:%02d.%03d"},
    # ... and a snapshot without an instruction count (a short entry's, or -1)
    "snapshot-no-icount": {"7.2": "", "10.0": "--"},
    # a TLS session the server ended without a close_notify (nbd: it refused our certificate):
    # QEMU's TLS channel read error, worded by its gnutls error mapping
    "tls-read-eof": {
        "7.2": "Cannot read from TLS channel: Software caused connection abort",
        "10.0": "Cannot read from TLS channel: The TLS connection was non-properly terminated."},
    # a TLS handshake the server reset (a refused pre-shared key): gnutls' pull error, to which
    # QEMU 10.0 adds the socket's own error
    "tls-handshake-reset": {
        "7.2": "TLS handshake failed: Error in the pull function.",
        "10.0": "TLS handshake failed: Error in the pull function.: Unable to read from socket: "
                "Connection reset by peer"},
    # a protocol that cannot create, and could not open its target either
    "protocol-create-fallback": {
        "7.2": "Protocol driver '{}' does not support image creation, and opening the image failed: ",
        "10.0": "Protocol driver '{}' does not support creating new images, so an existing image must be "
                "selected as the target; however, opening the given target as an existing image failed: "},
    # snapshot -c on a format without snapshots: the errno's number is gone
    "snapshot-create-failed": {"7.2": "Could not create snapshot '{name}': -{errno} ({strerror})",
                               "10.0": "Could not create snapshot '{name}': {strerror}"},
})


def name() -> str:
    """The selected profile's name (``QIMG_COMPAT``, read at each call so tests can switch)."""
    value = os.environ.get("QIMG_COMPAT") or DEFAULT
    if value not in PROFILES:
        raise UnknownProfile(
            f"QIMG_COMPAT={value!r} is not a profile qimg knows (choose one of: {', '.join(PROFILES)})"
        )
    return value


def version() -> tuple[int, int, int]:
    """The qemu-img version the selected profile reproduces, e.g. (10, 0, 2)."""
    return PROFILES[name()]


def version_string() -> str:
    return ".".join(map(str, version()))


def has(feature: str) -> bool:
    """Whether the selected profile has the named behaviour (a key of :data:`FEATURES`)."""
    return version() >= PROFILES[FEATURES[feature]]


def text(key: str) -> str:
    """The selected profile's wording of a message (a key of :data:`TEXTS`)."""
    v = version()
    best = None
    for profile, msg in TEXTS[key].items():
        pv = PROFILES[profile]
        if pv <= v and (best is None or pv > best[0]):
            best = (pv, msg)
    if best is None:
        raise KeyError(f"{key!r} has no wording for profile {name()}")
    return best[1]


# -- the program's name ---------------------------------------------------------------------------
#: the name the program was invoked as (``argv[0]``'s last component): qemu-img writes its own
#: name as invoked in its messages (the ``qemu-img:`` prefix of every error line, the hints that
#: tell what to run). The CLI sets it (:func:`set_program`); library users see ``qimg``.
_program = "qimg"
_fixed = "qimg"


def program() -> str:
    """The program's name for messages: ``qimg``, or ``qemu-img`` when installed under that name."""
    return _program


def fixed_name() -> str:
    """The name where qemu-img writes ``qemu-img`` whatever it was invoked as (help texts, the
    version line, hints such as vhdx's ``qemu-img check -r all``): ``qimg`` under qimg's own name,
    ``qemu-img`` under any other."""
    return _fixed


def set_program(name: str, fixed: str | None = None) -> None:
    global _program, _fixed
    _program = name or "qimg"
    _fixed = fixed or ("qimg" if _program.startswith("qimg") else "qemu-img")
