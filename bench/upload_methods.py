"""Both upload methods on the same image: EBS direct against S3 + ImportSnapshot, on a moto server.

    .venv/bin/python bench/upload_methods.py [--size 256M] [--nonzero 0.3] [--runs 3]

A sparse raw image (cached in build/bench/) is xz-compressed; a moto server with the strict
stand-in runs in its own process; each method uploads the image ``--runs`` times, each run a
fresh child process (``fedimg.upload.upload_image`` to a registered AMI) against a reset server.
Per run: wall time, bytes of request bodies sent to AWS (botocore's ``before-send``), requests,
and the child's peak RSS (VmHWM: ``wait4``'s ru_maxrss would include the parent's, inherited
through fork and exec). The import task's own duration is not modelled
(``FEDIMG_STANDIN_IMPORT_SECONDS=0``): on AWS it adds the 15-100 minutes reported for
ImportSnapshot.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fedimg.standins.synthetic import write_sparse_image  # noqa: E402

METHODS = ("ebs-direct", "import-snapshot")
BUCKET = "fedimg-bench"


def image(size: int, fraction: float) -> Path:
    folder = ROOT / "build" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    xz = folder / f"methods-{size}-{fraction}.x86_64.raw.xz"
    if not xz.exists():
        raw = folder / "methods.raw"
        write_sparse_image(raw, size, fraction)
        xz.write_bytes(lzma.compress(raw.read_bytes(), preset=1))
        raw.unlink()
    return xz


def child(method: str, url: str, xz: str) -> None:
    """One upload in this process; prints its figures as JSON."""
    from fedimg.aws.clients import Clients
    from fedimg.config import Settings, validate
    from fedimg.identity import ImageIdentity
    from fedimg.source import sha256_file
    from fedimg.upload import upload_image

    s = Settings()
    s = dataclasses.replace(
        s,
        aws=dataclasses.replace(s.aws, endpoint_url=url, upload_workers=16),
        upload=dataclasses.replace(s.upload, method=method, bucket=BUCKET),
    )
    settings = validate(s)
    session = boto3.session.Session()
    sent = {"bytes": 0, "requests": 0}

    def count(request: Any, **_: Any) -> None:
        sent["bytes"] += int(request.headers.get("Content-Length", 0) or 0)
        sent["requests"] += 1

    session.events.register("before-send", count)
    identity = ImageIdentity(Path(xz).name.removesuffix(".raw.xz"), "x86_64", sha256_file(Path(xz)))
    started = time.monotonic()
    upload_image(xz, identity, settings, Clients(settings.aws, session=session))
    seconds = time.monotonic() - started
    hwm = next(
        line
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "bytes_sent": sent["bytes"],
                "requests": sent["requests"],
                "peak_rss_mib": round(int(hwm.split()[1]) / 1024, 1),
            }
        )
    )


def measure(method: str, url: str, xz: Path) -> dict[str, Any]:
    # Imported here: the child processes that are measured must not load moto.
    from fedimg.standins.aws.ec2_import import VMIMPORT_TRUST
    from fedimg.standins.moto import reset

    reset(url)
    boto3.client("s3", region_name="us-east-1", endpoint_url=url).create_bucket(Bucket=BUCKET)
    boto3.client("iam", region_name="us-east-1", endpoint_url=url).create_role(
        RoleName="vmimport", AssumeRolePolicyDocument=json.dumps(VMIMPORT_TRUST)
    )
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", method, url, str(xz)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"{method}: the upload failed")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="256M")
    parser.add_argument("--nonzero", type=float, default=0.3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "URL", "XZ"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from fedimg.standins.moto import moto_subprocess

    size = int(args.size[:-1]) * 1024**2 if args.size.endswith("M") else int(args.size)
    xz = image(size, args.nonzero)
    os.environ["FEDIMG_STANDIN_IMPORT_SECONDS"] = "0"
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    with moto_subprocess() as url:
        for _ in range(args.runs):
            for method in METHODS:  # interleaved: both see the same load on a shared machine
                r = measure(method, url, xz)
                results[method].append(r)
                print(
                    f"{method:16} {r['seconds']:7.2f} s  {r['bytes_sent'] / 1024**2:8.1f} MiB "
                    f"sent  {r['requests']:6d} requests  {r['peak_rss_mib']:7.1f} MiB peak RSS"
                )
    summary = {
        m: {
            k: [min(r[k] for r in runs), max(r[k] for r in runs)]
            for k in ("seconds", "bytes_sent", "requests", "peak_rss_mib")
        }
        for m, runs in results.items()
    }
    print(
        json.dumps(
            {
                "raw_bytes": size,
                "xz_bytes": xz.stat().st_size,
                "nonzero": args.nonzero,
                "runs": args.runs,
                "ranges": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
