"""A connection to a Ceph cluster and an I/O context on one pool, as QEMU's qemu_rbd_connect
makes it, and the location an rbd node's open options name.

Connecting is bounded: librados' ``client_mount_timeout`` is :data:`CONNECT_TIMEOUT` seconds
(``QIMG_RBD_TIMEOUT``) unless the configuration file or the name sets it (QEMU keeps librados'
300 s).
"""
from __future__ import annotations

import errno
import json
import os

from qimg.errors import QimgError, with_errno

from .bindings import as_oserror, bindings, errno_of, fail
from .names import KEYPAIRS, Location, check_location, parse_filename

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: seconds librados may take to reach the monitors (QIMG_RBD_TIMEOUT; librados' own default is 300)
CONNECT_TIMEOUT = os.environ.get("QIMG_RBD_TIMEOUT") or "30"


class Cluster:
    """A connection to a cluster and an I/O context on one pool (and namespace), as QEMU's
    qemu_rbd_connect makes it, with its messages."""

    def __init__(self, loc: Location, keypairs: str | None, secret_id: str | None) -> None:
        rados, _ = bindings()
        key_secret = loc.key_secret
        if secret_id is not None:  # (an empty id is an id: "No secret with id ''")
            if key_secret is not None:
                raise QimgError("Legacy 'password-secret' clashes with 'key-secret'")
            key_secret = secret_id
        mon_host = loc.mon_host()
        self.ioctx = None
        #: the configuration calls that succeeded, in order: (None, file) for a configuration
        #: file read, (key, value) for a setting; .direct replays them on its own connection
        self.settings: list[tuple[str | None, str | None]] = []
        try:
            self.cluster = rados.Rados(rados_id=loc.user)
        except rados.Error as e:
            raise fail("error initializing", e) from None
        try:
            self._configure(rados, loc, keypairs, mon_host, key_secret)
            try:
                self.cluster.connect()
            except rados.Error as e:
                raise fail("error connecting", e) from None
            try:
                self.ioctx = self.cluster.open_ioctx(loc.pool)
            except rados.Error as e:
                raise fail(f"error opening pool {loc.pool}", e) from None
            if loc.namespace:
                _, rbd = bindings()
                try:
                    exists = rbd.RBD().namespace_exists(self.ioctx, loc.namespace)
                except rbd.Error as e:
                    raise fail("error checking namespace", e) from None
                if not exists:
                    raise with_errno(QimgError(f"namespace '{loc.namespace}' does not exist"), errno.ENOENT)
            self.ioctx.set_namespace(loc.namespace or "")
        except BaseException:
            self.close()
            raise

    def _configure(self, rados: Any, loc: Location, keypairs: str | None, mon_host: str | None,
                   key_secret: str | None) -> None:
        c = self.cluster
        settings = self.settings
        try:
            c.conf_read_file(loc.conf)  # None: the default places, whose absence is no error
            settings.append((None, loc.conf))
        except rados.Error as e:
            if loc.conf is not None:
                raise fail(f"error reading conf file {loc.conf}", e) from None
        if keypairs:
            pairs = json.loads(keypairs)
            for key, value in zip(pairs[0::2], pairs[1::2], strict=False):
                try:
                    c.conf_set(key, value)
                except rados.Error as e:
                    raise with_errno(QimgError(f"invalid conf option {key}: {os.strerror(errno_of(e))}"),
                                     errno.EINVAL) from None
                settings.append((key, value))
        if mon_host:
            try:
                c.conf_set("mon_host", mon_host)
            except rados.Error as e:
                raise as_oserror(e) from None
            settings.append(("mon_host", mon_host))
        if key_secret is not None:
            import base64

            from qimg.secrets import get_secret

            key = base64.b64encode(get_secret(key_secret)).decode()
            try:
                c.conf_set("key", key)
            except rados.Error as e:
                raise fail("Could not set 'key'", e) from None
            settings.append(("key", key))
        if loc.auth_client_required is not None:
            modes = ";".join(loc.auth_client_required)
            try:
                c.conf_set("auth_client_required", modes)
            except rados.Error as e:
                raise fail("Could not set 'auth_client_required'", e) from None
            settings.append(("auth_client_required", modes))
        try:
            c.conf_set("rbd_cache", "true")
            settings.append(("rbd_cache", "true"))
        except rados.Error:
            pass  # (QEMU ignores this one's failure too)
        # a bounded wait for the monitors (qemu-img waits librados' 300 s) unless set otherwise
        try:
            if c.conf_get("client_mount_timeout") in ("300", "300.000000"):
                c.conf_set("client_mount_timeout", CONNECT_TIMEOUT)
                settings.append(("client_mount_timeout", CONNECT_TIMEOUT))
        except rados.Error:
            pass

    def close(self) -> None:
        if self.ioctx is not None:
            try:
                self.ioctx.close()
            except Exception:  # noqa: BLE001 - closing after a failure
                pass
            self.ioctx = None
        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            try:
                cluster.shutdown()
            except Exception:  # noqa: BLE001
                pass
            self.cluster = None


def location(options: dict[str, Any]) -> tuple[Location, str | None, str | None, str | None]:
    """(location, keypairs, password secret, the legacy file name) of open options, as QEMU's
    qemu_rbd_open reads them: the options form first; failing that, and with no librados
    pairs, a ``filename`` holding an rbd: name (deprecated, with QEMU's warning)."""
    opts = dict(options)
    keypairs = opts.pop(KEYPAIRS, None)
    secret_id = opts.pop("password-secret", None)
    try:
        return check_location(opts), keypairs, secret_id, None
    except QimgError as first:
        if keypairs is not None:
            raise
        name = opts.pop("filename", None)
        if not isinstance(name, str):
            raise
        try:
            parsed = parse_filename(name)
        except QimgError:
            raise first from None
        keypairs = parsed.pop(KEYPAIRS, None)
        opts.update(parsed)
        try:
            loc = check_location(opts)
        except QimgError:
            raise first from None
        from qimg import api

        api.report("warning: RBD options encoded in the filename as keyvalue pairs is deprecated")
        return loc, keypairs, secret_id, name


