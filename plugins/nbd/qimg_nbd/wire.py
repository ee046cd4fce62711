"""The NBD wire protocol's numbers (NetworkBlockDevice/nbd, doc/proto.md): magics, options,
replies, flags, commands and the limits this client keeps, the negotiated :class:`Export`, and
the errno mapping shared by the handshake (:mod:`.handshake`), TLS (:mod:`.tls`) and the
transmission phase (:mod:`.transmission`).
"""
from __future__ import annotations

import errno
import os
import struct

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
OPTS_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
CLIENT_MAGIC = 0x00420281861253  # oldstyle
REP_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF
EXTENDED_REQUEST_MAGIC = 0x21E41C71
EXTENDED_REPLY_MAGIC = 0x6E8A278C

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_EXTENDED_HEADERS = 8, 9, 10, 11
OPT_NAMES = {1: "export name", 2: "abort", 3: "list", 4: "peek export", 5: "starttls", 6: "info", 7: "go",
             8: "structured reply", 9: "list meta context", 10: "set meta context", 11: "extended headers"}
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_PLATFORM = 0x80000001, 0x80000002, 0x80000003, 0x80000004
REP_ERR_TLS_REQD, REP_ERR_UNKNOWN, REP_ERR_SHUTDOWN, REP_ERR_BLOCK_SIZE_REQD = (0x80000005, 0x80000006,
                                                                               0x80000007, 0x80000008)
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

# transmission flags
F_HAS_FLAGS, F_READ_ONLY, F_SEND_FLUSH, F_SEND_FUA, F_ROTATIONAL = 1, 2, 4, 8, 16
F_SEND_TRIM, F_SEND_WRITE_ZEROES, F_SEND_DF, F_CAN_MULTI_CONN = 32, 64, 128, 256
F_SEND_FAST_ZERO = 2048
# commands and their flags
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = range(8)
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_DF, CMD_FLAG_REQ_ONE, CMD_FLAG_FAST_ZERO = 1, 2, 4, 8, 16
CMD_FLAG_PAYLOAD_LEN = 32  # extended headers: the length is the payload's (writes)
# structured replies
REPLY_FLAG_DONE = 1
REPLY_NONE, REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE, REPLY_BLOCK_STATUS, REPLY_BLOCK_STATUS_EXT = 0, 1, 2, 5, 6
REPLY_ERROR, REPLY_ERROR_OFFSET = 32769, 32770
STATE_HOLE, STATE_ZERO = 1, 2

#: the largest read or write one request carries (QEMU's NBD_MAX_BUFFER_SIZE)
MAX_BUFFER = 32 << 20
#: the largest reply payload that is not read data (QEMU's NBD_MAX_MALLOC_PAYLOAD)
MAX_PAYLOAD = 1000
#: extents one block status answer keeps (asked without NBD_CMD_FLAG_REQ_ONE), and the
#: largest such answer a server may send (the spec's 2^20 extents)
MAX_EXTENTS = 1024
MAX_STATUS_PAYLOAD = 4 + 8 * (1 << 20)
#: the largest option reply read during the handshake (QEMU caps these at NBD_MAX_BUFFER_SIZE;
#: everything a client needs from one is far smaller)
MAX_OPTION_REPLY = 64 << 10
#: requests in flight on one connection (QEMU's MAX_NBD_REQUESTS)
MAX_IN_FLIGHT = 16
#: seconds one connect, handshake step or reply may take (``QIMG_NBD_TIMEOUT``)
DEFAULT_TIMEOUT = 60.0
_EOF = "Unexpected end-of-file before all data were read"

_HDR = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")
_STRUCT_REST = struct.Struct(">HHQI")  # after the magic: flags, type, cookie, length
_EXT_HDR = struct.Struct(">IHHQQQ")  # extended request: magic, flags, type, cookie, offset, length
_EXT_REST = struct.Struct(">HHQQQ")  # extended reply after the magic: flags, type, cookie, offset, length
_OPT = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")


def timeout_seconds() -> float:
    text = os.environ.get("QIMG_NBD_TIMEOUT", "").strip()
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = DEFAULT_TIMEOUT
    return value if value > 0 else DEFAULT_TIMEOUT


def nbd_errno(err: int) -> int:
    """An NBD error value as the system errno QEMU maps it to."""
    return {1: errno.EPERM, 5: errno.EIO, 12: errno.ENOMEM, 28: errno.ENOSPC, 75: errno.EOVERFLOW,
            95: errno.ENOTSUP, 108: errno.ESHUTDOWN}.get(err, errno.EINVAL)


def _io_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Export:
    """What the handshake negotiated."""

    __slots__ = ("size", "flags", "min_block", "pref_block", "max_block", "structured", "extended", "context_id")

    def __init__(self) -> None:
        self.size = 0
        self.flags = 0
        self.min_block = 0
        self.pref_block = 0
        self.max_block = 0
        self.structured = False
        self.extended = False  # NBD_OPT_EXTENDED_HEADERS: 32-byte headers, 64-bit lengths
        self.context_id: int | None = None

    @property
    def read_only(self) -> bool:
        return bool(self.flags & F_READ_ONLY)

    @property
    def max_payload(self) -> int:
        return min(MAX_BUFFER, self.max_block) if self.max_block else MAX_BUFFER
