"""Upload benchmark: fedimg against its floors and a naive uploader, on a moto server.

Generates (once, cached in build/bench/) a sparse raw image with a share of non-zero 512 KiB
blocks of partly compressible data, xz-compresses it, starts a moto server in its own process
and measures in one run:

  floor_xz_s      xz -dc of the file to /dev/null: the decompression floor
  floor_ingest_s  the non-zero blocks PUT raw by 16 threads, no reading or hashing: the server floor
  fedimg_s        `fedimg upload --json` of the .raw.xz (a separate process; its peak RSS measured)
  naive_s         one thread, every block sent, zeros included

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import botocore.config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fedimg.source import BLOCK_SIZE, sha256_file  # noqa: E402
from fedimg.standins.moto import moto_subprocess, reset  # noqa: E402
from fedimg.synthetic import nonzero_block, write_sparse_image  # noqa: E402

GIB = 1024**3
FEDIMG_CPU_S: list[float] = []  # CPU seconds (user + system) of each fedimg run


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": GIB}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def cached_image(size: int, fraction: float) -> tuple[Path, int]:
    """The .raw.xz (built once) and its count of non-zero blocks."""
    folder = ROOT / "build" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{size // 1024**2}M-{round(fraction * 100)}pct.x86_64"
    xz = folder / f"{stem}.raw.xz"
    meta = folder / f"{stem}.json"
    if not (xz.exists() and meta.exists()):
        raw = folder / f"{stem}.raw"
        print(f"generating {raw.name} ({size} bytes, {fraction:.0%} non-zero)…", file=sys.stderr)
        nonzero = write_sparse_image(raw, size, fraction)
        # One xz stream and block (-T1), like a plain `xz` run: decompression is single-threaded.
        subprocess.run(["xz", "-f", "-T1", "-3", str(raw)], check=True)
        meta.write_text(json.dumps({"nonzero_blocks": len(nonzero), "sha256": sha256_file(xz)}))
    return xz, json.loads(meta.read_text())["nonzero_blocks"]


def floor_xz(xz: Path) -> float:
    t = time.monotonic()
    with open(os.devnull, "wb") as null:
        subprocess.run(["xz", "-dc", str(xz)], stdout=null, check=True)
    return time.monotonic() - t


def ebs_client(url: str, threads: int) -> object:
    cfg = botocore.config.Config(max_pool_connections=threads, retries={"mode": "standard"})
    return boto3.client("ebs", region_name="us-east-1", endpoint_url=url, config=cfg)


def floor_ingest(url: str, gib: int, blocks: int, threads: int = 16) -> float:
    """The server's ingest floor: pre-made data, pre-computed checksum, 16 threads, no reading."""
    client = ebs_client(url, threads)
    snap = client.start_snapshot(VolumeSize=gib)["SnapshotId"]  # type: ignore[attr-defined]
    data = nonzero_block(random.Random(7))
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    todo = iter(range(blocks))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = next(todo, None)
            if index is None:
                return
            client.put_snapshot_block(  # type: ignore[attr-defined]
                SnapshotId=snap,
                BlockIndex=index,
                BlockData=data,
                DataLength=BLOCK_SIZE,
                Checksum=checksum,
                ChecksumAlgorithm="SHA256",
            )

    t = time.monotonic()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.monotonic() - t


def naive_upload(url: str, xz: Path, gib: int) -> float:
    """One thread, every block sent: what a straightforward uploader does."""
    import lzma

    client = ebs_client(url, 1)
    t = time.monotonic()
    snap = client.start_snapshot(VolumeSize=gib)["SnapshotId"]  # type: ignore[attr-defined]
    with lzma.open(xz) as f:
        index = 0
        while block := f.read(BLOCK_SIZE):
            block = block.ljust(BLOCK_SIZE, b"\0")
            client.put_snapshot_block(  # type: ignore[attr-defined]
                SnapshotId=snap,
                BlockIndex=index,
                BlockData=block,
                DataLength=BLOCK_SIZE,
                Checksum=base64.b64encode(hashlib.sha256(block).digest()).decode(),
                ChecksumAlgorithm="SHA256",
            )
            index += 1
    client.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=index)  # type: ignore[attr-defined]
    return time.monotonic() - t


def fedimg_upload(
    url: str, xz: Path, sha256: str, workers: int
) -> tuple[float, dict[str, object], float]:
    """Runs `fedimg upload --json` as its own process; returns (seconds, output, peak RSS MiB)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as cfg:
        cfg.write(f'[aws]\nendpoint_url = "{url}"\nupload_workers = {workers}\n')
    exe = shutil.which("fedimg", path=str(Path(sys.executable).parent)) or "fedimg"
    env = os.environ | {"FEDIMG_CONFIG": cfg.name}
    t = time.monotonic()
    proc = subprocess.Popen(
        [exe, "upload", str(xz), "--sha256", sha256, "--json"],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    os.unlink(cfg.name)
    if proc.returncode != 0:
        raise SystemExit(f"fedimg upload failed with status {proc.returncode}")
    FEDIMG_CPU_S.append(usage.ru_utime + usage.ru_stime)
    return seconds, json.loads(out), usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="2G", help="raw image size (default 2G)")
    ap.add_argument("--nonzero", type=float, default=0.25, help="share of non-zero blocks")
    ap.add_argument("--workers", type=int, default=48, help="fedimg upload workers")
    ap.add_argument("--skip-naive", action="store_true", help="skip the (slow) naive uploader")
    args = ap.parse_args()

    size = parse_size(args.size)
    xz, nonzero_blocks = cached_image(size, args.nonzero)
    sha256 = json.loads(xz.with_suffix("").with_suffix(".json").read_text())["sha256"]
    gib = -(-size // GIB)
    with moto_subprocess() as url:
        t_xz = floor_xz(xz)
        t_ingest = floor_ingest(url, gib, nonzero_blocks)
        reset(url)  # moto keeps every block in RAM
        t_fedimg, out, rss = fedimg_upload(url, xz, sha256, args.workers)
        reset(url)
        t_naive = None if args.skip_naive else naive_upload(url, xz, gib)
    floor = max(t_xz, t_ingest)
    result = {
        "image_bytes": size,
        "nonzero_bytes": nonzero_blocks * BLOCK_SIZE,
        "bytes_sent": int(out["blocks_sent"]) * BLOCK_SIZE,  # type: ignore[call-overload]
        "floor_xz_s": round(t_xz, 2),
        "floor_ingest_s": round(t_ingest, 2),
        "fedimg_s": round(t_fedimg, 2),
        "naive_s": None if t_naive is None else round(t_naive, 2),
        "ratio_to_floor": round(t_fedimg / floor, 3),
        "speedup_vs_naive": None if t_naive is None else round(t_naive / t_fedimg, 2),
        "peak_rss_mib": round(rss, 1),
        "fedimg_cpu_s": round(FEDIMG_CPU_S[-1], 2),
        "xz_bytes": xz.stat().st_size,
        "workers": args.workers,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
