"""The S3 connection of an ``s3`` node: a botocore client configured from AWS's own chain (the
``AWS_*`` environment variables, ``AWS_PROFILE``, ``~/.aws/config`` and ``~/.aws/credentials``,
``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` or a profile's ``endpoint_url``) with the node's
options on top, bounded timeouts and retries; and S3's errors as one-line messages.

botocore is imported here only, when an ``s3://`` image is opened (not boto3: its resource layer
and transfer manager cost start-up time and are not used).
"""
from __future__ import annotations

import errno
import threading

from qimg.errors import QimgError, with_errno

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: connections per client: requests in flight (reader threads, upload parts, read-ahead)
CONNECTIONS = 16
#: seconds to connect, and to wait for each answer, before a request is retried
TIMEOUT_DEFAULT = 20
#: attempts of one request (the first included) on a connection error, a timeout or a 5xx
ATTEMPTS_DEFAULT = 3
ADDRESSING = ("auto", "path", "virtual")

_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


class Settings:
    """What selects a connection: profile, endpoint, region, addressing style, timeout,
    attempts. A plain class (hashable through :meth:`key`)."""

    __slots__ = ("profile", "endpoint", "region", "addressing", "timeout", "attempts")

    def __init__(self, profile: str | None = None, endpoint: str | None = None, region: str | None = None,
                 addressing: str | None = None, timeout: float = TIMEOUT_DEFAULT,
                 attempts: int = ATTEMPTS_DEFAULT) -> None:
        self.profile, self.endpoint, self.region = profile, endpoint, region
        self.addressing, self.timeout, self.attempts = addressing, timeout, attempts

    def key(self) -> tuple:
        return (self.profile, self.endpoint, self.region, self.addressing, self.timeout, self.attempts)


def _botocore():
    try:
        import botocore.session
    except ImportError:
        raise QimgError("The s3 protocol needs botocore (pip install botocore, or install the qimg-s3 "
                        "distribution with its dependencies)") from None
    return botocore.session


def _env_key() -> tuple:
    """The environment a client was made from (credentials and endpoint variables may change
    between opens in one process)."""
    import os

    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


def client(settings: Settings) -> Any:
    """A botocore S3 client for ``settings`` (one per process, settings and AWS environment:
    clients are thread-safe and costly to make)."""
    key = settings.key() + _env_key()
    with _clients_lock:
        c = _clients.get(key)
        if c is not None:
            return c
        session_mod = _botocore()
        import botocore.exceptions as bx
        from botocore.config import Config

        kw: dict[str, Any] = {
            "connect_timeout": settings.timeout, "read_timeout": settings.timeout,
            "retries": {"total_max_attempts": settings.attempts, "mode": "standard"},
            "max_pool_connections": CONNECTIONS,
            # S3-compatible stores (radosgw, MinIO releases before 2025) refuse the CRC
            # trailers botocore sends by default since 1.36: checksums only where S3 requires them
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        if settings.addressing:
            kw["s3"] = {"addressing_style": settings.addressing}
        try:
            session = session_mod.Session(profile=settings.profile or None)
            c = session.create_client("s3", endpoint_url=settings.endpoint or None,
                                      region_name=settings.region or None, config=Config(**kw))
        except bx.ProfileNotFound:
            import os

            name = settings.profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
            raise QimgError(f"S3: the AWS profile '{name}' is not in the AWS config files") from None
        except ValueError as e:  # a malformed endpoint URL
            raise QimgError(f"S3: {e}") from None
        except bx.BotoCoreError as e:
            raise QimgError(f"S3: {e}") from None
        _clients[key] = c
        return c


def endpoint_of(c: Any) -> str:
    return str(c.meta.endpoint_url)


def error(e: BaseException, what: str, bucket: str, key: str | None = None) -> QimgError:
    """A botocore failure of request ``what`` as one line (and an errno where one fits)."""
    import botocore.exceptions as bx

    where = f"s3://{bucket}/{key}" if key is not None else f"bucket '{bucket}'"
    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {}) or {}
        code = str(err.get("Code") or "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = str(err.get("Message") or "") or code
        if code == "NoSuchBucket":
            return with_errno(QimgError(f"S3 bucket '{bucket}' does not exist"), errno.ENOENT)
        if code in ("NoSuchKey", "404", "NotFound"):
            return with_errno(QimgError(f"S3 object '{key}' does not exist in bucket '{bucket}'"), errno.ENOENT)
        if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
            return with_errno(QimgError(f"S3 access denied: {what} {where}"), errno.EACCES)
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return with_errno(QimgError(f"S3 refused the credentials ({code}): {what} {where}"), errno.EACCES)
        if code in ("PreconditionFailed", "412"):
            return with_errno(QimgError(f"S3 object {where} changed while it was being read"), errno.EIO)
        return with_errno(QimgError(f"S3 error {code or status}: {text} ({what} {where})"), errno.EIO)
    if isinstance(e, bx.NoCredentialsError):
        return with_errno(QimgError("S3: no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                    "AWS_PROFILE, ~/.aws/credentials)"), errno.EACCES)
    if isinstance(e, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return with_errno(QimgError(f"S3 endpoint unreachable: {e}"), errno.EHOSTUNREACH)
    if isinstance(e, bx.ReadTimeoutError):
        return with_errno(QimgError(f"S3 endpoint did not answer in time: {e}"), errno.ETIMEDOUT)
    if isinstance(e, (bx.BotoCoreError, OSError)):
        return with_errno(QimgError(f"S3 {what} {where} failed: {e}"), errno.EIO)
    return with_errno(QimgError(f"S3 {what} {where} failed: {e}"), errno.EIO)


def io_error(e: BaseException, what: str, bucket: str, key: str) -> OSError:
    """A failed transfer as the OSError the block layer reports (``error while reading at
    byte N: <this text>``)."""
    q = error(e, what, bucket, key)
    return OSError(getattr(q, "errno", None) or errno.EIO, q.message)


def failures() -> tuple[type[BaseException], ...]:
    """The exceptions a botocore request raises (to catch around every call)."""
    import botocore.exceptions as bx

    return (bx.BotoCoreError, bx.ClientError, OSError)
