"""End to end on AWS's modelled time: compose FINISHED → every image public in every region.

One compose of 2 images, 20 regions, against the strict AWS stand-in in its own process with its
time model on (``FEDIMG_STANDIN_TIME_SCALE``: real seconds per AWS second). Three variants, each
on a freshly reset stand-in:

- ``sequential``: test, then one region after another (``aws.copy_workers = 1``), as the original
  fedimg copied;
- ``serial_stages``: test, then every copy at once (fedimg before copies overlapped the test);
- ``overlapped``: fedimg now: the copies start when the base AMI is available, during the test.

The boot test: moto cannot boot an instance, so the tester waits the modelled instance time
(pending → running, then the status checks: ``RUNNING_S + STATUS_CHECKS_S``) and passes; the
checks over SSH take seconds on a real instance and are left out. For the two serial variants the
same wait runs right after the upload, before the copies start.

``critical_path_s`` = upload + max(test, slowest copy) + publish, from the model's own functions
(seal + registration; the instance time; ``copy_seconds`` of the slowest region for the bytes
written; publishing has no modelled duration), in real (compressed) seconds like every figure
here; ``aws_seconds`` gives them back in AWS's seconds. Each variant's timeline (AWS seconds) goes
to ``bench/out/e2e-<variant>.png``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pipeline import REGIONS  # noqa: E402  (bench/pipeline.py: the same 20 regions)

from fedimg import pipeline as pipeline_module  # noqa: E402
from fedimg.aws import wait  # noqa: E402
from fedimg.aws.clients import Clients  # noqa: E402
from fedimg.config import Settings, validate  # noqa: E402
from fedimg.events import Event, Sink  # noqa: E402
from fedimg.pipeline import PASSED, Pipeline, TestSubject, TestVerdict  # noqa: E402
from fedimg.source import BLOCK_SIZE  # noqa: E402
from fedimg.standins.aws import options, timing  # noqa: E402
from fedimg.standins.moto import moto_subprocess, reset  # noqa: E402
from fedimg.standins.samplecompose import build_sample_compose, serve_directory  # noqa: E402
from fedimg.standins.synthetic import write_sparse_image  # noqa: E402
from fedimg.timeline import TimelineRecorder, draw, spans  # noqa: E402

OUT = ROOT / "bench" / "out"
NONZERO_FRACTION = 0.25
VARIANTS = ("sequential", "serial_stages", "overlapped")


def instance_seconds() -> float:
    """What the modelled boot test takes, in AWS seconds."""
    return timing.RUNNING_S + timing.STATUS_CHECKS_S


def modelled_test(subject: TestSubject) -> TestVerdict:
    time.sleep(timing.real_seconds(instance_seconds()))
    return TestVerdict(PASSED, reason="modelled instance time")


def critical_path_aws_s(written: int, regions: list[str], base: str) -> dict[str, float]:
    """The model's own critical path for one image, in AWS seconds."""
    upload = timing.seal_seconds(written) + timing.REGISTER_S
    slowest = max(timing.copy_seconds(r, written) for r in regions if r != base)
    return {
        "upload": upload,
        "test": instance_seconds(),
        "slowest_copy": slowest,
        "publish": 0.0,
        "total": upload + max(instance_seconds(), slowest),
    }


@contextmanager
def test_before_copies() -> Iterator[None]:
    """fedimg as it was: the boot test runs right after the upload, before any copy starts."""
    upload = pipeline_module.upload_image  # type: ignore[attr-defined]

    def upload_then_test(
        location: str, identity: Any, settings: Any, clients: Any, *, sink: Sink
    ) -> Any:
        uploaded = upload(location, identity, settings, clients, sink=sink)
        # The pipeline's own "upload completed" comes after this returns; the timeline keeps
        # the first end of a stage.
        sink(Event("upload", "completed", identity.image_name, uploaded.region))
        sink(Event("test", "started", identity.image_name, uploaded.region))
        modelled_test(TestSubject(identity, uploaded.ami, uploaded.region))
        sink(Event("test", "completed", identity.image_name, uploaded.region))
        return uploaded

    pipeline_module.upload_image = upload_then_test  # type: ignore[attr-defined,assignment]
    try:
        yield
    finally:
        pipeline_module.upload_image = upload  # type: ignore[attr-defined]


def settings_for(url: str, variant: str) -> Settings:
    s = Settings()
    return validate(
        dataclasses.replace(
            s,
            aws=dataclasses.replace(
                s.aws,
                endpoint_url=url,
                regions=tuple(REGIONS),
                max_attempts=3,
                copy_workers=1 if variant == "sequential" else s.aws.copy_workers,
            ),
            test=dataclasses.replace(s.test, ssh_cidr="127.0.0.1/32"),
            messaging=dataclasses.replace(s.messaging, publish=False),
        )
    )


def run_variant(url: str, compose: str, variant: str) -> tuple[float, TimelineRecorder]:
    reset(url)
    settings = settings_for(url, variant)
    recorder = TimelineRecorder()
    serial = variant != "overlapped"
    tester = (lambda subject: TestVerdict(PASSED)) if serial else modelled_test
    pipeline = Pipeline(settings, Clients(settings.aws), recorder, tester)
    with test_before_copies() if serial else _nothing():
        start = time.monotonic()
        outcome = pipeline.run_compose(compose)
        seconds = time.monotonic() - start
    if not outcome.ok:
        raise SystemExit(f"{variant}: {[i.error for i in outcome.images]}")
    return seconds, recorder


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def compress_fedimg_waits(scale: float) -> None:
    """fedimg's one fixed pause in its waits, the confirming read 1 s after a good one, is
    compressed like AWS's time: uncompressed it would stand for 1 s / ``scale`` of AWS's time
    (50 s at 0.02) and measure the compression, not fedimg. Polling at a tenth of the time
    waited scales by itself."""
    wait.CONFIRM_INTERVAL *= scale


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=0.1, help="real seconds per AWS second")
    ap.add_argument("--image-mib", type=int, default=16, help="raw size of each image")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    os.environ[options.TIME_SCALE] = str(args.scale)  # the stand-in's process inherits it
    compress_fedimg_waits(args.scale)
    raw_bytes = args.image_mib * 1024 * 1024
    written = round(raw_bytes / BLOCK_SIZE * NONZERO_FRACTION) * BLOCK_SIZE
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ".gitignore").write_text("*\n")  # figures are made here, never committed
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = root / "disk.raw"
        write_sparse_image(raw, raw_bytes, NONZERO_FRACTION)
        xz = root / "disk.raw.xz"
        xz.write_bytes(lzma.compress(raw.read_bytes(), preset=1))
        build_sample_compose(root / "tree", xz, arches=("x86_64", "aarch64"))
        with moto_subprocess() as url, serve_directory(root / "tree") as http:
            compose = f"{http}/Fedora-Cloud-99-20261127.0/compose"
            for variant in args.variants.split(","):
                seconds[variant], recorder = run_variant(url, compose, variant)
                title = f"{variant}: 2 images x {len(REGIONS)} regions, {seconds[variant]:.1f} s"
                draw(spans(recorder.events), OUT / f"e2e-{variant}.png", title, args.scale)
                print(f"{variant}: {seconds[variant]:.2f} s", file=sys.stderr)
    path = critical_path_aws_s(written, REGIONS, Settings().aws.base_region)
    critical = timing.real_seconds(path["total"])
    result: dict[str, Any] = {f"{v}_s": round(t, 2) for v, t in seconds.items()}
    result |= {
        "critical_path_s": round(critical, 2),
        "ratio_to_critical_path": _ratio(seconds.get("overlapped"), critical),
        "speedup_vs_sequential": _ratio(seconds.get("sequential"), seconds.get("overlapped")),
        "time_scale": args.scale,
        "images": 2,
        "regions": len(REGIONS),
        "written_bytes_per_image": written,
        "aws_seconds": {k: round(v / args.scale) for k, v in seconds.items()}
        | {"critical_path": round(path["total"])},
        "critical_path_aws_s": {k: round(v, 1) for k, v in path.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
