"""A small NBD server written from the protocol specification, for the cases real servers do
not produce: refused options, old handshakes, replies that break the protocol, servers that
close mid-reply or stall. Both qemu-img and qimg are pointed at it and must answer alike
(the real servers, qemu-nbd and nbdkit, are used for everything else).

``FakeNBD(data, faults={...})`` serves ``data`` (a bytearray) on a unix socket; ``faults``
names what to break (see :data:`FAULTS`). Use it as a context manager: the server thread
stops and the socket is removed on exit.
"""
from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_EXTENDED_HEADERS = 8, 9, 10, 11
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR = {"unsup": 1, "policy": 2, "invalid": 3, "platform": 4, "tls": 5, "unknown": 6, "shutdown": 7,
           "block_size": 8, "too_big": 9}
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = range(8)
FLAG_HAS_FLAGS, FLAG_READ_ONLY, FLAG_SEND_FLUSH, FLAG_SEND_FUA = 1, 2, 4, 8
FLAG_SEND_TRIM, FLAG_SEND_WRITE_ZEROES, FLAG_SEND_DF, FLAG_CAN_MULTI_CONN = 32, 64, 128, 256
FLAG_SEND_FAST_ZERO = 2048
REPLY_NONE, REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE, REPLY_BLOCK_STATUS, REPLY_ERROR = 0, 1, 2, 5, 32769

#: what ``faults`` may hold: key -> values
FAULTS = {
    "greeting": ("close", "badmagic", "oldstyle", "newstyle", "stall"),
    "go": ("unsup", "policy", "unknown", "tls", "shutdown", "close", "no_export_info", "bad_info_length", "invalid",
           "platform", "block_size", "too_big", "unknown_err", "policy_msg", "unknown_nomsg"),
    "structured": ("unsup",),
    "meta": ("unsup", "none", "bad_id_reply"),
    "list": ("unsup", "empty"),
    "read": ("close_mid", "close_before", "bad_magic", "bad_cookie", "chunk_outside", "huge_chunk", "error_chunk",
             "simple", "hole_outside", "stall", "no_done"),
    "block_status": ("zero_length", "bad_context", "no_extent", "longer", "error", "close"),
    "write": ("error", "close"),
}


class FakeNBD:
    def __init__(self, data: bytearray, faults: dict | None = None, export: str = "",
                 flags: int = FLAG_SEND_FLUSH | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_DF,
                 size: int | None = None, granule: int = 65536, abstract: bool = False) -> None:
        self.data = data
        self.faults = dict(faults or {})
        self.export = export
        self.flags = flags | FLAG_HAS_FLAGS
        self.size = len(data) if size is None else size
        self.granule = granule
        self.dir = tempfile.mkdtemp(prefix="qimg-nbd-fake-")
        self.path = os.path.join(self.dir, "nbd.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # abstract: the same name in the abstract namespace (a NUL first, no file)
        self.sock.bind("\0" + self.path if abstract else self.path)
        self.sock.listen(16)
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"nbd+unix:///{self.export}?socket={self.path}"

    def __enter__(self) -> FakeNBD:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
        self.thread.join(10)
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.rmdir(self.dir)

    # -- plumbing ---------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv(conn: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            got = conn.recv(n - len(buf))
            if not got:
                raise EOFError
            buf += got
        return bytes(buf)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._session(conn)
        except (EOFError, OSError, struct.error):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _stall(self, conn: socket.socket) -> None:
        while not self.stopping:
            if not conn.recv(4096):
                return

    # -- handshake -----------------------------------------------------------------------------
    def _session(self, conn: socket.socket) -> None:
        f = self.faults
        g = f.get("greeting")
        if g == "close":
            return
        if g == "stall":
            self._stall(conn)
            return
        if g == "badmagic":
            conn.sendall(b"NOTMAGIC" + bytes(8))
            return
        if g == "oldstyle":
            conn.sendall(NBDMAGIC + struct.pack(">QQI", 0x00420281861253, self.size, self.flags) + bytes(124))
            self._transmission(conn, structured=False, meta_id=None)
            return
        fixed = g != "newstyle"
        conn.sendall(NBDMAGIC + struct.pack(">QH", IHAVEOPT, 1 | 2 if fixed else 2))
        (cflags,) = struct.unpack(">I", self._recv(conn, 4))
        no_zeroes = bool(cflags & 2)
        structured = False
        meta_id = None
        while True:
            magic, opt, length = struct.unpack(">QII", self._recv(conn, 16))
            if magic != IHAVEOPT:
                return
            payload = self._recv(conn, length) if length else b""
            if opt == OPT_EXPORT_NAME:
                if payload.decode() != self.export:
                    return
                conn.sendall(struct.pack(">QH", self.size, self.flags) + (b"" if no_zeroes else bytes(124)))
                self._transmission(conn, structured, meta_id)
                return
            if not fixed:
                return  # plain newstyle knows no other option
            if opt == OPT_ABORT:
                self._reply(conn, opt, REP_ACK)
                return
            if opt == OPT_LIST:
                if f.get("list") == "unsup":
                    self._reply(conn, opt, 0x80000000 | REP_ERR["unsup"])
                    continue
                if f.get("list") != "empty":
                    name = self.export.encode()
                    self._reply(conn, opt, REP_SERVER, struct.pack(">I", len(name)) + name)
                self._reply(conn, opt, REP_ACK)
                continue
            if opt == OPT_STRUCTURED_REPLY:
                if f.get("structured") == "unsup":
                    self._reply(conn, opt, 0x80000000 | REP_ERR["unsup"])
                    continue
                structured = True
                self._reply(conn, opt, REP_ACK)
                continue
            if opt in (OPT_SET_META_CONTEXT, OPT_LIST_META_CONTEXT):
                m = f.get("meta")
                if m == "unsup" or not structured:
                    self._reply(conn, opt, 0x80000000 | (REP_ERR["unsup"] if m == "unsup" else REP_ERR["invalid"]))
                    continue
                if m != "none":
                    name = b"base:allocation"
                    if opt == OPT_SET_META_CONTEXT:
                        meta_id = 7
                    self._reply(conn, opt, REP_META_CONTEXT, struct.pack(">I", 7) + name)
                self._reply(conn, opt, REP_ACK)
                continue
            if opt in (OPT_INFO, OPT_GO):
                go = f.get("go")
                (nlen,) = struct.unpack(">I", payload[:4])
                name = payload[4:4 + nlen].decode(errors="replace")
                if go == "close":
                    return
                if go in REP_ERR:
                    msg = b"export not available" if go == "unknown" else b""
                    self._reply(conn, opt, 0x80000000 | REP_ERR[go], msg)
                    continue
                if go in ("unknown_err", "policy_msg", "unknown_nomsg"):
                    code = {"unknown_err": 77, "policy_msg": 2, "unknown_nomsg": 6}[go]
                    self._reply(conn, opt, 0x80000000 | code, b"" if go == "unknown_nomsg" else b"go away")
                    continue
                if name != self.export:
                    self._reply(conn, opt, 0x80000000 | REP_ERR["unknown"], f"export '{name}' not present".encode())
                    continue
                if go == "bad_info_length":
                    self._reply(conn, opt, REP_INFO, struct.pack(">HQ", 0, self.size))
                elif go != "no_export_info":
                    self._reply(conn, opt, REP_INFO, struct.pack(">HQH", 0, self.size, self.flags))
                self._reply(conn, opt, REP_ACK)
                if opt == OPT_GO:
                    self._transmission(conn, structured, meta_id)
                    return
                continue
            self._reply(conn, opt, 0x80000000 | REP_ERR["unsup"])

    @staticmethod
    def _reply(conn: socket.socket, opt: int, rtype: int, data: bytes = b"") -> None:
        conn.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, rtype, len(data)) + data)

    # -- transmission ----------------------------------------------------------------------------
    def _allocated(self, off: int, n: int) -> bool:
        return any(self.data[off:off + n])

    def _transmission(self, conn: socket.socket, structured: bool, meta_id: int | None) -> None:
        f = self.faults
        while True:
            magic, cflags, ctype, cookie, offset, length = struct.unpack(">IHHQQI", self._recv(conn, 28))
            if magic != REQUEST_MAGIC:
                return
            if ctype == CMD_DISC:
                return
            if ctype == CMD_WRITE:
                payload = self._recv(conn, length)
                w = f.get("write")
                if w == "close":
                    return
                if w == "error":
                    self._simple(conn, cookie, 5)
                    continue
                self.data[offset:offset + length] = payload
                self._simple(conn, cookie, 0)
            elif ctype in (CMD_WRITE_ZEROES, CMD_TRIM):
                self.data[offset:offset + length] = bytes(length)
                self._simple(conn, cookie, 0)
            elif ctype == CMD_FLUSH:
                self._simple(conn, cookie, 0)
            elif ctype == CMD_READ:
                if not self._read(conn, cookie, offset, length, structured):
                    return
            elif ctype == CMD_BLOCK_STATUS:
                if not self._block_status(conn, cookie, offset, length, meta_id, cflags):
                    return
            else:
                self._simple(conn, cookie, 22)

    def _simple(self, conn: socket.socket, cookie: int, error: int, data: bytes = b"") -> None:
        conn.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, error, cookie) + data)

    def _chunk(self, conn: socket.socket, cookie: int, ctype: int, payload: bytes, done: bool = True,
               magic: int = STRUCTURED_MAGIC) -> None:
        conn.sendall(struct.pack(">IHHQI", magic, 1 if done else 0, ctype, cookie, len(payload)) + payload)

    def _read(self, conn: socket.socket, cookie: int, offset: int, length: int, structured: bool) -> bool:
        r = self.faults.get("read")
        data = bytes(self.data[offset:offset + length]).ljust(length, b"\0")
        if r == "close_before":
            return False
        if r == "stall":
            self._stall(conn)
            return False
        if not structured or r == "simple":
            if r == "close_mid":
                conn.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie) + data[: length // 2])
                return False
            self._simple(conn, cookie, 0, data)
            return True
        if r == "bad_magic":
            self._chunk(conn, cookie, REPLY_OFFSET_DATA, struct.pack(">Q", offset) + data, magic=0x12345678)
            return True
        if r == "bad_cookie":
            self._chunk(conn, cookie + 1000, REPLY_OFFSET_DATA, struct.pack(">Q", offset) + data)
            return True
        if r == "chunk_outside":
            self._chunk(conn, cookie, REPLY_OFFSET_DATA, struct.pack(">Q", offset + 512) + data)
            return True
        if r == "hole_outside":
            self._chunk(conn, cookie, REPLY_OFFSET_HOLE, struct.pack(">QI", offset, length + 4096))
            return True
        if r == "huge_chunk":
            conn.sendall(struct.pack(">IHHQI", STRUCTURED_MAGIC, 1, REPLY_OFFSET_DATA, cookie, 0xFFFFFFF0))
            return False
        if r == "error_chunk":
            msg = b"disk on fire"
            self._chunk(conn, cookie, REPLY_ERROR, struct.pack(">IH", 5, len(msg)) + msg)
            return True
        if r == "close_mid":
            conn.sendall(struct.pack(">IHHQI", STRUCTURED_MAGIC, 1, REPLY_OFFSET_DATA, cookie, length + 8)
                         + struct.pack(">Q", offset) + data[: length // 2])
            return False
        if r == "no_done":
            self._chunk(conn, cookie, REPLY_OFFSET_DATA, struct.pack(">Q", offset) + data, done=False)
            return False
        # compliant: data chunks, zero regions as holes
        pos = 0
        g = self.granule
        while pos < length:
            n = min(g - (offset + pos) % g, length - pos)
            piece = data[pos:pos + n]
            last = pos + n >= length
            if any(piece):
                self._chunk(conn, cookie, REPLY_OFFSET_DATA, struct.pack(">Q", offset + pos) + piece, done=last)
            else:
                self._chunk(conn, cookie, REPLY_OFFSET_HOLE, struct.pack(">QI", offset + pos, n), done=last)
            pos += n
        return True

    def _block_status(self, conn: socket.socket, cookie: int, offset: int, length: int, meta_id: int | None,
                      cflags: int) -> bool:
        b = self.faults.get("block_status")
        if meta_id is None:
            self._simple(conn, cookie, 22)
            return True
        if b == "close":
            return False
        if b == "error":
            msg = b"no status today"
            self._chunk(conn, cookie, REPLY_ERROR, struct.pack(">IH", 5, len(msg)) + msg)
            return True
        if b == "zero_length":
            self._chunk(conn, cookie, REPLY_BLOCK_STATUS, struct.pack(">III", meta_id, 0, 0))
            return True
        if b == "bad_context":
            self._chunk(conn, cookie, REPLY_BLOCK_STATUS, struct.pack(">III", meta_id + 1, length, 0))
            return True
        if b == "no_extent":
            self._chunk(conn, cookie, REPLY_NONE, b"")
            return True
        if b == "longer":
            self._chunk(conn, cookie, REPLY_BLOCK_STATUS, struct.pack(">III", meta_id, length + (1 << 20), 3))
            return True
        extents = []
        pos = offset
        end = offset + length
        g = self.granule
        while pos < end:
            n = min(g - pos % g, end - pos)
            flags = 0 if self._allocated(pos, n) else 3
            if extents and extents[-1][1] == flags:
                extents[-1][0] += n
            else:
                extents.append([n, flags])
            pos += n
            if cflags & 8:  # REQ_ONE: the first extent only
                if pos < end and (0 if self._allocated(pos, min(g, end - pos)) else 3) != flags:
                    break
        if cflags & 8:
            extents = extents[:1]
        body = struct.pack(">I", meta_id) + b"".join(struct.pack(">II", n, fl) for n, fl in extents)
        self._chunk(conn, cookie, REPLY_BLOCK_STATUS, body)
        return True
