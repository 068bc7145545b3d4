"""The image becomes an EBS snapshot through the EBS direct APIs: no S3, no helper instance.

StartSnapshot → PutSnapshotBlock for every block that is not all zeros, by a pool of workers fed
through a bounded queue (memory stays constant whatever the image size) → CompleteSnapshot with
the LINEAR aggregate checksum → wait for ``completed`` → tag ``fedimg:state=uploaded``.

**Runs of one image at the same time** (two consumers, a consumer and a manual upload, a
redelivery while the first run lives) need no help from the broker. Three rules of AWS's and one
of ours keep them apart:

- *One snapshot per image, by ClientToken.* StartSnapshot's token is derived from the image key
  (the content), the Timeout and the ids of the snapshots this chain of tokens already found dead,
  and its tags depend on the content only, so every run sends the very same request and AWS
  answers all of them with one snapshot. A token whose snapshot is gone (deleted after a failure,
  or ``error`` after its Timeout) is dead: the next token names it and gets a new snapshot, the
  same for every run, because every run walks the same chain.
- *A lease* (``fedimg:lease-owner``, ``fedimg:lease-until``, unix seconds), renewed by a writer
  every ``LEASE_SECONDS / 4`` while it writes or completes. A run that finds the snapshot leased by
  another live run waits (bounded) for it and reuses its result; it takes a snapshot over only
  after the lease expired (its writer died), and never deletes a snapshot another run holds.
  Clocks of the hosts must agree to well within ``LEASE_SECONDS``.
- *Writes and CompleteSnapshot are idempotent for equal content*: the key includes the content's
  checksum, so two runs that write one snapshot at once write the same bytes, and a second
  CompleteSnapshot of a completed snapshot converges (it is completed either way).
- *AMI names are unique per region* (aws/image.py): if two runs still registered twice, AWS
  refuses the second, which then reuses the first's AMI.

A failure keeps the snapshot for the next attempt (lease released) unless it is permanent (the
content or the request is bad: then the snapshot is deleted, when no other run holds it). A
snapshot whose blocks were all written is ``completing``: it is always kept, and completed by the
next attempt without the data.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.wait import wait_until
from fedimg.config import Settings
from fedimg.errors import AwsError, FedimgError, TransientError
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
TAG_LEASE_OWNER = "fedimg:lease-owner"
TAG_LEASE_UNTIL = "fedimg:lease-until"
DEAD_STATES = ("error", "recoverable")
# A writer renews its lease four times per lease: a missed renewal or two does not lose it.
# Short, because a run killed while writing makes the next run wait this long before taking over.
LEASE_SECONDS = 30.0
# A new snapshot may be unknown for a while after StartSnapshot (eventual consistency): the first
# block, and the check that a token's snapshot still exists, wait for it this long.
VISIBLE_DEADLINE_S = 60.0
# StartSnapshot's Timeout: AWS accepts 10 to 4320 minutes.
TIMEOUT_MINUTES = (10, 4320)
MAX_DEAD_IN_CHAIN = 16  # more dead snapshots of one image than this is a fault, not bad luck
PROGRESS_EVERY = 64  # blocks between progress events
# How often an idle block worker looks whether the upload has finished.
WORKER_POLL_S = 0.1


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


def snapshot_timeout(settings: Settings) -> int:
    """StartSnapshot's Timeout in minutes, always within AWS's bounds."""
    low, high = TIMEOUT_MINUTES
    return min(max(settings.aws.snapshot_timeout_minutes, low), high)


def start_token(identity: ImageIdentity, timeout: int, dead: list[str]) -> str:
    """The same for every run of this image until a snapshot of it dies; 64 characters."""
    return hashlib.sha256(f"{identity.key}/{timeout}/{','.join(dead)}".encode()).hexdigest()


def _tag(snapshot: dict[str, Any], key: str) -> str:
    return tags_of(snapshot).get(key, "")


def held_by_other(snapshot: dict[str, Any], owner: str, now: float) -> bool:
    """Whether another run's lease on the snapshot is live."""
    holder = _tag(snapshot, TAG_LEASE_OWNER)
    try:
        until = float(_tag(snapshot, TAG_LEASE_UNTIL) or 0)
    except ValueError:
        until = 0.0
    return bool(holder) and holder != owner and until > now


def upload_snapshot_if_not_exists(
    source: ImageSource,
    identity: ImageIdentity,
    settings: Settings,
    clients: Clients,
    sink: Sink = null_sink,
) -> SnapshotResult:
    """Uploads the image into a snapshot unless an earlier or a concurrent run does or did.

    Safe to re-run, whatever point an earlier run was killed at, and safe to run concurrently (see
    the module docstring). The ``fedimg:state`` tag says how far a snapshot got: ``uploaded`` →
    reused; ``completing`` (every block was sent, the count and LINEAR checksum are in tags) →
    completed now; ``uploading`` → adopted once its lease expired: every block is sent again into it
    (writes are idempotent) and it is completed. Leftovers nobody holds are deleted.
    """
    if not identity.complete:
        raise FedimgError(f"{identity.image_name}: the image's checksum is needed to upload it")
    upload = _Upload(source, identity, settings, clients, sink)
    try:
        return upload.run()
    except (ClientError, BotoCoreError) as e:
        raise translate(e, f"snapshot of {identity.image_name}") from e


class _Upload:
    """One run's way to a completed snapshot: look, then reuse, wait, complete, adopt or start."""

    def __init__(
        self,
        source: ImageSource,
        identity: ImageIdentity,
        settings: Settings,
        clients: Clients,
        sink: Sink,
    ) -> None:
        self.source, self.identity, self.settings, self.sink = source, identity, settings, sink
        self.region = settings.aws.base_region
        self.ec2, self.ebs = clients.ec2(self.region), clients.ebs(self.region)
        self.lease = _Lease(self.ec2)
        self.started = time.monotonic()
        self.started_here: dict[str, Any] | None = None  # what StartSnapshot gave this run
        self.converged = False

    @property
    def name(self) -> str:
        return self.identity.image_name

    def run(self) -> SnapshotResult:
        # Waiting for another run is bounded by the snapshot's own life: AWS cancels an
        # unfinished snapshot after its Timeout, and a dead writer's lease expires.
        end = time.monotonic() + snapshot_timeout(self.settings) * 60 + LEASE_SECONDS
        pause = 0.2
        while True:
            snaps = self._snapshots()
            step, snap = self._next_step(snaps)
            if step == "wait":
                if time.monotonic() > end:
                    raise TransientError(
                        f"{self.name}: snapshot {snap['SnapshotId']} is still held by another run"
                    )
                log.info("%s: waiting for the run writing %s", self.name, snap["SnapshotId"])
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if step == "start":
                self._delete_leftovers(snaps, keep="")
                self.started_here = self._start_in_chain()
                continue
            self._delete_leftovers(snaps, keep=snap["SnapshotId"])
            if step == "reuse":
                return self._result(snap, reused=True)
            if step == "complete":
                with self.lease.held(snap["SnapshotId"]):
                    _complete(
                        self.ec2,
                        self.ebs,
                        snap["SnapshotId"],
                        int(_tag(snap, TAG_BLOCKS) or 0),
                        _tag(snap, TAG_CHECKSUM),
                        self.settings,
                    )
                log.info("%s: completed the snapshot %s", self.name, snap["SnapshotId"])
                return self._result(snap, reused=True)
            result = self._write(snap)  # adopt or write
            if result is not None:
                return result

    def _snapshots(self) -> list[dict[str, Any]]:
        snaps = earlier_snapshots(self.ec2, self.identity)
        mine = self.started_here
        if mine is not None and mine["SnapshotId"] not in {s["SnapshotId"] for s in snaps}:
            snaps.append(mine)  # seen by id, not yet by tag filter (eventual consistency)
        return snaps

    def _next_step(self, snaps: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        now = time.time()
        usable = [s for s in snaps if s.get("State") not in DEAD_STATES]
        in_state = {
            st: [s for s in usable if _tag(s, TAG_STATE) == st]
            for st in (STATE_UPLOADED, STATE_COMPLETING, STATE_UPLOADING)
        }
        for s in in_state[STATE_UPLOADED]:
            if s.get("State") == "completed":
                return "reuse", s
        for s in in_state[STATE_COMPLETING]:
            # Once AWS says completed, only the tag is missing: nothing to wait for.
            done = s.get("State") == "completed"
            held = held_by_other(s, self.lease.owner, now) and not done
            return ("wait" if held else "complete"), s
        started_here = self.started_here["SnapshotId"] if self.started_here else ""
        for s in in_state[STATE_UPLOADING]:
            # A snapshot StartSnapshot gave this run is written even if another run writes it
            # too (both started it at once): waiting for each other would never end.
            if s["SnapshotId"] == started_here:
                return "write", s
        for s in in_state[STATE_UPLOADING]:
            if held_by_other(s, self.lease.owner, now):
                return "wait", s
        for s in in_state[STATE_UPLOADING]:
            log.info("%s: taking over the upload into %s", self.name, s["SnapshotId"])
            return "adopt", s
        return "start", {}

    def _delete_leftovers(self, snaps: list[dict[str, Any]], keep: str) -> None:
        """Dead snapshots and unfinished ones nobody holds, except the one this run goes on with."""
        now = time.time()
        for s in snaps:
            if s["SnapshotId"] == keep or held_by_other(s, self.lease.owner, now):
                continue
            dead = s.get("State") in DEAD_STATES
            if dead or _tag(s, TAG_STATE) == STATE_UPLOADING:
                delete_snapshot_quietly(self.ec2, s["SnapshotId"])

    def _start_in_chain(self) -> dict[str, Any]:
        """StartSnapshot with the chain's first live token; returns the snapshot as described."""
        gib = self._gib()
        timeout = snapshot_timeout(self.settings)
        dead: list[str] = []
        while len(dead) <= MAX_DEAD_IN_CHAIN:
            resp = self.ebs.start_snapshot(
                VolumeSize=gib,
                ClientToken=start_token(self.identity, timeout, dead),
                # Only what every run of this image sends alike: a token reused with other
                # parameters is refused (ConflictException).
                Tags=tag_list(self.identity.content_tags() | {TAG_STATE: STATE_UPLOADING}),
                Timeout=timeout,
                Description=f"fedimg upload of {self.name}",
            )
            snapshot_id = resp["SnapshotId"]
            described = self._described_when_visible(snapshot_id, resp.get("StartTime"))
            if described is not None and described.get("State") not in DEAD_STATES:
                log.info("%s: snapshot %s (%d GiB)", self.name, snapshot_id, gib)
                self._tag_run_details(snapshot_id)
                return described
            log.info("%s: snapshot %s of this image is dead; next token", self.name, snapshot_id)
            dead.append(snapshot_id)
        raise AwsError(f"{self.name}: {len(dead)} dead snapshots in a row", retryable=False)

    def _described_when_visible(self, snapshot_id: str, started: Any) -> dict[str, Any] | None:
        """The snapshot, once DescribeSnapshots knows it; None if it never will (deleted)."""
        start = started.timestamp() if isinstance(started, datetime) else time.time()
        # A replayed token returns its original StartTime: an old snapshot that is not there is
        # gone, a new one is given the time eventual consistency needs.
        end = min(start, time.time()) + VISIBLE_DEADLINE_S
        pause = 0.1
        while True:
            try:
                snaps = self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
                if snaps:
                    return dict(snaps[0])
            except ClientError as e:
                if not error_code(e).endswith(".NotFound"):
                    raise
            if time.time() > end:
                return None
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _tag_run_details(self, snapshot_id: str) -> None:
        """The tags that may differ between runs (compose, configured extras), after the start."""
        extra = self.identity.tags(self.settings.image.tags)
        self.ec2.create_tags(Resources=[snapshot_id], Tags=tag_list(extra))

    def _gib(self) -> int:
        return max(1, math.ceil(self.source.raw_size / GIB))

    def _write(self, snap: dict[str, Any]) -> SnapshotResult | None:
        """Every block into ``snap``, then complete it. None: another run finished it first."""
        snapshot_id = snap["SnapshotId"]
        with self.lease.held(snapshot_id):
            try:
                writer = _BlockWriter(self.ebs, snapshot_id, self.settings.aws.upload_workers)
                sent, skipped = writer.write_all(self.source, self.identity, self.region, self.sink)
                checksum = writer.aggregate_checksum()
                try:
                    # Recorded first, so a run killed from here on can complete it without the data.
                    self.ec2.create_tags(
                        Resources=[snapshot_id],
                        Tags=[
                            {"Key": TAG_STATE, "Value": STATE_COMPLETING},
                            {"Key": TAG_BLOCKS, "Value": str(sent)},
                            {"Key": TAG_CHECKSUM, "Value": checksum},
                        ],
                    )
                    _complete(self.ec2, self.ebs, snapshot_id, sent, checksum, self.settings)
                except (ClientError, BotoCoreError) as e:
                    raise translate(e, f"snapshot {snapshot_id} of {self.name}") from e
            except BaseException as e:
                if self._finished_elsewhere(snapshot_id, e):
                    return None
                self._after_failure(snapshot_id, e)
                raise
        return SnapshotResult(
            snapshot_id,
            self.region,
            self._gib(),
            sent,
            skipped,
            self.source.bytes_read,
            self.source.raw_bytes,
            time.monotonic() - self.started,
            reused=False,
        )

    def _finished_elsewhere(self, snapshot_id: str, error: BaseException) -> bool:
        """A concurrent writer completed the snapshot under us: go on with its result (once)."""
        if self.converged or not isinstance(error, AwsError):
            return False
        now = _describe(self.ec2, snapshot_id)
        if now is None or now.get("State") in DEAD_STATES:
            return False
        if now.get("State") == "completed" or _tag(now, TAG_STATE) in (
            STATE_COMPLETING,
            STATE_UPLOADED,
        ):
            log.info("%s: %s was finished by another run", self.name, snapshot_id)
            self.converged = True
            return True
        return False

    def _after_failure(self, snapshot_id: str, error: BaseException) -> None:
        """Keep the snapshot for the next attempt, unless the failure is permanent."""
        permanent = isinstance(error, FedimgError) and not error.retryable
        if not permanent:
            log.info("%s: keeping %s for the next attempt", self.name, snapshot_id)
            return
        now = _describe(self.ec2, snapshot_id)
        if now is None:
            return
        if _tag(now, TAG_STATE) == STATE_COMPLETING:
            return  # every block is in; a later CompleteSnapshot may still succeed
        if held_by_other(now, self.lease.owner, time.time()):
            log.info("%s: %s is held by another run; not deleting it", self.name, snapshot_id)
            return
        delete_snapshot_quietly(self.ec2, snapshot_id)

    def _result(self, snap: dict[str, Any], *, reused: bool) -> SnapshotResult:
        log.info("%s: reusing snapshot %s", self.name, snap["SnapshotId"])
        gib = int(snap.get("VolumeSize", 0))
        return SnapshotResult(snap["SnapshotId"], self.region, gib, 0, 0, 0, 0, 0.0, reused)


class _Lease:
    """This run's claim on a snapshot it writes or completes, renewed in the background."""

    def __init__(self, ec2: EC2Client) -> None:
        self.ec2 = ec2
        self.owner = uuid.uuid4().hex[:16]

    @contextmanager
    def held(self, snapshot_id: str) -> Iterator[None]:
        self._set(snapshot_id, time.time() + LEASE_SECONDS)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(snapshot_id, stop), name="lease", daemon=True
        )
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            self._release(snapshot_id)

    def _renew(self, snapshot_id: str, stop: threading.Event) -> None:
        while not stop.wait(LEASE_SECONDS / 4):
            try:
                self._set(snapshot_id, time.time() + LEASE_SECONDS)
            except (ClientError, BotoCoreError) as e:
                log.warning("could not renew the lease on %s: %s", snapshot_id, e)

    def _release(self, snapshot_id: str) -> None:
        """Ends the lease unless another run has renewed it since (then it is theirs)."""
        try:
            now = _describe(self.ec2, snapshot_id)
            if now is not None and _tag(now, TAG_LEASE_OWNER) == self.owner:
                self._set(snapshot_id, 0.0)
        except (ClientError, BotoCoreError) as e:
            log.warning("could not release the lease on %s (it expires): %s", snapshot_id, e)

    def _set(self, snapshot_id: str, until: float) -> None:
        self.ec2.create_tags(
            Resources=[snapshot_id],
            Tags=[
                {"Key": TAG_LEASE_OWNER, "Value": self.owner},
                {"Key": TAG_LEASE_UNTIL, "Value": f"{until:.0f}"},
            ],
        )


def _complete(
    ec2: EC2Client,
    ebs: EBSClient,
    snapshot_id: str,
    blocks: int,
    checksum: str,
    settings: Settings,
) -> None:
    """CompleteSnapshot (unless already completed), wait for ``completed``, tag ``uploaded``.

    A non-transient refusal may mean a concurrent run completed it first: that converges. A
    transient failure keeps the snapshot ``completing`` for the next attempt.
    """
    if _snapshot_state(ec2, snapshot_id) != "completed":
        try:
            ebs.complete_snapshot(
                SnapshotId=snapshot_id,
                ChangedBlocksCount=blocks,
                Checksum=checksum,
                ChecksumAlgorithm="SHA256",
                ChecksumAggregationMethod="LINEAR",
            )
        except ClientError as e:
            if translate(e, "").retryable or _snapshot_state(ec2, snapshot_id) != "completed":
                raise
    wait_until(
        f"snapshot {snapshot_id}",
        lambda: _snapshot_state(ec2, snapshot_id),
        done="completed",
        failed=DEAD_STATES,
        deadline_s=settings.aws.wait_seconds,
    )
    ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": TAG_STATE, "Value": STATE_UPLOADED}])


def _describe(ec2: EC2Client, snapshot_id: str) -> dict[str, Any] | None:
    try:
        snaps = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except ClientError as e:
        if error_code(e).endswith(".NotFound"):
            return None
        raise
    return dict(snaps[0]) if snaps else None


def _snapshot_state(ec2: EC2Client, snapshot_id: str) -> str:
    snap = _describe(ec2, snapshot_id)
    return str(snap.get("State", "")) if snap else ""


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
        self.queue: queue.Queue[Block] = queue.Queue(maxsize=workers)
        self.digests: dict[int, bytes] = {}
        self.error: BaseException | None = None
        self.failed = threading.Event()
        # Set once no more blocks will come: workers finish what is queued, then stop. (A count of
        # sentinels per live thread once left a worker waiting for ever.)
        self.finished = threading.Event()

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
            self.finished.set()
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
            try:
                block = self.queue.get(timeout=WORKER_POLL_S)
            except queue.Empty:
                if self.finished.is_set():
                    return
                continue
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
