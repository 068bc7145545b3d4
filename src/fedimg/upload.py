"""One image, file or URL, to a registered AMI in the base region: source → snapshot → register.

The image's identity includes its content (identity.py). Without a checksum given, the file is
read once first to compute it (for a URL that is one more download, nothing is stored), so reuse
is only ever decided from a known checksum: a different file of the same name is a different
image, never the old AMI. Both reads of a URL take the image download's path (source.py): TLS
verified against ``compose.ca_bundle``, redirects only under the URL or inside
``compose.trusted_locations``, timeouts, the one retry layer, resumed where a connection broke.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedimg.aws.clients import Clients
from fedimg.aws.image import register_image_if_not_exists
from fedimg.aws.importsnapshot import import_snapshot_if_not_exists
from fedimg.aws.snapshot import delete_snapshot_quietly, upload_snapshot_if_not_exists
from fedimg.config import Settings
from fedimg.errors import InputError
from fedimg.events import Sink, null_sink
from fedimg.identity import ImageIdentity
from fedimg.source import DownloadPolicy, ImageSource, _Origin

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
# upload.method → the stage that makes "a completed snapshot of this image" (same contract).
UPLOAD_METHODS = {
    "ebs-direct": upload_snapshot_if_not_exists,
    "import-snapshot": import_snapshot_if_not_exists,
}


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
    trusted, ca_bundle = settings.compose.trusted_locations, settings.compose.ca_bundle
    if not identity.complete:
        sha256 = content_sha256(location, trusted=trusted, ca_bundle=ca_bundle)
        identity = dataclasses.replace(identity, sha256=sha256)
    with ImageSource(
        location,
        sha256=identity.sha256,
        max_bytes=settings.image.max_image_bytes,
        trusted=trusted,
        ca_bundle=ca_bundle,
    ) as source:
        upload = UPLOAD_METHODS[settings.upload.method]
        snap = upload(source, identity, settings, clients, sink)
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


def content_sha256(location: str, *, trusted: Sequence[str] = (), ca_bundle: str = "") -> str:
    """SHA-256 of the file as published (path, file:// or http(s) URL), streamed.

    ``trusted`` and ``ca_bundle`` as for ImageSource: the bytes hashed here come the way the
    upload's will. Network trouble is a TransientError, a bad location or answer an InputError.
    """
    digest = hashlib.sha256()
    # source.py's own download (no public wrapper for "the raw bytes, nothing decoded" yet).
    origin = _Origin(location, DownloadPolicy(), trusted, ca_bundle)
    try:
        reader = origin.open()
        try:
            while chunk := reader.read(HASH_CHUNK):
                digest.update(chunk)
        finally:
            reader.close()
    except OSError as e:
        raise InputError(f"{location}: {e.strerror or e}") from e
    finally:
        origin.close()
    return digest.hexdigest()
