"""Pipeline benchmark: one compose with 2 images, published to 1 and to 20 regions on moto.

Regions are copied and published concurrently, so 20 regions should cost little more than one:
``region_scaling = t20 / t1`` (target <= 2.0). The moto server runs in its own process; the boot
test is off (moto cannot boot instances) and so is the deprecation time (moto lacks the API).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fedimg.aws.clients import Clients  # noqa: E402
from fedimg.config import Settings, validate  # noqa: E402
from fedimg.pipeline import Pipeline  # noqa: E402
from fedimg.source import BLOCK_SIZE  # noqa: E402
from fedimg.standins.moto import moto_subprocess, reset  # noqa: E402
from fedimg.standins.samplecompose import build_sample_compose, serve_directory  # noqa: E402
from fedimg.standins.synthetic import write_sparse_image  # noqa: E402

REGIONS = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "sa-east-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "eu-south-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-east-1",
    "me-south-1",
]


def run(url: str, compose: str, regions: tuple[str, ...]) -> tuple[float, Counter[str]]:
    s = Settings()
    s = validate(
        dataclasses.replace(
            s,
            aws=dataclasses.replace(s.aws, endpoint_url=url, regions=regions, max_attempts=2),
            test=dataclasses.replace(s.test, enabled=False),
            publish=dataclasses.replace(s.publish, deprecate_after_days=0),
            messaging=dataclasses.replace(s.messaging, publish=False),
        )
    )
    session = boto3.session.Session()
    calls: Counter[str] = Counter()

    def count(model: Any, **kw: Any) -> None:
        calls[kw["context"]["client_region"]] += 1

    session.events.register("before-call", count)
    pipeline = Pipeline(s, Clients(s.aws, session=session))
    t = time.monotonic()
    outcome = pipeline.run_compose(compose)
    seconds = time.monotonic() - t
    if not outcome.ok:
        raise SystemExit(f"pipeline failed: {[i.error for i in outcome.images]}")
    return seconds, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image-mib", type=int, default=64, help="raw size of each image")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = root / "disk.raw"
        write_sparse_image(raw, args.image_mib * 1024 * 1024, 0.25)
        xz = root / "disk.raw.xz"
        xz.write_bytes(lzma.compress(raw.read_bytes(), preset=1))
        build_sample_compose(root / "tree", xz, arches=("x86_64", "aarch64"))
        with moto_subprocess() as url, serve_directory(root / "tree") as http:
            compose = f"{http}/Fedora-Cloud-99-20261127.0/compose"
            t1, calls1 = run(url, compose, tuple(REGIONS[:1]))
            reset(url)
            t20, calls20 = run(url, compose, tuple(REGIONS))
    other = [n for r, n in calls20.items() if r != REGIONS[0]]
    result = {
        "images": 2,
        "image_bytes": args.image_mib * 1024 * 1024,
        "nonzero_blocks_per_image": round(args.image_mib * 1024 * 1024 / BLOCK_SIZE * 0.25),
        "t1_s": round(t1, 2),
        "t20_s": round(t20, 2),
        "region_scaling": round(t20 / t1, 3),
        "api_calls_1_region": sum(calls1.values()),
        "api_calls_20_regions": sum(calls20.values()),
        "api_calls_base_region": calls20[REGIONS[0]],
        "api_calls_per_other_region": round(sum(other) / len(other), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
