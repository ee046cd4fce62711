"""The ``s3`` protocol: an image stored as an object in S3-compatible storage (AWS S3, Ceph
radosgw, MinIO...). No qemu-img has it: names, options and messages are qimg's own
(docs/protocols/s3.md).

``s3://BUCKET/KEY`` names the object (the key is everything after the bucket's ``/``, taken
as written); where it is and who asks come from AWS's configuration chain (:mod:`.client`) and
the node's options. Reads are ranged GETs (:mod:`.remote`); writes go up as multipart uploads,
streamed or through a local spool (:mod:`.upload`).
"""
from __future__ import annotations

import errno

from qimg.blockstatus import DATA
from qimg.errors import QimgError, with_errno
from qimg.options import NUMBER, SIZE, STRING, Option
from qimg.protocol import Protocol

from . import upload as up

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

_SETTINGS = ("endpoint-url", "region", "profile", "addressing-style", "timeout", "retries")


def parse_url(filename: str) -> dict[str, Any]:
    """``s3://BUCKET/KEY`` as open options."""
    if not filename.startswith("s3://"):
        raise QimgError(f"S3 names look like s3://BUCKET/KEY, not '{filename}'")
    bucket, slash, key = filename[5:].partition("/")
    if not bucket:
        raise QimgError(f"'{filename}' names no bucket (s3://BUCKET/KEY)")
    if not slash or not key:
        raise QimgError(f"'{filename}' names no object key (s3://BUCKET/KEY)")
    return {"bucket": bucket, "key": key}


class S3Protocol(Protocol):
    protocol_name = "s3"
    runtime_options = {"bucket": STRING, "key": STRING, "endpoint-url": STRING, "region": STRING,
                       "profile": STRING, "addressing-style": STRING, "timeout": NUMBER, "retries": NUMBER}
    #: options that change which object is reached: with one, the node is named json:{...}
    strong_runtime_options = ("bucket", "key", "endpoint-url", "profile", "region")
    create_opts = [Option("size", SIZE, "Virtual disk size")]
    #: info reports a dirty flag as for a file (an object has no state of its own beside its bytes)
    reports_dirty_flag = True
    #: ranged GETs in flight during a bulk copy
    parallel_reads = 8

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def parse_filename(cls, filename: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if options and any(k in options for k in ("bucket", "key")):
            raise QimgError("bucket and key cannot be used at the same time as an s3:// name")
        return parse_url(filename)

    @classmethod
    def dirname_for(cls, filename: str) -> str:
        opts = parse_url(filename)
        bucket, key = opts["bucket"], opts["key"]
        return f"s3://{bucket}/{key.rpartition('/')[0] + '/' if '/' in key else ''}"

    @classmethod
    def open(cls, options: dict[str, Any], *, writable: bool, filename: str) -> S3Protocol:
        return cls(options, writable=writable)

    @classmethod
    def create(cls, filename: str, options: dict[str, Any] | None = None) -> S3Protocol:
        parsed, size = cls.creation_options(filename, options)
        proto = cls(parsed, writable=True, create=True)
        if size:
            proto.truncate(int(size))
        return proto

    def __init__(self, options: dict[str, Any], *, writable: bool, create: bool = False) -> None:
        from . import client as s3client

        opts = dict(options)
        name = opts.pop("filename", None)
        if name and "bucket" not in opts and "key" not in opts:
            opts.update(parse_url(str(name)))  # driver=s3 with filename=s3://...
        bucket, key = opts.get("bucket"), opts.get("key")
        if not bucket:
            raise QimgError("Parameter 'bucket' is missing")
        if not key:
            raise QimgError("Parameter 'key' is missing")
        self.bucket, self.key = str(bucket), str(key)
        self.given = {k: options[k] for k in self.strong_runtime_options + _SETTINGS if k in options}
        style = opts.get("addressing-style")
        if style is not None and style not in s3client.ADDRESSING:
            raise QimgError(f"Parameter 'addressing-style' does not accept value '{style}' (auto, path, virtual)")
        timeout = float(opts.get("timeout", s3client.TIMEOUT_DEFAULT))
        retries = int(opts.get("retries", s3client.ATTEMPTS_DEFAULT - 1))
        if not 0 < timeout <= 3600:
            raise QimgError("Parameter 'timeout' must be between 0 and 3600 seconds")
        if not 0 <= retries <= 20:
            raise QimgError("Parameter 'retries' must be between 0 and 20")
        self.settings = s3client.Settings(profile=opts.get("profile"), endpoint=opts.get("endpoint-url"),
                                          region=opts.get("region"), addressing=style, timeout=timeout,
                                          attempts=retries + 1)
        self.filename = f"s3://{self.bucket}/{self.key}"
        self.writable = writable
        self.c = s3client.client(self.settings)
        self._name = (s3client.endpoint_of(self.c), self.settings.profile, self.bucket, self.key)
        self.remote = None  # a Remote: read-only node
        self.writer = None  # a Spool or a Stream: writable node
        parked = up.adopt(self._name)
        if parked is not None:
            if create:  # created again (a format's create after the protocol's): empty it
                parked = up.emptied(parked)
            elif writable:
                parked = up.as_stream(parked)
            self.writer = parked
            up.track(self._name, parked)
            return
        if create:
            self._check_bucket()
            self.writer = up.Spool(up.Multipart(self.c, self.bucket, self.key))
            up.track(self._name, self.writer)
            return
        self.remote = self._head()
        if writable:
            spool = up.Spool(up.Multipart(self.c, self.bucket, self.key))
            try:
                spool.fill(self.remote)
            except BaseException:
                spool.finish(False)
                raise
            self.remote.close()
            self.remote = None
            self.writer = spool
            self._dirty = False
            up.track(self._name, spool)

    _dirty = True  # a created node is stored at close even if nothing was written

    def _check_bucket(self) -> None:
        from . import client as s3client

        try:
            self.c.head_bucket(Bucket=self.bucket)
        except s3client.failures() as e:
            err = s3client.error(e, "HeadBucket", self.bucket)
            if getattr(err, "errno", None) == errno.ENOENT:
                raise with_errno(QimgError(f"S3 bucket '{self.bucket}' does not exist"), errno.ENOENT) from None
            raise err from None

    def _head(self) -> Any:
        from . import client as s3client
        from .remote import Remote

        try:
            h = self.c.head_object(Bucket=self.bucket, Key=self.key)
        except s3client.failures() as e:
            err = s3client.error(e, "HeadObject", self.bucket, self.key)
            if getattr(err, "errno", None) == errno.ENOENT:
                self._check_bucket()  # a HEAD's 404 does not say whether the bucket or the key is missing
            elif getattr(err, "errno", None) == errno.EACCES:
                try:  # nor does its 403 say why: a GET's answer has S3's error code
                    self.c.get_object(Bucket=self.bucket, Key=self.key, Range="bytes=0-0")["Body"].close()
                except s3client.failures() as e2:
                    err = s3client.error(e2, "GetObject", self.bucket, self.key)
            raise err from None
        return Remote(self.c, self.bucket, self.key, int(h["ContentLength"]), h.get("ETag"))

    # -- names -------------------------------------------------------------------------------
    def exact_filename(self) -> str | None:
        if any(k in self.given for k in ("endpoint-url", "profile", "region")):
            return None
        return self.filename

    def json_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": "s3", "bucket": self.bucket, "key": self.key}
        out.update({k: v for k, v in self.given.items() if k not in ("bucket", "key")})
        return out

    def dirname(self) -> str:
        if self.exact_filename() is None:
            raise QimgError("Cannot generate a base directory for s3 nodes opened with options")
        return type(self).dirname_for(self.filename)

    # -- I/O ---------------------------------------------------------------------------------
    def size(self) -> int:
        return self.writer.size() if self.writer is not None else self.remote.size

    def allocated_size(self) -> int | None:
        return self.size()  # what the store keeps: every byte of the object

    def preadinto(self, offset: int, buf: memoryview) -> int:
        if self.writer is not None:
            return self.writer.preadinto(offset, buf)
        return self.remote.preadinto(offset, buf)

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(length, self.size() - offset)))
        n = self.preadinto(offset, memoryview(buf))
        return bytes(buf[:n])

    def _need_writer(self) -> Any:
        if self.writer is None:
            raise with_errno(QimgError(f"Cannot write to the read-only s3 node '{self.filename}'"), errno.EACCES)
        self._dirty = True
        return self.writer

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self._need_writer().pwrite(offset, data)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        w = self._need_writer()
        end = w.size()
        if offset + length > end:
            self.truncate(offset + length)
        w.write_zeroes(offset, length, unmap)

    def truncate(self, size: int) -> None:
        w = self._need_writer()
        if size == w.size():
            return
        if isinstance(w, up.Stream):
            raise with_errno(QimgError("Cannot resize an s3 object while it is streamed"), errno.ENOTSUP)
        up.check_part_count(size)
        w.truncate(size)

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        return length, DATA  # an object stores every byte; zeroes are found by reading

    def flush(self) -> None:
        pass  # the object is stored when the node is closed (S3 keeps no partial objects)

    def close(self) -> None:
        remote, self.remote = self.remote, None
        if remote is not None:
            remote.close()
        w, self.writer = self.writer, None
        if w is None:
            return
        if not self._dirty and isinstance(w, up.Spool):
            w.finish(False)  # opened writable, nothing changed: the object stays as it is
            return
        if up.park(self._name, w):
            return
        w.finish(True)
