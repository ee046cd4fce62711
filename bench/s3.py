"""``convert`` to and from S3 beside AWS's own transfer manager moving the same bytes.

    python bench/s3.py [--runs 5] [--mib 512]

Starts the tests' single-node Ceph (tests/ceph_cluster.py: radosgw on loopback) unless
``CEPH_S3_ENDPOINT`` (with ``CEPH_S3_ACCESS_KEY``/``CEPH_S3_SECRET_KEY``, and ``CEPH_CONF`` to
run radosgw's garbage collection between runs) names a running one,
makes a bucket, and times, alternating the two sides, medians of ``--runs``:

- upload: ``qimg convert -O raw local.raw s3://b/k`` (a streamed multipart upload) against
  boto3's ``upload_file`` of that file (``aws s3 cp``'s transfer manager, its defaults);
- download: ``qimg convert -O raw s3://b/k local.raw`` (ranged GETs) against ``download_file``;
- qcow2 out: ``qimg convert -O qcow2 local.raw s3://b/k.qcow2`` (through the spool) against
  ``upload_file`` of the same bytes;
- qcow2 in: ``qimg convert -O raw s3://b/k.qcow2 local.raw`` against ``download_file`` of it.

The local file holds ``--mib`` MiB of random bytes (nothing for zero detection to skip), so both
sides move the same bytes. ``python bench/s3.py xfer upload|download FILE BUCKET KEY`` is the
transfer-manager side on its own.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
MiB = 1 << 20
QIMG = [sys.executable, "-c", "import sys; from qimg_cli.main import main; sys.argv[0]='qimg'; main()"]


def _client():
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(request_checksum_calculation="when_required",
                                            response_checksum_validation="when_required"))


def xfer(direction: str, path: str, bucket: str, key: str) -> None:
    c = _client()
    if direction == "upload":
        c.upload_file(path, bucket, key)
    else:
        c.download_file(bucket, key, path)


def timed(cmd: list[str], env: dict) -> float:
    start = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True)
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {p.stderr.decode(errors='replace')}")
    return time.monotonic() - start


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "xfer":
        xfer(*sys.argv[2:6])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=512)
    args = ap.parse_args()
    cluster = None
    conf = os.environ.get("CEPH_CONF")
    if os.environ.get("CEPH_S3_ENDPOINT"):
        endpoint = os.environ["CEPH_S3_ENDPOINT"]
        keys = os.environ.get("CEPH_S3_ACCESS_KEY", "testaccess"), os.environ.get("CEPH_S3_SECRET_KEY", "testsecret")
    else:
        from ceph_cluster import Cluster

        cluster = Cluster()
        info = cluster.start()
        endpoint, keys = info.s3_endpoint, (info.s3_access_key, info.s3_secret_key)
        conf = info.conf
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=keys[0], AWS_SECRET_ACCESS_KEY=keys[1],
               AWS_DEFAULT_REGION="us-east-1")
    os.environ.update(env)
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    c = _client()
    c.create_bucket(Bucket=bucket)
    me = [sys.executable, str(Path(__file__).resolve()), "xfer"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "src.raw", Path(tmp) / "out.raw"
            with open(src, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(MiB))
            url = f"s3://{bucket}/q.raw"
            c.upload_file(str(src), bucket, "b.raw")
            subprocess.run([*QIMG, "convert", "-O", "qcow2", str(src), f"s3://{bucket}/q.qcow2"], env=env, check=True)
            cases = {
                "upload raw": ([*QIMG, "convert", "-O", "raw", str(src), url],
                               [*me, "upload", str(src), bucket, "b.raw"]),
                "download raw": ([*QIMG, "convert", "-O", "raw", url, str(out)],
                                 [*me, "download", str(out), bucket, "b.raw"]),
                "upload as qcow2": ([*QIMG, "convert", "-O", "qcow2", str(src), f"s3://{bucket}/q.qcow2"],
                                    [*me, "upload", str(src), bucket, "b.raw"]),
                "download qcow2": ([*QIMG, "convert", "-O", "raw", f"s3://{bucket}/q.qcow2", str(out)],
                                   [*me, "download", str(out), bucket, "b.raw"]),
            }
            print(f"{args.mib} MiB, {args.runs} runs each, alternating; medians (min-max)")
            print("| transfer | qimg s | boto3 transfer manager s | ratio |")
            print("| --- | --- | --- | --- |")
            for name, (ours, theirs) in cases.items():
                a, b = [], []
                for _ in range(args.runs):
                    a.append(timed(ours, env))
                    b.append(timed(theirs, env))
                    if conf:  # radosgw frees replaced objects' space later (its gc): now, so the OSD never fills
                        subprocess.run(["radosgw-admin", "-c", conf, "gc", "process", "--include-all"],
                                       capture_output=True, timeout=300)
                ma, mb = statistics.median(a), statistics.median(b)
                print(f"| {name} | {ma:.2f} ({min(a):.2f}-{max(a):.2f}) | {mb:.2f} ({min(b):.2f}-{max(b):.2f}) "
                      f"| {ma / mb:.2f} |", flush=True)
    finally:
        for o in c.list_objects_v2(Bucket=bucket).get("Contents", []):
            c.delete_object(Bucket=bucket, Key=o["Key"])
        c.delete_bucket(Bucket=bucket)
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
