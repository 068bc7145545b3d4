"""EBS direct rules of the strict stand-in (StartSnapshot, PutSnapshotBlock, CompleteSnapshot).

moto's EBS handlers are replaced by ones that apply the rules of ``ebs_rules`` before calling
moto's backend, and the EC2 snapshot behind each EBS direct snapshot follows it: ``pending`` while
blocks are written, ``completed`` or ``error`` after CompleteSnapshot, ``error`` once its Timeout
passes with no write (checked lazily, at the next request that looks at it; no thread). With the
time model on (``timing``), a sealed snapshot stays ``pending`` for its modelled seal time, and
PutSnapshotBlock is throttled above the per-snapshot request rate.

State the rules need (ClientTokens, per-block digests, deadlines) lives in the moto backend
instance, so ``moto-api/reset`` (which rebuilds every backend) forgets it with everything else.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from moto.core.responses import ActionResult
from moto.ebs.models import EBSBackend, EBSSnapshot
from moto.ebs.models import ebs_backends as _ebs_backends
from moto.ebs.responses import EBSResponse
from moto.ec2.exceptions import InvalidSnapshotIdError
from moto.ec2.models.elastic_block_store import EBSBackend as EC2SnapshotBackend
from moto.ec2.models.elastic_block_store import Snapshot

from fedimg.standins.aws import ebs_rules as rules
from fedimg.standins.aws import options, timing

# The request parameters that must match for a reused ClientToken.
START_PARAMETERS = (
    "VolumeSize",
    "ParentSnapshotId",
    "Tags",
    "Description",
    "Encrypted",
    "KmsKeyArn",
    "Timeout",
)


@dataclass
class Upload:
    """What the rules track for one EBS direct snapshot."""

    timeout_minutes: int
    last_write: float  # monotonic; the Timeout counts from the start or the latest block
    visible_at: float  # monotonic; before it, the snapshot is not yet seen (eventual consistency)
    digests: dict[int, bytes] = field(default_factory=dict)
    timed_out: bool = False
    sealing: bool = False  # CompleteSnapshot accepted; completed once the modelled seal time passed
    requests: timing.RequestRate = field(default_factory=timing.RequestRate)


@dataclass
class EbsState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokens: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)


def state_of(backend: EBSBackend) -> EbsState:
    """The rules' state of one account and region (gone with the backend on reset)."""
    return cast(EbsState, vars(backend).setdefault("_fedimg_strict_ebs", EbsState()))


def ebs_backend_for(account_id: str, region: str) -> EBSBackend:
    return _ebs_backends[account_id][region]


def expire_if_timed_out(snapshot: EBSSnapshot, ec2_snapshot: Snapshot | None, up: Upload) -> None:
    """StartSnapshot, Timeout: "the amount of time (in minutes) after which the snapshot is
    automatically cancelled if no blocks are written to the snapshot, or the snapshot is not
    completed after writing the last block of data" — the snapshot goes to state ``error``."""
    if snapshot.status != "pending" or up.sealing:
        return
    if time.monotonic() - up.last_write > up.timeout_minutes * options.minute_seconds():
        up.timed_out = True
        set_state(snapshot, ec2_snapshot, "error", "the snapshot's Timeout passed")


def set_state(
    snapshot: EBSSnapshot, ec2_snapshot: Snapshot | None, state: str, why: str = ""
) -> None:
    snapshot.status = state
    if ec2_snapshot is not None:
        ec2_snapshot.status = state
        # DescribeSnapshots' StateMessage: "error state details".
        vars(ec2_snapshot)["state_message"] = why or None


def settle_seal(snapshot: EBSSnapshot, ec2_snapshot: Snapshot | None, up: Upload) -> None:
    """A sealing snapshot is ``completed`` once its modelled seal time has passed."""
    if up.sealing and ec2_snapshot is not None:
        timing.settle(ec2_snapshot)
        snapshot.status = ec2_snapshot.status


def visible(up: Upload) -> bool:
    return time.monotonic() >= up.visible_at


# --- handlers: methods of moto's EBSResponse --------------------------------------------------


def _lookup(response: EBSResponse, snapshot_id: str) -> tuple[EBSSnapshot, Upload]:
    """The EBS direct snapshot, after its Timeout is applied; ResourceNotFoundException when it
    does not exist (or is deleted, or not yet visible)."""
    backend = response.ebs_backend
    snapshot = backend.snapshots.get(snapshot_id)
    up = state_of(backend).uploads.get(snapshot_id)
    ec2_snapshot = backend.ec2_backend.snapshots.get(snapshot_id)
    if snapshot is None or up is None or ec2_snapshot is None or not visible(up):
        raise rules.not_found(snapshot_id)
    expire_if_timed_out(snapshot, ec2_snapshot, up)
    settle_seal(snapshot, ec2_snapshot, up)
    return snapshot, up


def start_snapshot(self: EBSResponse) -> ActionResult:
    params = {name: self._get_param(name) for name in START_PARAMETERS}
    token = self._get_param("ClientToken")
    backend = self.ebs_backend
    state = state_of(backend)
    with state.lock:
        if token and token in state.tokens:
            first, result = state.tokens[token]
            rules.check_same_request(token, first, params)
            return ActionResult(result)
        rules.check_volume_size(params["VolumeSize"])
        rules.check_timeout(params["Timeout"])
        rules.check_tags(params["Tags"])
        rules.check_description(params["Description"])
        snapshot = backend.start_snapshot(
            volume_size=params["VolumeSize"],
            tags=params["Tags"],
            description=params["Description"],
        )
        snapshot.block_size = rules.BLOCK_SIZE
        ec2_snapshot = backend.ec2_backend.snapshots[snapshot.snapshot_id]
        ec2_snapshot.status = "pending"
        # moto builds the snapshot from a volume it creates; StartSnapshot creates no volume.
        backend.ec2_backend.volumes.pop(ec2_snapshot.volume.id, None)
        now = time.monotonic()
        state.uploads[snapshot.snapshot_id] = Upload(
            timeout_minutes=params["Timeout"] or rules.DEFAULT_TIMEOUT_MINUTES,
            last_write=now,
            visible_at=now + options.visibility_delay(),
        )
        result = {
            "SnapshotId": snapshot.snapshot_id,
            "OwnerId": snapshot.account_id,
            "Status": snapshot.status,
            "StartTime": snapshot.start_time,
            "VolumeSize": snapshot.volume_size,
            "BlockSize": snapshot.block_size,
            "Tags": snapshot.tags,
            "Description": snapshot.description,
        }
        if token:
            state.tokens[token] = (params, result)
    return ActionResult(result)


def put_snapshot_block(self: EBSResponse) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    index = self._get_param("BlockIndex")
    data = self._get_param("BlockData") or b""
    if isinstance(data, str):
        data = data.encode()
    checksum = self._get_param("Checksum")
    algorithm = self._get_param("ChecksumAlgorithm")
    data_length = self._get_param("DataLength")
    snapshot, up = _lookup(self, snapshot_id)
    timing.check_put_block_rate(snapshot_id, up.requests)
    rules.check_writable(snapshot_id, "sealing" if up.sealing else snapshot.status, up.timed_out)
    rules.check_block_index(index, snapshot.volume_size)
    rules.check_data_length(data_length, data)
    rules.check_block_checksum(checksum, algorithm, data)
    # "If the specified block contains data, the existing data is overwritten."
    snapshot.put_block(index, data, checksum, algorithm, data_length)
    up.digests[index] = hashlib.sha256(data).digest()
    up.last_write = time.monotonic()
    return ActionResult({"Checksum": checksum, "ChecksumAlgorithm": algorithm})


def complete_snapshot(self: EBSResponse) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    changed_blocks = self._get_param("ChangedBlocksCount")
    checksum = self._get_param("Checksum")
    snapshot, up = _lookup(self, snapshot_id)
    if snapshot.status == "completed" or up.sealing:
        # A retried CompleteSnapshot (its answer lost) finds the seal done or under way.
        return ActionResult({"Status": snapshot.status})
    rules.check_writable(snapshot_id, snapshot.status, up.timed_out)
    rules.check_aggregate_parameters(
        checksum,
        self._get_param("ChecksumAlgorithm"),
        self._get_param("ChecksumAggregationMethod"),
    )
    outcome, why = rules.seal_outcome(changed_blocks, checksum, up.digests)
    ec2_snapshot = self.ebs_backend.ec2_backend.snapshots.get(snapshot_id)
    written = len(up.digests) * rules.BLOCK_SIZE
    if outcome == "completed" and ec2_snapshot is not None:
        up.sealing = timing.start_seal(ec2_snapshot, written)
        outcome = ec2_snapshot.status if up.sealing else outcome
    set_state(snapshot, ec2_snapshot, outcome, why)
    return ActionResult({"Status": outcome})


def get_snapshot_block(self: EBSResponse) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    index = self._get_param("BlockIndex")
    snapshot, _ = _lookup(self, snapshot_id)
    if index not in snapshot.blocks:
        raise rules.invalid("INVALID_BLOCK_TOKEN", f"Block {index!r} holds no data.")
    return _moto_get_snapshot_block(self)


def list_snapshot_blocks(self: EBSResponse) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    snapshot, _ = _lookup(self, snapshot_id)
    blocks = [
        {"BlockIndex": i, "BlockToken": snapshot.blocks[i].block_token}
        for i in sorted(snapshot.blocks)
    ]
    return ActionResult(
        {"Blocks": blocks, "VolumeSize": snapshot.volume_size, "BlockSize": snapshot.block_size}
    )


_moto_get_snapshot_block = EBSResponse.get_snapshot_block


# --- EC2 DescribeSnapshots sees what the EBS rules decided ------------------------------------


def describe_snapshots_as_aws(describe: Any) -> Any:
    """Wraps EC2's describe_snapshots: a snapshot past its Timeout shows ``error``; one started
    less than ``visibility_delay()`` ago is not there yet (by id: ``InvalidSnapshot.NotFound``,
    by filter: absent), as after any create call of an eventually consistent API (EC2 API
    reference, "Eventual consistency in the Amazon EC2 API"); a sealing or copied snapshot whose
    modelled time has passed is ``completed``."""

    def describe_snapshots(
        self: EC2SnapshotBackend, snapshot_ids: list[str] | None = None, filters: Any = None
    ) -> list[Snapshot]:
        ebs = ebs_backend_for(self.account_id, self.region_name)  # type: ignore[attr-defined]
        uploads = state_of(ebs).uploads
        hidden: set[str] = set()
        for ec2_snapshot in list(self.snapshots.values()):
            timing.settle(ec2_snapshot)
        for snapshot_id, up in list(uploads.items()):
            snapshot = ebs.snapshots.get(snapshot_id)
            if snapshot is not None:
                expire_if_timed_out(snapshot, self.snapshots.get(snapshot_id), up)
                settle_seal(snapshot, self.snapshots.get(snapshot_id), up)
            if not visible(up):
                hidden.add(snapshot_id)
        if snapshot_ids and hidden.intersection(snapshot_ids):
            raise InvalidSnapshotIdError()
        found: list[Snapshot] = describe(self, snapshot_ids=snapshot_ids, filters=filters)
        return [s for s in found if s.id not in hidden]

    return describe_snapshots


def install() -> None:
    """Patches moto's EBS handlers with the rules above, and EC2's view of those snapshots."""
    EBSResponse.start_snapshot = start_snapshot  # type: ignore[method-assign]
    EBSResponse.put_snapshot_block = put_snapshot_block  # type: ignore[method-assign]
    EBSResponse.complete_snapshot = complete_snapshot  # type: ignore[method-assign]
    EBSResponse.get_snapshot_block = get_snapshot_block  # type: ignore[method-assign]
    EBSResponse.list_snapshot_blocks = list_snapshot_blocks  # type: ignore[method-assign]
    # Wraps whatever is installed (the EC2 rules may wrap it too).
    EC2SnapshotBackend.describe_snapshots = describe_snapshots_as_aws(  # type: ignore[method-assign]
        EC2SnapshotBackend.describe_snapshots
    )
