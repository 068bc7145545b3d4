"""One image, file or URL, to a registered AMI in the base region: source → snapshot → register.

The image's identity includes its content (identity.py). Without a checksum given, the file is
read once first to compute it (for a URL that is one more download, nothing is stored), so reuse
is only ever decided from a known checksum: a different file of the same name is a different
image, never the old AMI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import requests

from fedimg.aws.clients import Clients
from fedimg.aws.image import register_image_if_not_exists
from fedimg.aws.snapshot import delete_snapshot_quietly, upload_snapshot_if_not_exists
from fedimg.config import Settings
from fedimg.errors import InputError, TransientError
from fedimg.events import Sink, null_sink
from fedimg.identity import ImageIdentity
from fedimg.source import ImageSource

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
HTTP_TIMEOUT = (10.0, 60.0)  # connect, read (between bytes)


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
    """Safe to re-run and to run concurrently: each step finds what another run made (see the
    steps' docstrings)."""
    started = time.monotonic()
    if not identity.complete:
        identity = dataclasses.replace(identity, sha256=content_sha256(location))
    with ImageSource(
        location, sha256=identity.sha256, max_bytes=settings.image.max_image_bytes
    ) as source:
        snap = upload_snapshot_if_not_exists(source, identity, settings, clients, sink)
    image = register_image_if_not_exists(
        settings, clients, identity, snap.snapshot_id, snap.volume_size_gib, name=ami_name
    )
    drop_if_redundant(clients, image.region, image.ami, snap.snapshot_id)
    return UploadOutcome(
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


def drop_if_redundant(clients: Clients, region: str, ami: str, snapshot_id: str) -> None:
    """Deletes our snapshot if the AMI (another run's, found by name) was made from another one.

    Only happens when two runs of one image ended with two snapshots (they used different
    StartSnapshot Timeouts, so different tokens): the AMI keeps its own, ours is a leftover.
    """
    ec2 = clients.ec2(region)
    images = ec2.describe_images(ImageIds=[ami])["Images"]
    mapped = {
        m["Ebs"]["SnapshotId"]
        for i in images
        for m in i.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    }
    if mapped and snapshot_id not in mapped:
        log.info("%s is made from %s: %s is not needed", ami, sorted(mapped), snapshot_id)
        delete_snapshot_quietly(ec2, snapshot_id)


def content_sha256(location: str) -> str:
    """SHA-256 of the file as published (path, file:// or http(s) URL), streamed."""
    digest = hashlib.sha256()
    try:
        if location.startswith(("http://", "https://")):
            with requests.get(location, stream=True, timeout=HTTP_TIMEOUT) as r:
                r.raise_for_status()
                for chunk in r.iter_content(HASH_CHUNK):
                    digest.update(chunk)
        else:
            path = location.removeprefix("file://")
            with open(path, "rb") as f:
                while chunk := f.read(HASH_CHUNK):
                    digest.update(chunk)
    except requests.HTTPError as e:
        raise InputError(f"{location}: {e}") from e
    except requests.RequestException as e:
        raise TransientError(f"{location}: {e}") from e
    except OSError as e:
        raise InputError(f"{location}: {e.strerror or e}") from e
    return digest.hexdigest()
