"""Test helpers: record what fedimg *sends* to AWS (moto drops most RegisterImage attributes)."""

from __future__ import annotations

import copy
import dataclasses
import lzma
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from fedimg.config import Settings
from fedimg.source import BLOCK_SIZE
from fedimg.standins.samplecompose import build_sample_compose, serve_directory
from fedimg.standins.synthetic import write_sparse_image


@dataclass
class Recorder:
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        with self.lock:
            self.calls.append((model.service_model.service_name, model.name, copy.copy(params)))

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [p for _, op, p in self.calls if op == operation]

    def count(self, operation: str) -> int:
        return len(self.of(operation))


def record(session: boto3.session.Session) -> Recorder:
    """Records every API call made by clients of ``session`` (created after this call)."""
    rec = Recorder()
    session.events.register("provide-client-params", rec.hook)
    return rec


def ec2(url: str, region: str = "us-east-1") -> Any:
    return boto3.client("ec2", region_name=region, endpoint_url=url)


def ebs(url: str, region: str = "us-east-1") -> Any:
    return boto3.client("ebs", region_name=region, endpoint_url=url)


def synthetic_xz(folder: Path, blocks: int, nonzero_fraction: float) -> Path:
    """A sparse raw image of ``blocks`` blocks (not bootable), xz-compressed; returns the .xz."""
    raw = folder / "disk.raw"
    write_sparse_image(raw, blocks * BLOCK_SIZE, nonzero_fraction)
    xz = folder / "disk.raw.xz"
    xz.write_bytes(lzma.compress(raw.read_bytes(), preset=0))
    return xz


@contextmanager
def served_compose(
    root: Path, blocks: int, nonzero_fraction: float = 0.25
) -> Iterator[tuple[str, Path]]:
    """The sample compose with x86_64 and aarch64 EC2 images (a synthetic image, not bootable),
    served over HTTP on loopback; yields (its location URL, the image's .xz)."""
    xz = synthetic_xz(root, blocks, nonzero_fraction)
    location = build_sample_compose(root / "tree", xz, arches=("x86_64", "aarch64"))
    with serve_directory(root / "tree") as base:
        yield f"{base}/{location.relative_to(root / 'tree').as_posix()}", xz


def trusting(settings: Settings, *locations: str) -> Settings:
    """``settings`` with the test's loopback servers added to ``compose.trusted_locations``."""
    compose = settings.compose
    return dataclasses.replace(
        settings,
        compose=dataclasses.replace(
            compose, trusted_locations=(*compose.trusted_locations, *locations)
        ),
    )
