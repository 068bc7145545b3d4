"""The image becomes an EBS snapshot through the EBS direct APIs: no S3, no helper instance.

StartSnapshot → PutSnapshotBlock for every block that is not all zeros, by a pool of workers fed
through a bounded queue (memory stays constant whatever the image size) → CompleteSnapshot with
the LINEAR aggregate checksum → wait for ``completed`` → tag ``fedimg:state=uploaded``.
Any failure deletes the half-made snapshot; the original error is what the caller sees.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.wait import wait_until
from fedimg.config import Settings
from fedimg.events import Event, Sink, null_sink
from fedimg.identity import TAG_KEY, TAG_STATE, ImageIdentity, tag_list, tags_of
from fedimg.source import BLOCK_SIZE, Block, ImageSource

if TYPE_CHECKING:
    from mypy_boto3_ebs import EBSClient
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

GIB = 1024**3
STATE_UPLOADING = "uploading"
STATE_COMPLETING = "completing"
STATE_UPLOADED = "uploaded"
TAG_BLOCKS = "fedimg:changed-blocks"
TAG_CHECKSUM = "fedimg:linear-checksum"
# Right after StartSnapshot the snapshot may not be visible to PutSnapshotBlock yet (eventual
# consistency): the first block waits for it this long.
VISIBLE_DEADLINE_S = 60.0
PROGRESS_EVERY = 64  # blocks between progress events


@dataclass(frozen=True)
class SnapshotResult:
    snapshot_id: str
    region: str
    volume_size_gib: int
    blocks_sent: int
    blocks_skipped: int
    bytes_read: int
    raw_bytes: int
    seconds: float
    reused: bool


def earlier_snapshots(ec2: EC2Client, identity: ImageIdentity) -> list[dict[str, Any]]:
    """Every snapshot fedimg started for this image, newest first."""
    resp = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [identity.key]}]
    )
    snaps = [dict(s) for s in resp["Snapshots"]]
    return sorted(snaps, key=lambda s: (str(s.get("StartTime", "")), s["SnapshotId"]), reverse=True)


def _tag(snapshot: dict[str, Any], key: str) -> str:
    return tags_of(snapshot).get(key, "")


def upload_snapshot_if_not_exists(
    source: ImageSource,
    identity: ImageIdentity,
    settings: Settings,
    clients: Clients,
    sink: Sink = null_sink,
) -> SnapshotResult:
    """Uploads the image into a snapshot unless an earlier run already did.

    Safe to re-run, whatever point an earlier run was killed at; the ``fedimg:state`` tag says how
    far it got: ``uploaded`` → reused; ``completing`` (every block was sent, the count and LINEAR
    checksum are in tags) → completed now; ``uploading`` → adopted: every block is sent again into
    it (writes are idempotent) and it is completed. Older leftovers are deleted.
    """
    region = settings.aws.base_region
    ec2, ebs = clients.ec2(region), clients.ebs(region)
    started = time.monotonic()
    what = f"snapshot of {identity.image_name}"
    try:
        earlier = earlier_snapshots(ec2, identity)
        usable = [s for s in earlier if s.get("State") not in ("error", "recoverable")]
        for state in (STATE_UPLOADED, STATE_COMPLETING):
            done = [s for s in usable if _tag(s, TAG_STATE) == state]
            if done:
                snap = done[0]
                if state == STATE_COMPLETING:
                    _complete(
                        ec2,
                        ebs,
                        snap["SnapshotId"],
                        int(_tag(snap, TAG_BLOCKS) or 0),
                        _tag(snap, TAG_CHECKSUM),
                        settings,
                        resumed=True,
                    )
                _delete_all(ec2, [s for s in earlier if s is not snap])
                log.info("%s: reusing snapshot %s", identity.image_name, snap["SnapshotId"])
                gib = int(snap.get("VolumeSize", 0))
                return SnapshotResult(snap["SnapshotId"], region, gib, 0, 0, 0, 0, 0.0, True)
        gib = max(1, math.ceil(source.raw_size / GIB))
        resumable = [
            s
            for s in usable
            if _tag(s, TAG_STATE) == STATE_UPLOADING and int(s.get("VolumeSize", 0)) == gib
        ]
        snapshot_id = resumable[0]["SnapshotId"] if resumable else ""
        _delete_all(ec2, [s for s in earlier if s["SnapshotId"] != snapshot_id])
        if snapshot_id:
            log.info("%s: resuming the upload into %s", identity.image_name, snapshot_id)
        else:
            snapshot_id = _start(ebs, identity, settings, gib)
    except (ClientError, BotoCoreError) as e:
        raise translate(e, what) from e

    try:
        writer = _BlockWriter(ebs, snapshot_id, settings.aws.upload_workers)
        sent, skipped = writer.write_all(source, identity, region, sink)
        checksum = writer.aggregate_checksum()
        try:
            # Recorded first, so a run killed from here on can complete it without the data.
            ec2.create_tags(
                Resources=[snapshot_id],
                Tags=[
                    {"Key": TAG_STATE, "Value": STATE_COMPLETING},
                    {"Key": TAG_BLOCKS, "Value": str(sent)},
                    {"Key": TAG_CHECKSUM, "Value": checksum},
                ],
            )
            _complete(ec2, ebs, snapshot_id, sent, checksum, settings)
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"snapshot {snapshot_id} of {identity.image_name}") from e
    except BaseException:
        delete_snapshot_quietly(ec2, snapshot_id)
        raise
    return SnapshotResult(
        snapshot_id,
        region,
        gib,
        sent,
        skipped,
        source.bytes_read,
        source.raw_bytes,
        time.monotonic() - started,
        reused=False,
    )


def _start(ebs: EBSClient, identity: ImageIdentity, settings: Settings, gib: int) -> str:
    tags = identity.tags(settings.image.tags) | {TAG_STATE: STATE_UPLOADING}
    snapshot_id = ebs.start_snapshot(
        VolumeSize=gib,
        # Guards against duplicates from botocore's own retries of this request; re-runs
        # are recognised by tags, so every run has its own token.
        ClientToken=str(uuid.uuid4()),
        Tags=tag_list(tags),
        Timeout=settings.aws.snapshot_timeout_minutes,
        Description=f"fedimg upload of {identity.image_name}",
    )["SnapshotId"]
    log.info("%s: started snapshot %s (%d GiB)", identity.image_name, snapshot_id, gib)
    return snapshot_id


def _complete(
    ec2: EC2Client,
    ebs: EBSClient,
    snapshot_id: str,
    blocks: int,
    checksum: str,
    settings: Settings,
    *,
    resumed: bool = False,
) -> None:
    """CompleteSnapshot (a resumed one only if not already completed), wait, tag ``uploaded``."""
    if not resumed or _snapshot_state(ec2, snapshot_id) != "completed":
        ebs.complete_snapshot(
            SnapshotId=snapshot_id,
            ChangedBlocksCount=blocks,
            Checksum=checksum,
            ChecksumAlgorithm="SHA256",
            ChecksumAggregationMethod="LINEAR",
        )
    wait_until(
        f"snapshot {snapshot_id}",
        lambda: _snapshot_state(ec2, snapshot_id),
        done="completed",
        failed=("error", "recoverable"),
        deadline_s=settings.aws.wait_seconds,
    )
    ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": TAG_STATE, "Value": STATE_UPLOADED}])


def _delete_all(ec2: EC2Client, snapshots: list[dict[str, Any]]) -> None:
    """Leftovers of earlier, killed runs (compose messages are handled one at a time)."""
    for s in snapshots:
        delete_snapshot_quietly(ec2, s["SnapshotId"])


def _snapshot_state(ec2: EC2Client, snapshot_id: str) -> str:
    snaps = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    return snaps[0].get("State", "") if snaps else ""


def delete_snapshot_quietly(ec2: EC2Client, snapshot_id: str) -> None:
    """Clean-up that never hides the original error."""
    try:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
        log.info("deleted unfinished snapshot %s", snapshot_id)
    except Exception as e:
        log.warning("could not delete snapshot %s (fedimg gc will): %s", snapshot_id, e)


class _BlockWriter:
    """A fixed pool of threads putting blocks; the queue bound keeps memory constant."""

    def __init__(self, ebs: EBSClient, snapshot_id: str, workers: int) -> None:
        self.ebs = ebs
        self.snapshot_id = snapshot_id
        self.workers = workers
        self.queue: queue.Queue[Block | None] = queue.Queue(maxsize=workers)
        self.digests: dict[int, bytes] = {}
        self.error: BaseException | None = None
        self.failed = threading.Event()

    def write_all(
        self, source: ImageSource, identity: ImageIdentity, region: str, sink: Sink
    ) -> tuple[int, int]:
        """Sends every non-zero block; returns (sent, skipped). Raises the first worker error."""
        threads = [
            threading.Thread(target=self._work, name=f"put-block-{n}", daemon=True)
            for n in range(self.workers)
        ]
        sent = 0
        last_index = -1
        first = True
        try:
            for block in source.blocks():
                if first:
                    self._put_first(block)
                    for t in threads:
                        t.start()
                    first = False
                else:
                    self._enqueue(block)
                sent += 1
                last_index = block.index
                if sent % PROGRESS_EVERY == 0:
                    sink(self._progress(identity, region, source, sent, last_index))
        finally:
            for t in threads:
                if t.is_alive():
                    self.queue.put(None)
            for t in threads:
                if t.is_alive():
                    t.join()
        if self.error is not None:
            raise self.error
        total_blocks = math.ceil(source.raw_bytes / BLOCK_SIZE)
        skipped = total_blocks - sent
        sink(self._progress(identity, region, source, sent, total_blocks - 1))
        return sent, skipped

    def aggregate_checksum(self) -> str:
        """LINEAR: SHA-256 over the per-block digests in block-index order."""
        joined = b"".join(self.digests[i] for i in sorted(self.digests))
        return base64.b64encode(hashlib.sha256(joined).digest()).decode()

    def _progress(
        self, identity: ImageIdentity, region: str, source: ImageSource, sent: int, last: int
    ) -> Event:
        return Event(
            "upload",
            "progress",
            identity.image_name,
            region,
            {
                "bytes_read": source.bytes_read,
                "raw_bytes": source.raw_bytes,
                "blocks_sent": sent,
                "blocks_skipped": last + 1 - sent,
            },
        )

    def _enqueue(self, block: Block) -> None:
        while not self.failed.is_set():
            try:
                self.queue.put(block, timeout=0.5)
                return
            except queue.Full:
                continue
        assert self.error is not None
        raise self.error

    def _put_first(self, block: Block) -> None:
        """The first block also waits (bounded) for the new snapshot to become visible."""
        end = time.monotonic() + VISIBLE_DEADLINE_S
        while True:
            try:
                self._put(block)
                return
            except ClientError as e:
                if error_code(e) != "ResourceNotFoundException" or time.monotonic() > end:
                    raise translate(e, f"PutSnapshotBlock {self.snapshot_id}") from e
                time.sleep(1.0)

    def _work(self) -> None:
        while True:
            block = self.queue.get()
            if block is None:
                return
            if self.failed.is_set():
                continue  # drain without sending
            try:
                self._put(block)
            except (ClientError, BotoCoreError) as e:
                self._fail(translate(e, f"PutSnapshotBlock {self.snapshot_id}#{block.index}"))
            except BaseException as e:
                self._fail(e)

    def _put(self, block: Block) -> None:
        digest = hashlib.sha256(block.data).digest()
        self.ebs.put_snapshot_block(
            SnapshotId=self.snapshot_id,
            BlockIndex=block.index,
            BlockData=block.data,
            DataLength=BLOCK_SIZE,
            Checksum=base64.b64encode(digest).decode(),
            ChecksumAlgorithm="SHA256",
        )
        self.digests[block.index] = digest

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.failed.set()
