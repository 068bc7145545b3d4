"""Upload benchmark: fedimg against its floors and a naive uploader, on a moto server.

Generates (once, cached in build/bench/) a sparse raw image with a share of non-zero 512 KiB
blocks of partly compressible data, xz-compresses it twice — one block (`xz -T1`, like a plain
`xz` run) and 24 MiB blocks (`xz -T2 --block-size=24MiB`, the blocks multi-threaded xz writes at
its default preset, as for Fedora's images) — starts a moto server in its own process and measures
in one run:

  floor_xz_s      xz -dc of the one-block file to /dev/null: the decompression floor
  floor_ingest_s  the non-zero blocks PUT raw by 16 threads, no reading or hashing: the server floor
  fedimg_s        `fedimg upload --json` of the one-block .raw.xz (a separate process; peak RSS)
  naive_s         one thread, every block sent, zeros included
  multi_block     the same for the multi-block file, against `xz -dc -T0` (xz's own parallel
                  decoder) as the decompression floor; fedimg decodes its blocks in parallel.
                  decode_sequential_s / decode_parallel_s: fedimg's reading, checking and
                  decoding of that file alone (no upload), with one thread and with its plan

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
from collections.abc import Callable
from pathlib import Path

import boto3
import botocore.config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fedimg import xzblocks  # noqa: E402
from fedimg.source import BLOCK_SIZE, ImageSource, sha256_file  # noqa: E402
from fedimg.standins.moto import moto_subprocess, reset  # noqa: E402
from fedimg.standins.synthetic import nonzero_block, write_sparse_image  # noqa: E402

GIB = 1024**3


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": GIB}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


# How each case is compressed: one block (-T1), or the 24 MiB blocks multi-threaded xz writes at
# its default preset (3 x the 8 MiB dictionary); -3 keeps generating the image quick.
XZ_OPTIONS = {"": ["-T1", "-3"], "-multi": ["-T2", "-3", "--block-size=24MiB"]}


def cached_image(size: int, fraction: float, case: str = "") -> tuple[Path, int]:
    """The .raw.xz of ``case`` (a key of XZ_OPTIONS; built once), its count of non-zero blocks."""
    folder = ROOT / "build" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{size // 1024**2}M-{round(fraction * 100)}pct{case}.x86_64"
    xz = folder / f"{stem}.raw.xz"
    meta = folder / f"{stem}.json"
    if not (xz.exists() and meta.exists()):
        raw = folder / f"{stem}.raw"
        print(f"generating {raw.name} ({size} bytes, {fraction:.0%} non-zero)…", file=sys.stderr)
        nonzero = write_sparse_image(raw, size, fraction)
        subprocess.run(["xz", "-f", *XZ_OPTIONS[case], str(raw)], check=True)
        meta.write_text(json.dumps({"nonzero_blocks": len(nonzero), "sha256": sha256_file(xz)}))
    return xz, json.loads(meta.read_text())["nonzero_blocks"]


def xz_facts(xz: Path) -> tuple[int, int]:
    """(blocks in the file, threads fedimg decodes it with), as `fedimg upload` will decide."""
    with ImageSource(str(xz)) as src:
        threads = src.decompress_threads
    layout = xzblocks.read_layout(xz.stat().st_size, read_at(xz), str(xz))
    return layout.block_count, threads


def read_at(path: Path) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    return read


def floor_xz(xz: Path, threads: str = "1") -> float:
    """``xz -dc -T<threads>`` to /dev/null ("0": xz's parallel decoder on every core)."""
    t = time.monotonic()
    with open(os.devnull, "wb") as null:
        subprocess.run(["xz", "-dc", f"-T{threads}", str(xz)], stdout=null, check=True)
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
) -> tuple[float, dict[str, object], float, float]:
    """Runs `fedimg upload --json` as its own process.

    Returns (seconds, its output, its peak RSS in MiB, its CPU seconds: user + system).
    """
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
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, json.loads(out), usage.ru_maxrss / 1024, cpu  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="2G", help="raw image size (default 2G)")
    ap.add_argument("--nonzero", type=float, default=0.25, help="share of non-zero blocks")
    ap.add_argument("--workers", type=int, default=48, help="fedimg upload workers")
    ap.add_argument("--skip-naive", action="store_true", help="skip the (slow) naive uploader")
    ap.add_argument(
        "--methods",
        action="store_true",
        help="also upload the same image by each method, EBS direct and S3 + ImportSnapshot\n"
        "(bench/upload_methods.py: wall time, bytes sent, requests, peak memory)",
    )
    args = ap.parse_args()

    size = parse_size(args.size)
    xz, nonzero_blocks = cached_image(size, args.nonzero)
    multi, _ = cached_image(size, args.nonzero, "-multi")
    gib = -(-size // GIB)
    with moto_subprocess() as url:
        t_xz = floor_xz(xz)
        t_ingest = floor_ingest(url, gib, nonzero_blocks)
        reset(url)  # moto keeps every block in RAM
        t_fedimg, out, rss, cpu = fedimg_upload(url, xz, sha256_of(xz), args.workers)
        reset(url)
        multi_block = multi_block_case(url, multi, t_ingest, args.workers)
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
        "fedimg_cpu_s": round(cpu, 2),
        "xz_bytes": xz.stat().st_size,
        "workers": args.workers,
        "decompress_threads": xz_facts(xz)[1],
        "multi_block": multi_block,
    }
    if args.methods:
        result["methods"] = both_methods(xz)
    print(json.dumps(result))


def both_methods(xz: Path) -> dict[str, object]:
    """The same image through each upload method, on a fresh stand-in (see upload_methods.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import upload_methods

    os.environ["FEDIMG_STANDIN_IMPORT_SECONDS"] = "0"  # AWS's import time is not modelled
    with moto_subprocess() as url:
        return {m: upload_methods.measure(m, url, xz) for m in upload_methods.METHODS}


def decode_only(xz: Path, threads: int | None) -> float:
    """Seconds for every block of ``xz``, checksum verified, nothing uploaded."""
    t = time.monotonic()
    with ImageSource(str(xz), sha256=sha256_of(xz), decompress_threads=threads) as src:
        for _ in src.blocks():
            pass
    return time.monotonic() - t


def sha256_of(xz: Path) -> str:
    return str(json.loads(xz.with_suffix("").with_suffix(".json").read_text())["sha256"])


def multi_block_case(url: str, xz: Path, t_ingest: float, workers: int) -> dict[str, object]:
    """fedimg on the multi-block file, against xz's own parallel decoder and the ingest floor."""
    blocks, threads = xz_facts(xz)
    t_xz_1 = floor_xz(xz)
    t_xz_all = floor_xz(xz, "0")
    t_fedimg, out, rss, cpu = fedimg_upload(url, xz, sha256_of(xz), workers)
    return {
        "xz_bytes": xz.stat().st_size,
        "xz_blocks": blocks,
        "decompress_threads": threads,
        "floor_xz_s": round(t_xz_1, 2),
        "floor_xz_threaded_s": round(t_xz_all, 2),
        "fedimg_s": round(t_fedimg, 2),
        "ratio_to_floor": round(t_fedimg / max(t_xz_all, t_ingest), 3),
        "decode_sequential_s": round(decode_only(xz, 1), 2),
        "decode_parallel_s": round(decode_only(xz, None), 2),
        "bytes_sent": int(out["blocks_sent"]) * BLOCK_SIZE,  # type: ignore[call-overload]
        "peak_rss_mib": round(rss, 1),
        "fedimg_cpu_s": round(cpu, 2),
    }


if __name__ == "__main__":
    main()
