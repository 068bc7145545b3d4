"""One image, file or URL, to a registered AMI in the base region: source → snapshot → register."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fedimg.aws.clients import Clients
from fedimg.aws.image import register_image_if_not_exists
from fedimg.aws.snapshot import upload_snapshot_if_not_exists
from fedimg.config import Settings
from fedimg.events import Sink, null_sink
from fedimg.identity import ImageIdentity
from fedimg.source import ImageSource


@dataclass(frozen=True)
class UploadOutcome:
    ami: str
    snapshot: str
    region: str
    name: str
    blocks_sent: int
    blocks_skipped: int
    bytes_read: int
    seconds: float
    reused: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "ami": self.ami,
            "snapshot": self.snapshot,
            "region": self.region,
            "blocks_sent": self.blocks_sent,
            "blocks_skipped": self.blocks_skipped,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "name": self.name,
            "reused": self.reused,
        }


def upload_image(
    location: str,
    identity: ImageIdentity,
    settings: Settings,
    clients: Clients,
    *,
    sink: Sink = null_sink,
    ami_name: str | None = None,
) -> UploadOutcome:
    """Safe to re-run: each step finds what an earlier run made (see the steps' docstrings)."""
    started = time.monotonic()
    with ImageSource(
        location, sha256=identity.sha256 or None, max_bytes=settings.image.max_image_bytes
    ) as source:
        snap = upload_snapshot_if_not_exists(source, identity, settings, clients, sink)
    image = register_image_if_not_exists(
        settings, clients, identity, snap.snapshot_id, snap.volume_size_gib, name=ami_name
    )
    outcome = UploadOutcome(
        ami=image.ami,
        snapshot=snap.snapshot_id,
        region=image.region,
        name=image.name,
        blocks_sent=snap.blocks_sent,
        blocks_skipped=snap.blocks_skipped,
        bytes_read=snap.bytes_read,
        seconds=time.monotonic() - started,
        reused=snap.reused and image.reused,
    )
    return outcome
