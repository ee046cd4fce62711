"""A generated spelling differential for ``rbd:`` names and the rbd driver's option forms (issue 16).

Every case runs one qemu-img command line through qimg and through qemu-img (7.2 and 10.0: the
differential tests run once per oracle) against the one test cluster (the session fixture
``ceph``), and compares stdout, stderr and the exit code (tests/cli_support.py). The names come
from a table: the rbd: filename with its pool, namespace, image, snapshot and ``key=value``
pairs (``conf``, ``id``, ``mon_host`` with escaped colons and ``;``-separated hosts,
``auth_supported``, ``key``, any librados option, unknown ones), backslash escapes, empty parts
and trailing colons; the ``driver=rbd,...`` options (``--image-opts``) and ``json:`` forms with
their types (numbers for strings, arrays, objects); and the errors: a missing pool, image,
snapshot or namespace, a bad configuration file, a monitor nobody answers (librados' wait
shortened to 2 s by ``client_mount_timeout``, for both tools), a snapshot opened for writing.
Read-only names go through ``info``, ``info --output=json``, ``map --output=json``,
``snapshot -l`` and ``compare``; the commands that write (``create`` with each ``-o`` option,
``create -f qcow2``: a format layered on rbd, ``resize``, ``convert``, ``snapshot``) run on two
fresh images, one per tool, whose names are masked in the output, and the images are compared
afterwards (size, object size, features, snapshots, data).

The images are made once per module (and worker) with Ceph's own bindings and removed at the end.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import uuid

import pytest
from cli_support import assert_same, run_qemu, run_qimg_fd
from conftest import as_qemu

MIB = 1 << 20
#: the secret's bytes (a --object secret); qemu hands librados its base64 as the cephx key
SECRET = "--object", "secret,id=sec0,data=qimg-rbd-test-key"
#: a configuration that waits 2 s for the monitors (librados' default is 300 s)
SHORT = "client mount timeout = 2\n"


class World:
    """The module's images, and the values the case templates name."""

    def __init__(self, ceph, folder) -> None:
        from qimg_rbd.bindings import bindings

        self.rados, self.rbd = bindings()
        self.ceph = ceph
        self.folder = folder
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        host, port = ceph.mon_host.split(":")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = str(s.getsockname()[1])
        s.close()
        deadconf = folder / "dead.conf"
        deadconf.write_text(f"[global]\nmon host = 127.0.0.1:{dead}\n{SHORT}")
        shortconf = folder / "short.conf"
        shortconf.write_text(f"[global]\n{SHORT}")
        goodshort = folder / "good.conf"
        goodshort.write_text(open(ceph.conf).read().replace("[global]\n", f"[global]\n{SHORT}", 1))
        badconf = folder / "bad.conf"
        badconf.write_text("[global\nthis is not = a [ceph conf\n\x00")
        self.values = {
            "P": ceph.pool, "C": ceph.conf, "I": f"sp-{tag}", "S": "snap1", "N": f"ns{tag}", "NI": f"nsimg{tag}",
            "Q": f"spq-{tag}", "H": host, "PORT": port, "PORT2": str(int(port) + 1), "DEAD": dead, "M": ceph.mon_host.replace(":", "\\:"),
            "DEADCONF": str(deadconf), "SHORTCONF": str(shortconf), "GOODCONF": str(goodshort),
            "BADCONF": str(badconf), "T": str(folder), "RAW": str(folder / "img.raw"),
            "W": f"we:ird@{tag}", "WE": f"we\\:ird\\@{tag}", "B": f"back\\slash{tag}", "BE": f"back\\\\slash{tag}",
            "SL": f"sla/sh{tag}",
        }
        self.made: list[tuple[str, str]] = []  # (namespace, image)
        with self.rados.Rados(conffile=ceph.conf) as cluster:
            with cluster.open_ioctx(ceph.pool) as ioctx:
                v = self.values
                data = bytes(range(256)) * 4096  # 1 MiB
                self._image(ioctx, v["I"], 4 * MIB, [(0, data), (3 * MIB, data[:4096])])
                (folder / "img.raw").write_bytes(self._read(ioctx, v["I"]))
                with self.rbd.Image(ioctx, v["I"]) as img:
                    img.create_snap(v["S"])
                    img.write(b"\x5a" * 65536, MIB)  # the head differs from the snapshot
                (folder / "head.raw").write_bytes(self._read(ioctx, v["I"]))
                for odd in (v["W"], v["B"], v["SL"]):
                    self._image(ioctx, odd, MIB, [(0, b"odd" * 100)])
                self.rbd.RBD().namespace_create(ioctx, v["N"])
                ioctx.set_namespace(v["N"])
                self._image(ioctx, v["NI"], 2 * MIB, [(MIB, data)], namespace=v["N"])
                with self.rbd.Image(ioctx, v["NI"]) as img:
                    img.create_snap("nssnap")
                ioctx.set_namespace("")
        # a qcow2 stored in an rbd image, made by qemu-img (7.2), with some data
        self.made.append(("", v["Q"]))
        qname = f"rbd:{ceph.pool}/{v['Q']}:conf={ceph.conf}"
        for argv in (["qemu-img", "create", "-q", "-f", "qcow2", qname, "8M"],
                     ["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 64k", qname]):
            p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr

    def _image(self, ioctx, name: str, size: int, writes, namespace: str = "") -> None:
        self.rbd.RBD().create(ioctx, name, size)
        self.made.append((namespace, name))
        with self.rbd.Image(ioctx, name) as img:
            for off, data in writes:
                img.write(data, off)

    def _read(self, ioctx, name: str) -> bytes:
        with self.rbd.Image(ioctx, name, read_only=True) as img:
            return img.read(0, img.size())

    def fill(self, text: str, extra: dict[str, str]) -> str:
        values = {**self.values, **extra}
        out = text
        for key in sorted(values, key=len, reverse=True):
            out = out.replace("{" + key + "}", values[key])
        return out

    def fresh(self, name: str) -> None:
        """An image for a command that writes: 2 MiB, some data, a snapshot ``s``."""
        with self.rados.Rados(conffile=self.ceph.conf) as cluster:
            with cluster.open_ioctx(self.ceph.pool) as ioctx:
                self._image(ioctx, name, 2 * MIB, [(0, b"\x11" * 8192), (MIB + 4096, b"\x22" * 4096)])
                with self.rbd.Image(ioctx, name) as img:
                    img.create_snap("s")

    def state(self, name: str, namespace: str = "") -> tuple | None:
        """What a command left in an image: size, object order, features, snapshots, data."""
        with self.rados.Rados(conffile=self.ceph.conf) as cluster:
            with cluster.open_ioctx(self.ceph.pool) as ioctx:
                ioctx.set_namespace(namespace)
                try:
                    img = self.rbd.Image(ioctx, name, read_only=True)
                except self.rbd.ImageNotFound:
                    return None
                with img:
                    st = img.stat()
                    snaps = sorted((s["name"], s["size"]) for s in img.list_snaps())
                    digest = hashlib.sha256()
                    for off in range(0, min(st["size"], 64 * MIB), 4 * MIB):  # (a 1 TiB image is thin)
                        digest.update(img.read(off, min(4 * MIB, st["size"] - off)))
                    digest = digest.hexdigest()
                    return st["size"], st["order"], img.features(), snaps, digest

    def track(self, name: str, namespace: str = "") -> None:
        self.made.append((namespace, name))

    def cleanup(self) -> None:
        with self.rados.Rados(conffile=self.ceph.conf) as cluster:
            with cluster.open_ioctx(self.ceph.pool) as ioctx:
                for namespace, image in reversed(self.made):
                    ioctx.set_namespace(namespace)
                    try:
                        with self.rbd.Image(ioctx, image) as img:
                            for snap in list(img.list_snaps()):
                                img.remove_snap(snap["name"])
                        self.rbd.RBD().remove(ioctx, image)
                    except self.rbd.ImageNotFound:
                        pass
                ioctx.set_namespace("")
                try:
                    self.rbd.RBD().namespace_remove(ioctx, self.values["N"])
                except self.rbd.Error:
                    pass


@pytest.fixture(scope="module")
def world(ceph, tmp_path_factory):
    w = World(ceph, tmp_path_factory.mktemp("rbdspell"))
    yield w
    w.cleanup()


# -- the table ---------------------------------------------------------------------------------
R = "rbd:{P}/"
C = ":conf={C}"
#: names that open: every read command runs on them
OPENS = [
    ("plain", R + "{I}" + C),
    ("conf-first-id", R + "{I}:id=admin" + C),
    ("id-after", R + "{I}" + C + ":id=admin"),
    ("id-other-user", R + "{I}" + C + ":id=nobody"),
    ("snap", R + "{I}@{S}" + C),
    ("ns", R + "{N}/{NI}" + C),
    ("ns-snap", R + "{N}/{NI}@nssnap" + C),
    ("mon_host", R + "{I}:conf=/dev/null:mon_host={M}"),
    ("mon_host-v1", R + "{I}:conf=/dev/null:mon_host=v1\\:{M}"),
    # (lists with a monitor nobody answers are left out: whether librados finds the live one
    # within client_mount_timeout depends on its hunting, for qemu-img as for qimg)
    ("mon_host-list", R + "{I}:conf=/dev/null:mon_host={M};{M}"),
    ("mon_host-comma", R + "{I}:conf=/dev/null:mon_host={M},{M}"),
    ("mon_host-v2-v1", R + "{I}:conf=/dev/null:mon_host=[v2\\:127.0.0.1\\:{PORT2},v1\\:{M}]"),
    ("mon-host-dash", R + "{I}:conf=/dev/null:mon-host={M}"),
    ("mon_host-no-conf", R + "{I}:mon_host={M}"),
    ("auth_supported", R + "{I}" + C + ":auth_supported=none"),
    ("auth_client_required", R + "{I}" + C + ":auth_client_required=none"),
    ("key", R + "{I}" + C + ":key=AQBvZmZzZXRvZmZzZXRvZmZzZXQ="),
    ("keyring", R + "{I}" + C + ":keyring=/nonexistent/keyring"),
    ("rbd_cache", R + "{I}" + C + ":rbd_cache=false"),
    ("many-pairs", R + "{I}:id=admin" + C + ":auth_supported=none:rbd_cache=true:client_mount_timeout=20"),
    ("pairs-before-conf", R + "{I}:rbd_cache=false" + C),
    ("conf-twice", R + "{I}:conf=/nonexistent" + C),
    ("escaped-image", R + "{WE}" + C),
    ("escaped-backslash", R + "{BE}" + C),
    ("escaped-slash", R + "sla\\/sh{tag}" + C),
    ("escaped-pool", "rbd:r\\bd/{I}" + C),
    ("escaped-plain-chars", R + "\\s\\p-{tag}" + C),
    ("escaped-conf", R + "{I}:c\\onf={C}"),
    ("escaped-key", R + "{I}" + C + ":rbd\\_cache=false"),
    ("escaped-value", R + "{I}" + C + ":rbd_cache=f\\alse"),
    ("snap-escaped-at", R + "{I}@snap\\1" + C),
    ("qcow2-in-rbd", R + "{Q}" + C),
    ("legacy-json-filename", 'json:{"driver": "rbd", "filename": "rbd:{P}/{I}:conf={C}"}'),
    ("legacy-json-filename-pairs", 'json:{"driver": "rbd", "filename": "rbd:{P}/{I}:conf={C}:rbd_cache=false"}'),
    ("legacy-json-raw", 'json:{"driver": "raw", "file": {"driver": "rbd", "filename": "rbd:{P}/{I}:conf={C}"}}'),
    ("json", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}"}'),
    ("json-snap", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "snapshot": "{S}", "conf": "{C}"}'),
    ("json-ns", 'json:{"driver": "rbd", "pool": "{P}", "namespace": "{N}", "image": "{NI}", "conf": "{C}"}'),
    ("json-empty-ns", 'json:{"driver": "rbd", "pool": "{P}", "namespace": "", "image": "{I}", "conf": "{C}"}'),
    ("json-user", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "user": "admin"}'),
    ("json-server", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "/dev/null", '
                    '"server": [{"host": "{H}", "port": "{PORT}"}]}'),
    ("json-server-two", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "/dev/null", '
                        '"server": [{"host": "{H}", "port": "{PORT}"}, {"host": "127.0.0.1", "port": "{PORT}"}]}'),
    ("json-server-flat-two", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "/dev/null", '
                             '"server.0.host": "{H}", "server.0.port": "{PORT}", "server.1.host": "{H}", '
                             '"server.1.port": "{PORT}"}'),
    ("json-raw-file-server-two", 'json:{"driver": "raw", "file": {"driver": "rbd", "pool": "{P}", "image": "{I}", '
                                 '"conf": "/dev/null", "server": [{"host": "{H}", "port": "{PORT}"}, '
                                 '{"host": "{H}", "port": "{PORT}"}]}}'),
    ("opts-raw-file-server-two", "--image-opts", "driver=raw,file.driver=rbd,file.pool={P},file.image={I},"
                                 "file.conf=/dev/null,file.server.0.host={H},file.server.0.port={PORT},"
                                 "file.server.1.host={H},file.server.1.port={PORT}"),
    ("json-server-empty", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "server": []}'),
    ("json-auth", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                  '"auth-client-required": ["none"]}'),
    ("json-auth-two", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                      '"auth-client-required": ["cephx", "none"]}'),
    ("json-auth-empty", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                        '"auth-client-required": []}'),
    ("json-raw-file", 'json:{"driver": "raw", "file": {"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}"}}'),
    ("json-qcow2-file", 'json:{"driver": "qcow2", "file": {"driver": "rbd", "pool": "{P}", "image": "{Q}", '
                        '"conf": "{C}"}}'),
    ("json-key-secret", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "key-secret": "sec0"}'),
    ("opts", "--image-opts", "driver=rbd,pool={P},image={I},conf={C}"),
    ("opts-snap", "--image-opts", "driver=rbd,pool={P},image={I},snapshot={S},conf={C}"),
    ("opts-ns", "--image-opts", "driver=rbd,pool={P},namespace={N},image={NI},conf={C}"),
    ("opts-user", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},user=admin"),
    ("opts-server", "--image-opts", "driver=rbd,pool={P},image={I},conf=/dev/null,server.0.host={H},"
                    "server.0.port={PORT}"),
    ("opts-server-two", "--image-opts", "driver=rbd,pool={P},image={I},conf=/dev/null,server.0.host={H},"
                        "server.0.port={PORT},server.1.host=127.0.0.1,server.1.port={PORT}"),
    ("opts-server-three", "--image-opts", "driver=rbd,pool={P},image={I},conf=/dev/null,server.0.host={H},"
                          "server.0.port={PORT},server.1.host={H},server.1.port={PORT},server.2.host={H},"
                          "server.2.port={PORT}"),
    ("opts-key-secret", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},key-secret=sec0"),
    ("opts-auth", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},auth-client-required.0=none"),
    ("opts-auth-two", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},auth-client-required.0=cephx,"
                      "auth-client-required.1=none"),
    ("opts-raw-file", "--image-opts", "driver=raw,file.driver=rbd,file.pool={P},file.image={I},file.conf={C}"),
    ("opts-legacy-filename", "--image-opts", "driver=rbd,filename=rbd:{P}/{I}:conf={C}"),
    ("opts-legacy-filename-pairs", "--image-opts", "driver=rbd,filename=rbd:{P}/{I}:conf={C}:rbd_cache=false"),
    ("opts-raw-filename", "--image-opts", "driver=raw,file.filename=rbd:{P}/{I}:conf={C}"),
    ("opts-qcow2-file", "--image-opts", "driver=qcow2,file.driver=rbd,file.pool={P},file.image={Q},file.conf={C}"),
    ("id-twice", R + "{I}" + C + ":id=admin:id=other"),
    ("pair-named-user", R + "{I}" + C + ":user=admin"),
    ("pair-named-snapshot", R + "{I}" + C + ":snapshot={S}"),
    ("pair-log-file", R + "{I}" + C + ":log_file=/dev/null"),
    ("pair-mon-op-timeout", R + "{I}" + C + ":rados_mon_op_timeout=5"),
    ("conf-thrice", R + "{I}:conf=/nonexistent:conf=/dev/null" + C),
    ("trailing-backslash", R + "{I}" + C + "\\"),
    ("escaped-pool-slash", "rbd:{P}\\/x/{I}" + C),
    ("info-backing-chain", "--backing-chain", R + "{I}" + C),
    ("force-share", "-U", R + "{I}" + C),
    ("secret-base64-lenient", "--object", "secret,id=sb,data=abc,format=base64", "--image-opts",
     "driver=rbd,pool={P},image={I},conf={C},key-secret=sb"),
    ("opts-read-only", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},read-only=on"),
    ("opts-cache-direct", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},cache.direct=on"),
    ("opts-node-name", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},node-name=n0"),
    ("opts-discard", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},discard=unmap"),
    ("opts-detect-zeroes", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},detect-zeroes=on"),
    ("opts-force-share", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},force-share=on"),
    ("opts-empty-snapshot", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},snapshot="),
    ("opts-empty-namespace", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},namespace="),
    ("opts-empty-user", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},user="),
    ("opts-server-localhost", "--image-opts", "driver=rbd,pool={P},image={I},conf=/dev/null,server.0.host=localhost,"
                              "server.0.port={PORT}"),
    ("json-no-driver-file", 'json:{"file": {"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}"}}'),
    ("json-read-only", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "read-only": true}'),
    ("json-everything", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "user": "admin", '
                        '"snapshot": "{S}", "server": [{"host": "{H}", "port": "{PORT}"}], "namespace": ""}'),
    ("format-raw", "-f", "raw", R + "{I}" + C),
    ("format-rbd", "-f", "rbd", R + "{I}" + C),
    ("format-rbd-snap", "-f", "rbd", R + "{I}@{S}" + C),
    ("format-qcow2-layered", "-f", "qcow2", R + "{Q}" + C),
]

#: names (and option forms) that fail to open: info and map run on them
FAILS = [
    ("empty", "rbd:"),
    ("no-slash", "rbd:{P}"),
    ("no-slash-pairs", "rbd:{P}:conf={C}"),
    ("trailing-colon", R + "{I}" + C + ":"),
    ("trailing-colon-image", R + "{I}:"),
    ("double-colon", R + "{I}::conf={C}"),
    ("key-no-value", R + "{I}:conf"),
    ("key-no-value-last", R + "{I}" + C + ":rbd_cache"),
    ("empty-key", R + "{I}" + C + ":=1"),
    ("empty-value", R + "{I}" + C + ":rbd_cache="),
    ("empty-conf", R + "{I}:conf="),
    ("empty-id", R + "{I}" + C + ":id="),
    ("empty-image", R + "" + C),
    ("empty-pool", "rbd:/{I}" + C),
    ("empty-snap", R + "{I}@" + C),
    ("empty-namespace", R + "/{I}" + C),
    ("no-conf", R + "{I}"),
    ("unknown-key", R + "{I}" + C + ":no_such_option=1"),
    ("unknown-key-dash", R + "{I}" + C + ":no-such-option=1"),
    ("bad-value", R + "{I}" + C + ":rbd_cache=maybe"),
    ("bad-number", R + "{I}" + C + ":client_mount_timeout=soon"),
    ("value-with-equals", R + "{I}" + C + ":rbd_cache=tr=ue"),
    ("missing-pool", "rbd:nopool{tag}/{I}" + C),
    ("missing-image", R + "noimage{tag}" + C),
    ("missing-snap", R + "{I}@nosnap" + C),
    ("snap-of-snap", R + "{I}@{S}@x" + C),
    ("missing-namespace", R + "nons{tag}/{I}" + C),
    ("image-not-in-namespace", R + "{N}/{I}" + C),
    ("deep-path", R + "{N}/a/b" + C),
    ("unescaped-odd", R + "{W}" + C),
    ("bad-conf-path", R + "{I}:conf=/nonexistent/ceph.conf"),
    ("conf-directory", R + "{I}:conf={T}"),
    ("conf-garbage", R + "{I}:conf={BADCONF}"),
    ("dead-monitor", R + "{I}:conf={DEADCONF}"),
    ("dead-mon_host", R + "{I}:conf={SHORTCONF}:mon_host=127.0.0.1\\:{DEAD}"),
    ("mon_host-garbage", R + "{I}:conf=/dev/null:mon_host=not a host"),
    ("mon_host-unescaped", R + "{I}:conf=/dev/null:mon_host={H}:{PORT}"),
    ("auth-cephx", R + "{I}:conf={GOODCONF}:auth_supported=cephx"),
    ("auth-bogus", R + "{I}" + C + ":auth_supported=bogus"),
    ("qcow2-as-raw-snap", R + "{Q}@nosnap" + C),
    ("json-missing-pool", 'json:{"driver": "rbd", "image": "{I}", "conf": "{C}"}'),
    ("json-missing-image", 'json:{"driver": "rbd", "pool": "{P}", "conf": "{C}"}'),
    ("json-pool-number", 'json:{"driver": "rbd", "pool": 5, "image": "{I}", "conf": "{C}"}'),
    ("json-image-bool", 'json:{"driver": "rbd", "pool": "{P}", "image": true, "conf": "{C}"}'),
    ("json-conf-null", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": null}'),
    ("json-pool-null", 'json:{"driver": "rbd", "pool": null, "image": "{I}", "conf": "{C}"}'),
    ("json-server-host-null", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                              '"server": [{"host": null, "port": "{PORT}"}]}'),
    ("json-auth-null", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                       '"auth-client-required": [null]}'),
    ("json-auth-object", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                         '"auth-client-required": {"a": "none"}}'),
    ("json-snapshot-number", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "snapshot": 1}'),
    ("json-user-list", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "user": ["a"]}'),
    ("json-image-object", 'json:{"driver": "rbd", "pool": "{P}", "image": {"a": "b"}, "conf": "{C}"}'),
    ("opts-image-member", "--image-opts", "driver=rbd,pool={P},image.a={I},conf={C}"),
    ("json-server-object", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                           '"server": {"host": "{H}", "port": "{PORT}"}}'),
    ("json-server-port-number", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "/dev/null", '
                                '"server": [{"host": "{H}", "port": {PORT}}]}'),
    ("json-server-no-port", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                            '"server": [{"host": "{H}"}]}'),
    ("json-server-extra", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                          '"server": [{"host": "{H}", "port": "{PORT}", "ipv4": "on"}]}'),
    ("json-server-string", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "server": "x"}'),
    ("json-server-dead", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{SHORTCONF}", '
                         '"server": [{"host": "127.0.0.1", "port": "{DEAD}"}]}'),
    ("json-auth-string", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                         '"auth-client-required": "none"}'),
    ("json-auth-bogus", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                        '"auth-client-required": ["bogus"]}'),
    ("json-auth-number", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                         '"auth-client-required": [1]}'),
    ("json-key-secret-missing", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                                '"key-secret": "nosuch"}'),
    ("json-password-secret", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                             '"password-secret": "nosuch"}'),
    ("json-both-secrets", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                          '"password-secret": "sec0", "key-secret": "sec0"}'),
    ("json-unknown", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "bogus": 1}'),
    ("json-encrypt-no-key", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                            '"encrypt": {"format": "luks"}}'),
    ("json-encrypt-bad-format", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                                '"encrypt": {"format": "rot13", "key-secret": "sec0"}}'),
    ("json-encrypt-not-luks", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                              '"encrypt": {"format": "luks", "key-secret": "sec0"}}'),
    ("json-missing-image-in-pool", 'json:{"driver": "rbd", "pool": "{P}", "image": "noimage{tag}", "conf": "{C}"}'),
    ("json-missing-ns", 'json:{"driver": "rbd", "pool": "{P}", "namespace": "nons", "image": "{I}", "conf": "{C}"}'),
    ("json-legacy-and-pool", 'json:{"driver": "rbd", "pool": "{P}", "filename": "rbd:{P}/{I}:conf={C}"}'),
    # (a "filename" that is no rbd: name, or one without a pool, beside no other option: qemu-img
    # 7.2 and 10.0 crash (SIGSEGV) after their deprecation warning; docs/protocols/rbd.md)
    ("pair-mon_host-empty", R + "{I}" + C + ":mon_host="),
    ("pair-empty-key-value", R + "{I}" + C + ":="),
    ("pair-empty", R + "{I}" + C + "::"),
    ("pair-key-only", R + "{I}" + C + ":key"),
    ("pair-id-only", R + "{I}" + C + ":id"),
    ("pair-two-equals", R + "{I}" + C + ":a=b=c"),
    ("url-like", "rbd://{P}/{I}" + C),
    ("upper-prefix", "RBD:{P}/{I}" + C),
    ("snap-trailing-at", R + "{I}@{S}@" + C),
    ("keyring-cephx", R + "{I}:conf={GOODCONF}:keyring=/nonexistent:auth_client_required=cephx"),
    ("opts-password-secret-empty", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},password-secret="),
    ("opts-key-secret-empty", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},key-secret="),
    ("secret-base64-invalid", "--object", "secret,id=sb,data=ab!c,format=base64", "--image-opts",
     "driver=rbd,pool={P},image={I},conf={C},key-secret=sb"),
    ("secret-file-missing", "--object", "secret,id=sb,file=/nonexistent/key", "--image-opts",
     "driver=rbd,pool={P},image={I},conf={C},key-secret=sb"),
    ("secret-file-folder", "--object", "secret,id=sb,file={T}", "--image-opts",
     "driver=rbd,pool={P},image={I},conf={C},key-secret=sb"),
    ("opts-server-port-text", "--image-opts", "driver=rbd,pool={P},image={I},conf=/dev/null,server.0.host={H},"
                              "server.0.port=abc"),
    ("opts-server-empty-values", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},server.0.host=,"
                                 "server.0.port="),
    ("opts-with-format", "-f", "raw", "--image-opts", "driver=rbd,pool={P},image={I},conf={C}"),
    ("opts-filename-and-pool", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},filename=rbd:x/y"),
    ("json-encrypt-luks-any", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                              '"encrypt": {"format": "luks-any", "key-secret": "sec0"}}'),
    ("json-encrypt-luks2", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                           '"encrypt": {"format": "luks2", "key-secret": "sec0"}}'),
    ("json-encrypt-parent", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                            '"encrypt": {"format": "luks", "key-secret": "sec0", '
                            '"parent": {"format": "luks", "key-secret": "sec0"}}}'),
    ("json-encrypt-parent-incomplete", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                                       '"encrypt": {"format": "luks", "key-secret": "sec0", "parent": {"format": "luks"}}}'),
    ("json-encrypt-parent-string", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                                   '"encrypt": {"format": "luks", "key-secret": "sec0", "parent": "x"}}'),
    ("json-encrypt-extra", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", '
                           '"encrypt": {"format": "luks", "key-secret": "sec0", "bogus": 1}}'),
    ("json-encrypt-string", 'json:{"driver": "rbd", "pool": "{P}", "image": "{I}", "conf": "{C}", "encrypt": "luks"}'),
    ("opts-missing-pool", "--image-opts", "driver=rbd,image={I},conf={C}"),
    ("opts-missing-image", "--image-opts", "driver=rbd,pool={P},conf={C}"),
    ("opts-empty-pool", "--image-opts", "driver=rbd,pool=,image={I},conf={C}"),
    ("opts-empty-image", "--image-opts", "driver=rbd,pool={P},image=,conf={C}"),
    ("opts-no-conf", "--image-opts", "driver=rbd,pool={P},image={I}"),
    ("opts-bad-conf", "--image-opts", "driver=rbd,pool={P},image={I},conf=/nonexistent"),
    ("opts-unknown", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},bogus=1"),
    ("opts-server-no-port", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},server.0.host={H}"),
    ("opts-server-gap", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},server.1.host={H},"
                        "server.1.port={PORT}"),
    ("opts-server-name", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},server.x.host={H}"),
    ("opts-server-plain", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},server={H}"),
    ("opts-server-dead", "--image-opts", "driver=rbd,pool={P},image={I},conf={SHORTCONF},server.0.host=127.0.0.1,"
                         "server.0.port={DEAD}"),
    ("opts-auth-plain", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},auth-client-required=none"),
    ("opts-auth-bogus", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},auth-client-required.0=x"),
    ("opts-auth-gap", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},auth-client-required.1=none"),
    ("opts-key-secret-missing", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},key-secret=nosuch"),
    ("opts-password-secret", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},password-secret=nosuch"),
    ("opts-encrypt-no-format", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},encrypt.key-secret=sec0"),
    ("opts-encrypt-plain", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},encrypt=luks"),
    ("opts-missing-snap", "--image-opts", "driver=rbd,pool={P},image={I},conf={C},snapshot=nosnap"),
    ("opts-legacy-keypairs-mixed", "--image-opts", "driver=rbd,pool={P},filename=rbd:{P}/{I}:conf={C}"),
    ("opts-raw-missing-image", "--image-opts", "driver=raw,file.driver=rbd,file.pool={P},file.conf={C}"),
    ("format-qcow2-on-raw", "-f", "qcow2", R + "{I}" + C),
    ("format-vmdk-on-raw", "-f", "vmdk", R + "{I}" + C),
    ("format-rbd-on-qcow2-missing", "-f", "rbd", R + "noimage{tag}" + C),
]

#: differences not fixed yet (strict: a case that starts to pass fails, to be moved out of here)
KNOWN = {
    # qimg's core drops a JSON null before the driver sees it (QEMU's visitor: "Internal error:
    # parameter conf invalid")
    "json-conf-null": "json null", "json-pool-null": "json null", "json-server-host-null": "json null",
    "json-auth-null": "json null",
}

#: the failing names map runs on too
MAP_FAILS = {"empty", "trailing-colon", "key-no-value", "unknown-key", "missing-pool", "missing-image", "missing-snap",
             "missing-namespace", "bad-conf-path", "dead-monitor", "no-conf", "json-missing-pool", "json-unknown",
             "opts-server-gap", "opts-auth-bogus", "format-qcow2-on-raw"}

READ_COMMANDS = {
    "info": ["info"],
    "info-json": ["info", "--output=json"],
    "map-json": ["map", "--output=json"],
    "snapshot-l": ["snapshot", "-l"],
    "compare": ["compare"],
}


def _split(entry: tuple) -> tuple[str, list[str]]:
    return entry[0], list(entry[1:])


def _known(tag: str, cmd: str) -> list:
    reason = KNOWN.get(tag)
    if reason is None:
        return []
    return [pytest.mark.xfail(strict=True, reason=reason)]


def _read_cases() -> list:
    out = []
    for entry in OPENS:
        tag, name = _split(entry)
        for cmd, argv in READ_COMMANDS.items():
            if cmd in ("snapshot-l", "compare") and ("--image-opts" in name or any(a.startswith("json:") for a in name)):
                if tag not in ("opts", "json", "json-raw-file", "opts-snap", "json-snap", "opts-qcow2-file",
                               "legacy-json-filename", "opts-legacy-filename"):
                    continue  # (a few are enough: once open, they all list and read the same way)
            args = [*argv, *name]
            if cmd == "compare":
                args = [*args, "{RAW}"]
            out.append(pytest.param(args, id=f"{tag}-{cmd}", marks=_known(tag, cmd)))
    for entry in FAILS:
        tag, name = _split(entry)
        # (map fails as info does: one each of the kinds of failure is enough)
        for cmd in ("info", "map-json") if tag in MAP_FAILS else ("info",):
            out.append(pytest.param([*READ_COMMANDS[cmd], *name], id=f"{tag}-{cmd}", marks=_known(tag, cmd)))
    return out


def _case_args(world: World, args: list[str]) -> list[str]:
    out = [world.fill(a, {"tag": world.tag}) for a in args]
    if any("sec0" in a for a in out):  # the secret's --object goes after the subcommand
        out = [out[0], *SECRET, *out[1:]]
    return out


@pytest.mark.parametrize("args", _read_cases())
def test_read(world, tmp_path, args):
    """qimg reads every name as qemu-img: the same output and exit code."""
    argv = _case_args(world, args)
    theirs = run_qemu(*argv, cwd=tmp_path)
    assert_same(run_qimg_fd(*argv, cwd=tmp_path), theirs)


#: commands that write: {NEW} names an image that does not exist, {FRESH} one made for the case
#: (2 MiB, a snapshot 's'), {OUT} a local file; each tool gets its own
WRITES = [
    ("create-raw", ["create", "-f", "raw", R + "{NEW}" + C, "1M"]),
    ("create-default-format", ["create", R + "{NEW}" + C, "1M"]),
    ("create-rbd", ["create", "-f", "rbd", R + "{NEW}" + C, "3M"]),
    ("create-quiet", ["create", "-q", "-f", "raw", R + "{NEW}" + C, "1M"]),
    ("create-unaligned", ["create", "-f", "raw", R + "{NEW}" + C, "1000"]),
    ("create-zero", ["create", "-f", "raw", R + "{NEW}" + C, "0"]),
    ("create-no-size", ["create", "-f", "raw", R + "{NEW}" + C]),
    ("create-size-option", ["create", "-f", "raw", "-o", "size=2M", R + "{NEW}" + C]),
    ("create-cluster-1M", ["create", "-f", "raw", "-o", "cluster_size=1M", R + "{NEW}" + C, "5M"]),
    ("create-cluster-4k", ["create", "-f", "raw", "-o", "cluster_size=4k", R + "{NEW}" + C, "64k"]),
    ("create-cluster-32M", ["create", "-f", "rbd", "-o", "cluster_size=32M", R + "{NEW}" + C, "64M"]),
    ("create-cluster-not-pow2", ["create", "-f", "raw", "-o", "cluster_size=3000", R + "{NEW}" + C, "1M"]),
    ("create-cluster-small", ["create", "-f", "raw", "-o", "cluster_size=2048", R + "{NEW}" + C, "1M"]),
    ("create-cluster-zero", ["create", "-f", "raw", "-o", "cluster_size=0", R + "{NEW}" + C, "1M"]),
    ("create-cluster-bad", ["create", "-f", "raw", "-o", "cluster_size=big", R + "{NEW}" + C, "1M"]),
    ("create-prealloc-off", ["create", "-f", "raw", "-o", "preallocation=off", R + "{NEW}" + C, "1M"]),
    ("create-prealloc-full", ["create", "-f", "raw", "-o", "preallocation=full", R + "{NEW}" + C, "1M"]),
    ("create-rbd-prealloc", ["create", "-f", "rbd", "-o", "preallocation=off", R + "{NEW}" + C, "1M"]),
    ("create-unknown-option", ["create", "-f", "rbd", "-o", "bogus=1", R + "{NEW}" + C, "1M"]),
    ("create-help-raw", ["create", "-f", "raw", "-o", "help", R + "{NEW}" + C, "1M"]),
    ("create-help-rbd", ["create", "-f", "rbd", "-o", "help", R + "{NEW}" + C, "1M"]),
    ("create-help-qcow2", ["create", "-f", "qcow2", "-o", "help", R + "{NEW}" + C, "1M"]),
    ("create-help-with-value", ["create", "-f", "rbd", "-o", "cluster_size=1M,help", R + "{NEW}" + C, "1M"]),
    ("create-password-secret", ["create", "-f", "rbd", "-o", "password-secret=sec0", R + "{NEW}" + C, "1M"]),
    ("create-password-secret-missing", ["create", "-f", "rbd", "-o", "password-secret=nosuch", R + "{NEW}" + C,
                                        "1M"]),
    ("create-encrypt-no-key", ["create", "-f", "rbd", "-o", "encrypt.format=luks", R + "{NEW}" + C, "1M"]),
    ("create-encrypt-bad-format", ["create", "-f", "rbd", "-o", "encrypt.format=rot13,encrypt.key-secret=sec0",
                                   R + "{NEW}" + C, "1M"]),
    ("create-encrypt-bad-cipher", ["create", "-f", "rbd", "-o",
                                   "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=des",
                                   R + "{NEW}" + C, "1M"]),
    ("create-encrypt-missing-secret", ["create", "-f", "rbd", "-o", "encrypt.format=luks,encrypt.key-secret=nosuch",
                                       R + "{NEW}" + C, "1M"]),
    ("create-encrypt-cipher-only", ["create", "-f", "rbd", "-o", "encrypt.cipher-alg=aes-256", R + "{NEW}" + C,
                                    "1M"]),
    ("create-qcow2", ["create", "-f", "qcow2", R + "{NEW}" + C, "16M"]),
    ("create-qcow2-cluster", ["create", "-f", "qcow2", "-o", "cluster_size=4k", R + "{NEW}" + C, "16M"]),
    ("create-qcow2-prealloc", ["create", "-f", "qcow2", "-o", "preallocation=metadata", R + "{NEW}" + C, "4M"]),
    ("create-qcow2-prealloc-full", ["create", "-f", "qcow2", "-o", "preallocation=full", R + "{NEW}" + C, "1M"]),
    ("create-qcow2-prealloc-falloc", ["create", "-f", "qcow2", "-o", "preallocation=falloc", R + "{NEW}" + C, "1M"]),
    ("create-size-1T", ["create", "-f", "rbd", R + "{NEW}" + C, "1T"]),
    ("create-cluster-1G", ["create", "-f", "rbd", "-o", "cluster_size=1G", R + "{NEW}" + C, "1M"]),
    ("create-cluster-negative", ["create", "-f", "rbd", "-o", "cluster_size=-4096", R + "{NEW}" + C, "1M"]),
    ("create-default-features", ["create", "-f", "raw", R + "{NEW}" + C + ":rbd_default_features=1", "1M"]),
    ("create-default-order", ["create", "-f", "raw", R + "{NEW}" + C + ":rbd_default_order=20", "1M"]),
    ("create-size-both", ["create", "-f", "raw", "-o", "size=1M", R + "{NEW}" + C, "2M"]),
    ("create-encrypt-luks-any", ["create", "-f", "rbd", "-o", "encrypt.format=luks-any", R + "{NEW}" + C, "1M"]),
    ("create-encrypt-luks-any-key", ["create", "-f", "rbd", "-o", "encrypt.format=luks-any,encrypt.key-secret=sec0",
                                     R + "{NEW}" + C, "1M"]),
    ("create-encrypt-extra", ["create", "-f", "rbd", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.x=1",
                              R + "{NEW}" + C, "1M"]),
    ("create-encrypt-aes-192", ["create", "-f", "rbd", "-o",
                                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-192",
                                R + "{NEW}" + C, "1M"]),
    ("create-encrypt-sm4", ["create", "-f", "rbd", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=sm4",
                            R + "{NEW}" + C, "1M"]),
    ("create-qcow2-backing", ["create", "-f", "qcow2", "-b", R + "{I}" + C, "-F", "raw", R + "{NEW}" + C]),
    # (vmdk, vpc and luks images hold random identifiers, a time or keys: their data differ)
    # a relative backing name is combined with the image's name as a string (QEMU's path_combine):
    # rbd:pool/new:conf=/folder/base.img
    ("create-qcow2-relative-backing", ["create", "-f", "qcow2", "-b", "rel.img", "-F", "raw", R + "{NEW}" + C, "1M"]),
    ("create-qcow2-relative-backing-unsafe", ["create", "-f", "qcow2", "-u", "-b", "rel.img", "-F", "raw",
                                              R + "{NEW}" + C, "1M"]),
    ("create-qcow2-relative-rbd-backing", ["create", "-f", "qcow2", "-b", "{I}" + C, "-F", "raw", R + "{NEW}" + C]),
    ("create-vmdk", ["create", "-f", "vmdk", R + "{NEW}" + C, "4M"]),
    ("create-vpc", ["create", "-f", "vpc", R + "{NEW}" + C, "4M"]),
    ("create-luks-format-layered", ["create", "-f", "luks", "--object", "secret,id=k,data=x", "-o", "key-secret=k",
                                    R + "{NEW}" + C, "4M"]),
    ("create-pairs", ["create", "-f", "raw", R + "{NEW}" + C + ":rbd_cache=false:id=admin", "1M"]),
    ("create-mon_host", ["create", "-f", "raw", R + "{NEW}:conf=/dev/null:mon_host={M}", "1M"]),
    ("create-ns", ["create", "-f", "raw", R + "{N}/{NEW}" + C, "1M"]),
    ("create-escaped", ["create", "-f", "raw", R + "{NEW}\\:x" + C, "1M"]),
    ("create-snapshot-name", ["create", "-f", "raw", R + "{NEW}@s1" + C, "1M"]),
    ("create-exists", ["create", "-f", "raw", R + "{FRESH}" + C, "1M"]),
    ("create-missing-pool", ["create", "-f", "raw", "rbd:nopool{tag}/{NEW}" + C, "1M"]),
    ("create-missing-ns", ["create", "-f", "raw", R + "nons/{NEW}" + C, "1M"]),
    ("create-no-pool", ["create", "-f", "raw", "rbd:{NEW}" + C, "1M"]),
    ("create-empty-image", ["create", "-f", "raw", R + C, "1M"]),
    ("create-unknown-key", ["create", "-f", "raw", R + "{NEW}" + C + ":no_such_option=1", "1M"]),
    ("create-trailing-colon", ["create", "-f", "raw", R + "{NEW}" + C + ":", "1M"]),
    ("create-bad-conf", ["create", "-f", "raw", R + "{NEW}:conf=/nonexistent", "1M"]),
    ("create-no-conf", ["create", "-f", "raw", R + "{NEW}", "1M"]),
    ("create-dead-monitor", ["create", "-f", "raw", R + "{NEW}:conf={DEADCONF}", "1M"]),
    ("create-json", ["create", "-f", "raw", 'json:{"driver": "rbd", "pool": "{P}", "image": "{NEW}", "conf": "{C}"}',
                     "1M"]),
    ("resize-grow", ["resize", R + "{FRESH}" + C, "4M"]),
    ("resize-plus", ["resize", "-f", "raw", R + "{FRESH}" + C, "+1M"]),
    ("resize-rbd", ["resize", "-f", "rbd", R + "{FRESH}" + C, "3M"]),
    ("resize-shrink-refused", ["resize", "-f", "raw", R + "{FRESH}" + C, "1M"]),
    ("resize-shrink", ["resize", "--shrink", "-f", "raw", R + "{FRESH}" + C, "1M"]),
    ("resize-minus", ["resize", "--shrink", R + "{FRESH}" + C, "--", "-1M"]),
    ("resize-unaligned", ["resize", "-f", "raw", R + "{FRESH}" + C, "3000000"]),
    ("resize-snapshot", ["resize", R + "{FRESH}@s" + C, "4M"]),
    ("resize-snapshot-rbd", ["resize", "-f", "rbd", R + "{FRESH}@s" + C, "4M"]),
    ("resize-opts", ["resize", "--image-opts", "driver=rbd,pool={P},image={FRESH},conf={C}", "4M"]),
    ("resize-opts-snapshot", ["resize", "--image-opts", "driver=rbd,pool={P},image={FRESH},snapshot=s,conf={C}",
                              "4M"]),
    ("resize-prealloc-falloc", ["resize", "--preallocation=falloc", "-f", "raw", R + "{FRESH}" + C, "4M"]),
    ("resize-prealloc-metadata", ["resize", "--preallocation=metadata", "-f", "raw", R + "{FRESH}" + C, "4M"]),
    ("resize-prealloc-off", ["resize", "--preallocation=off", "-f", "raw", R + "{FRESH}" + C, "4M"]),
    ("resize-same", ["resize", "-q", "-f", "raw", R + "{FRESH}" + C, "+0"]),
    ("resize-missing", ["resize", R + "{NEW}" + C, "4M"]),
    ("resize-prealloc", ["resize", "--preallocation=full", "-f", "raw", R + "{FRESH}" + C, "4M"]),
    ("convert-to-new", ["convert", "-O", "raw", "{RAW}", R + "{NEW}" + C]),
    ("convert-to-new-rbd", ["convert", "-O", "rbd", "{RAW}", R + "{NEW}" + C]),
    ("convert-to-new-cluster", ["convert", "-O", "raw", "-o", "cluster_size=1M", "{RAW}", R + "{NEW}" + C]),
    ("convert-to-qcow2", ["convert", "-O", "qcow2", "{RAW}", R + "{NEW}" + C]),
    ("convert-to-ns", ["convert", "-O", "raw", "{RAW}", R + "{N}/{NEW}" + C]),
    ("convert-to-existing", ["convert", "-O", "raw", "{RAW}", R + "{FRESH}" + C]),
    ("convert-n", ["convert", "-n", "-O", "raw", "{RAW}", R + "{FRESH}" + C]),
    ("convert-n-snapshot", ["convert", "-n", "-O", "raw", "{RAW}", R + "{FRESH}@s" + C]),
    ("convert-n-opts", ["convert", "-n", "--target-image-opts", "{RAW}",
                        "driver=raw,file.driver=rbd,file.pool={P},file.image={FRESH},file.conf={C}"]),
    ("convert-rbd-to-rbd", ["convert", "-O", "raw", R + "{I}" + C, R + "{NEW}" + C]),
    ("convert-snap-to-rbd", ["convert", "-O", "raw", R + "{I}@{S}" + C, R + "{NEW}" + C]),
    ("convert-from-rbd", ["convert", "-O", "raw", R + "{I}" + C, "{OUT}"]),
    ("convert-from-rbd-qcow2", ["convert", "-O", "qcow2", R + "{I}@{S}" + C, "{OUT}"]),
    ("convert-from-ns", ["convert", "-O", "raw", R + "{N}/{NI}" + C, "{OUT}"]),
    ("convert-from-layered", ["convert", "-O", "raw", R + "{Q}" + C, "{OUT}"]),
    ("convert-from-opts", ["convert", "--image-opts", "-O", "raw", "driver=rbd,pool={P},image={I},conf={C}",
                           "{OUT}"]),
    ("convert-missing-pool", ["convert", "-O", "raw", "{RAW}", "rbd:nopool{tag}/{NEW}" + C]),
    ("convert-bad-target", ["convert", "-O", "raw", "{RAW}", R + "{NEW}" + C + ":no_such_option=1"]),
    ("convert-from-missing", ["convert", "-O", "raw", R + "noimage{tag}" + C, "{OUT}"]),
    ("snapshot-create", ["snapshot", "-c", "t1", R + "{FRESH}" + C]),
    ("snapshot-create-on-snap", ["snapshot", "-c", "t1", R + "{FRESH}@s" + C]),
    ("snapshot-create-exists", ["snapshot", "-c", "s", R + "{FRESH}" + C]),
    ("snapshot-delete", ["snapshot", "-d", "s", R + "{FRESH}" + C]),
    ("snapshot-delete-missing", ["snapshot", "-d", "nosnap", R + "{FRESH}" + C]),
    ("snapshot-apply", ["snapshot", "-a", "s", R + "{FRESH}" + C]),
    ("snapshot-apply-missing", ["snapshot", "-a", "nosnap", R + "{FRESH}" + C]),
    ("snapshot-list-fresh", ["snapshot", "-l", R + "{FRESH}" + C]),
    ("commit-raw", ["commit", R + "{FRESH}" + C]),
    ("amend-raw", ["amend", "-f", "raw", "-o", "size=4M", R + "{FRESH}" + C]),
    ("check-raw", ["check", R + "{FRESH}" + C]),
    ("rebase-raw", ["rebase", "-u", "-b", "", R + "{FRESH}" + C]),
    ("measure", ["measure", "-O", "qcow2", R + "{FRESH}" + C]),
    ("bench-write", ["bench", "-w", "-c", "4", "-s", "4k", R + "{FRESH}" + C]),
    ("dd-from", ["dd", "if=" + R + "{FRESH}" + C, "of={OUT}", "bs=64k"]),
]


@pytest.mark.parametrize("args", [pytest.param(a, id=t) for t, a in WRITES])
def test_write(world, tmp_path, args):
    """Commands that write, each tool on its own images: the same output and exit code, and the
    same images afterwards."""
    extra = {"tag": world.tag}
    sides = {}
    for side in ("qemu", "qimg"):
        new = f"spn-{uuid.uuid4().hex[:10]}"
        fresh = f"spf-{uuid.uuid4().hex[:10]}"
        out = str(tmp_path / f"out-{side}.img")
        world.track(new)
        world.track(new + ":x")
        world.track(new + "@s1")
        world.track(new, world.values["N"])
        if any("{FRESH}" in a for a in args):
            world.fresh(fresh)
        sides[side] = {"NEW": new, "FRESH": fresh, "OUT": out}
    results = {}
    for side in ("qemu", "qimg"):
        argv = _case_args(world, [world.fill(a, {**extra, **sides[side]}) for a in args])
        results[side] = (run_qemu if side == "qemu" else run_qimg_fd)(*argv, cwd=tmp_path)
    mine, theirs = results["qimg"], results["qemu"]

    def masked(text: str) -> str:
        for key in ("NEW", "FRESH", "OUT"):
            text = text.replace(sides["qimg"][key], sides["qemu"][key])
        return text

    a = (mine.returncode, masked(as_qemu(mine.stdout)), masked(as_qemu(mine.stderr)))
    b = (theirs.returncode, theirs.stdout, theirs.stderr)
    if args[0] == "bench":  # the timing line differs between any two runs
        a = (a[0], a[1].split("Run completed")[0], a[2])
        b = (b[0], b[1].split("Run completed")[0], b[2])
    assert a == b, f"\nqimg:     {a!r}\nqemu-img: {b!r}"
    # the same images afterwards
    random = any(a in ("vmdk", "vpc", "luks") for a in args)
    for key in ("NEW", "FRESH"):
        for namespace in ("", world.values["N"]):
            a, b = world.state(sides["qimg"][key], namespace), world.state(sides["qemu"][key], namespace)
            if random and a is not None and b is not None:
                a, b = a[:-1], b[:-1]
            assert a == b, (key, namespace)
    if os.path.exists(sides["qemu"]["OUT"]) or os.path.exists(sides["qimg"]["OUT"]):
        with open(sides["qemu"]["OUT"], "rb") as f:
            theirs_out = f.read()
        with open(sides["qimg"]["OUT"], "rb") as f:
            assert f.read() == theirs_out
