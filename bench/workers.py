"""Image workers on one broker: 8 composes of 2 images arrive at once; 1, 2 and 4 workers.

A throwaway RabbitMQ node (tests/services.py) and the strict AWS stand-in in its own process with
its time model on (``--scale`` real seconds per AWS second), 4 regions. For each worker count, on
a freshly reset stand-in and an empty work queue: the workers are started as real
``fedora-messaging consume`` processes (prefetch 1) and attached; then every image's work message
is put on the queue as the compose consumer does (``WorkPublisher``: one per image, confirmed),
and the clock runs until AWS holds an outcome record for each of the 16 images (``/fedimg-
outcomes``, written by the worker that ended the image), all published.

The boot test waits the modelled instance time (``bench/e2e.py``'s ``modelled_test``); fedimg's
confirming read is compressed like AWS's time (``compress_fedimg_waits``). The last line printed
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import boto3  # noqa: E402
from e2e import compress_fedimg_waits, modelled_test  # noqa: E402

from fedimg.aws.clients import Clients  # noqa: E402
from fedimg.compose import discover  # noqa: E402
from fedimg.config import Settings, from_dict  # noqa: E402
from fedimg.delivery import settings_from_consumer_config  # noqa: E402
from fedimg.events import log_sink  # noqa: E402
from fedimg.pipeline import Pipeline, identity_of  # noqa: E402
from fedimg.standins.aws import options  # noqa: E402
from fedimg.standins.moto import moto_subprocess, reset  # noqa: E402
from fedimg.standins.samplecompose import build_sample_compose, serve_directory  # noqa: E402
from fedimg.standins.synthetic import write_sparse_image  # noqa: E402
from fedimg.worker import Worker  # noqa: E402
from fedimg.workqueue import WorkPublisher, work_for, work_queue_arguments  # noqa: E402

COMPOSES = 8
REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2"]
QUEUE = "fedimg-bench-work"
DEADLINE_S = 900.0


class BenchWorker(Worker):
    """fedimg's worker with the modelled boot test (moto cannot boot an instance); the
    fedora-messaging callback of each worker process."""

    def __init__(self) -> None:
        from fedora_messaging.config import conf

        settings = settings_from_consumer_config(conf["consumer_config"])
        compress_fedimg_waits(options.time_scale())
        pipeline = Pipeline(settings, Clients(settings.aws), log_sink, modelled_test)
        super().__init__(settings, pipeline, after_compose=lambda outcome: None)


def fedimg_settings(aws: str, http: str) -> dict[str, Any]:
    return {
        "aws": {"endpoint_url": aws, "regions": REGIONS, "max_attempts": 3},
        "compose": {"trusted_locations": [http]},
        "test": {"ssh_cidr": "127.0.0.1/32"},
        "messaging": {"publish": False, "max_redeliveries": 2},
    }


def build_composes(root: Path) -> list[str]:
    """``COMPOSES`` composes of x86_64 and aarch64 images; their directories under ``root``."""
    raw = root / "disk.raw"
    write_sparse_image(raw, 16 << 20, 0.25)
    xz = root / "disk.raw.xz"
    xz.write_bytes(lzma.compress(raw.read_bytes(), preset=1))
    # One release each: composes of one release racing for its "latest" SSM parameter hit a
    # publish.py wait that lasts 120 s (reported), which is not what this measures.
    ids = [f"Fedora-Cloud-{91 + n}-20261127.0" for n in range(COMPOSES)]
    for compose_id in ids:
        build_sample_compose(root / "tree", xz, compose_id, arches=("x86_64", "aarch64"))
    return ids


def run(amqp: str, aws: str, http: str, ids: list[str], workers: int, tmp: Path) -> float:
    from tests.services import consume_process, delete_queues, fedora_messaging_config

    reset(aws)
    delete_queues(amqp, QUEUE)
    settings = from_dict(fedimg_settings(aws, http))
    arguments = work_queue_arguments(settings.messaging.max_redeliveries, QUEUE)
    conf = fedora_messaging_config(
        amqp,
        tmp,
        QUEUE,
        [],
        "workers:BenchWorker",
        fedimg_settings(aws, http),
        queue_arguments=arguments,
    )
    work = []
    for compose_id in ids:
        location = f"{http}/{compose_id}/compose"
        info, images = discover(location, settings.compose)
        listed = [(identity_of(i, info).key, i.image_name) for i in images]
        work += work_for(info.compose_id, location, info.release_version, listed)
    with ExitStack() as stack:
        for n in range(workers):
            stack.enter_context(consume_process(conf, tmp / f"worker-{workers}-{n}.log"))
        start = time.monotonic()
        WorkPublisher(amqp, QUEUE, arguments).publish(work)
        wait_for_outcomes(aws, settings, len(work))
        seconds = time.monotonic() - start
    delete_queues(amqp, QUEUE)
    return seconds


def wait_for_outcomes(aws: str, settings: Settings, count: int) -> None:
    ssm = boto3.client("ssm", region_name=settings.aws.base_region, endpoint_url=aws)
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        pages = ssm.get_paginator("get_parameters_by_path").paginate(
            Path="/fedimg-outcomes", Recursive=True
        )
        records = [json.loads(p["Value"]) for page in pages for p in page["Parameters"]]
        if len(records) >= count:
            failed = [r for r in records if r["outcome"] != "published"]
            if failed:
                raise SystemExit(f"{len(failed)} images not published: {failed[0]['error'][:300]}")
            return
        time.sleep(0.1)
    raise SystemExit(f"not every image ended within {DEADLINE_S} s")


def main() -> None:
    from tests.services import rabbitmq

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=0.02, help="real seconds per AWS second")
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    os.environ[options.TIME_SCALE] = str(args.scale)  # the stand-in and the workers inherit it
    # 16 composes' images public in each region: above the default quota of 5 (AWS's too).
    os.environ[options.PUBLIC_AMI_QUOTA] = "100"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), str(ROOT / "src")])
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        ids = build_composes(root)
        amqp = stack.enter_context(rabbitmq())
        aws = stack.enter_context(moto_subprocess())
        http = stack.enter_context(serve_directory(root / "tree"))
        for count in (int(n) for n in args.workers.split(",")):
            seconds[str(count)] = round(run(amqp, aws, http, ids, count, root), 2)
            print(f"{count} workers: {seconds[str(count)]} s", file=sys.stderr)
    result: dict[str, Any] = {
        "composes": COMPOSES,
        "images": 2 * COMPOSES,
        "seconds_by_workers": seconds,
        "scaling_4_vs_1": round(seconds["1"] / seconds["4"], 2)
        if {"1", "4"} <= set(seconds)
        else None,
        "time_scale": args.scale,
        "regions": len(REGIONS),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
