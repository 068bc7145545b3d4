"""The EBS direct API rules, one function each, as the EBS direct APIs reference documents them.

Each rule raises the error AWS answers with: ``ValidationException`` carries a ``Reason`` from the
documented ValidationExceptionReason values. Where the reference documents the constraint but not
the reason (a wrong checksum, a data length other than 524288), the generic
``INVALID_PARAMETER_VALUE`` is used — AWS's own answer to a block it cannot read.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from moto.core.exceptions import ServiceException

BLOCK_SIZE = 524288
BLOCKS_PER_GIB = (1 << 30) // BLOCK_SIZE
MAX_VOLUME_GIB = 65536
TIMEOUT_MINUTES = (10, 4320)
DEFAULT_TIMEOUT_MINUTES = 60
MAX_TAGS = 50
MAX_TAG_KEY = 127
MAX_TAG_VALUE = 255
MAX_DESCRIPTION = 255


class EbsError(ServiceException):
    """An EBS direct error, serialized by moto with the shape of botocore's model (Reason too)."""

    def __init__(self, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(code, message)
        if reason:
            self.reason = reason


def invalid(reason: str, message: str) -> EbsError:
    return EbsError("ValidationException", message, reason)


def not_found(snapshot_id: str) -> EbsError:
    return EbsError(
        "ResourceNotFoundException",
        f"The snapshot '{snapshot_id}' does not exist.",
        "SNAPSHOT_NOT_FOUND",
    )


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def check_same_request(token: str, first: Mapping[str, Any], again: Mapping[str, Any]) -> None:
    """StartSnapshot, ClientToken (user guide: "Idempotency for StartSnapshot API"): a retry with
    the same token and parameters returns the original result; other parameters: ConflictException.
    """
    if dict(first) != dict(again):
        raise EbsError(
            "ConflictException",
            f"The client token '{token}' was used by a previous request with other parameters.",
        )


def check_volume_size(gib: Any) -> None:
    """StartSnapshot, VolumeSize: in GiB, at least 1; "the maximum size is 65536 GiB (64 TiB)"."""
    if not isinstance(gib, int) or not 1 <= gib <= MAX_VOLUME_GIB:
        raise invalid(
            "INVALID_VOLUME_SIZE", f"VolumeSize {gib!r} is not between 1 and {MAX_VOLUME_GIB} GiB."
        )


def check_timeout(minutes: Any) -> None:
    """StartSnapshot, Timeout: minutes, valid range 10 to 4320 (default 60)."""
    low, high = TIMEOUT_MINUTES
    if minutes is not None and (not isinstance(minutes, int) or not low <= minutes <= high):
        raise invalid(
            "INVALID_PARAMETER_VALUE", f"Timeout {minutes!r} is not between {low} and {high}."
        )


def check_tags(tags: Any) -> None:
    """StartSnapshot, Tags (EBS direct reference, Tag data type): key 1-127 characters, value at
    most 255; at most 50 tags and no ``aws:`` key prefix (EC2 user guide, tag restrictions)."""
    tags = tags or []
    if len(tags) > MAX_TAGS:
        raise invalid("INVALID_TAG", f"{len(tags)} tags; at most {MAX_TAGS} are allowed.")
    for tag in tags:
        key, value = tag.get("Key") or "", tag.get("Value") or ""
        if not 1 <= len(key) <= MAX_TAG_KEY:
            raise invalid("INVALID_TAG", f"Tag key {key!r} is not 1 to {MAX_TAG_KEY} characters.")
        if len(value) > MAX_TAG_VALUE:
            raise invalid("INVALID_TAG", f"The value of tag {key!r} is over {MAX_TAG_VALUE}.")
        if key.lower().startswith("aws:"):
            raise invalid("INVALID_TAG", f"Tag key {key!r} uses the reserved prefix 'aws:'.")


def check_description(description: Any) -> None:
    """StartSnapshot, Description: at most 255 characters."""
    if description is not None and len(str(description)) > MAX_DESCRIPTION:
        raise invalid(
            "INVALID_PARAMETER_VALUE", f"Description is over {MAX_DESCRIPTION} characters."
        )


def check_writable(snapshot_id: str, state: str, timed_out: bool) -> None:
    """PutSnapshotBlock: "The target snapshot must be in the pending state"; CompleteSnapshot:
    "You cannot write new blocks to a snapshot after it has been completed". A snapshot past its
    StartSnapshot Timeout is cancelled (reason WRITE_REQUEST_TIMEOUT)."""
    if timed_out:
        raise invalid(
            "WRITE_REQUEST_TIMEOUT",
            f"The snapshot '{snapshot_id}' was cancelled: its Timeout passed.",
        )
    if state != "pending":
        raise invalid("INVALID_SNAPSHOT_ID", f"The snapshot '{snapshot_id}' is {state}.")


def check_block_index(index: Any, volume_gib: int) -> None:
    """PutSnapshotBlock, BlockIndex: a logical index in units of 512 KiB blocks, within the volume
    (VolumeSize GiB of StartSnapshot)."""
    last = volume_gib * BLOCKS_PER_GIB - 1
    if not isinstance(index, int) or not 0 <= index <= last:
        raise invalid("INVALID_BLOCK", f"BlockIndex {index!r} is outside the volume (0-{last}).")


def check_data_length(data_length: Any, data: bytes) -> None:
    """PutSnapshotBlock, DataLength: "Currently, the only supported size is 524288 bytes"; the
    body (BlockData) is that block."""
    if data_length != BLOCK_SIZE or len(data) != BLOCK_SIZE:
        raise invalid(
            "INVALID_PARAMETER_VALUE",
            f"DataLength {data_length!r} with {len(data)} bytes of data; "
            f"the only supported size is {BLOCK_SIZE}.",
        )


def check_block_checksum(checksum: Any, algorithm: Any, data: bytes) -> None:
    """PutSnapshotBlock, Checksum / ChecksumAlgorithm: a Base64-encoded SHA256 of the data (only
    SHA256); "If the checksums do not correspond, the request fails" (user guide, checksums)."""
    if algorithm != "SHA256":
        raise invalid("INVALID_PARAMETER_VALUE", f"ChecksumAlgorithm {algorithm!r} is not SHA256.")
    if checksum != sha256_b64(data):
        raise invalid(
            "INVALID_PARAMETER_VALUE", "The Checksum does not match the SHA256 of the block data."
        )


def check_aggregate_parameters(checksum: Any, algorithm: Any, method: Any) -> None:
    """CompleteSnapshot, Checksum: optional; with it, ChecksumAlgorithm SHA256 and
    ChecksumAggregationMethod LINEAR ("the only supported" values)."""
    if checksum is None:
        return
    if algorithm != "SHA256" or method != "LINEAR":
        raise invalid(
            "INVALID_PARAMETER_VALUE",
            f"An aggregate Checksum needs ChecksumAlgorithm SHA256 and ChecksumAggregationMethod "
            f"LINEAR, not {algorithm!r} and {method!r}.",
        )


def linear_checksum(digests: Mapping[int, bytes]) -> str:
    """CompleteSnapshot, Checksum (LINEAR): the per-block checksums in ascending block index order,
    concatenated, and SHA256 over the whole (the raw 32-byte digests, then Base64)."""
    return sha256_b64(b"".join(digests[i] for i in sorted(digests)))


def seal_outcome(
    changed_blocks: Any, checksum: Any, digests: Mapping[int, bytes]
) -> tuple[str, str]:
    """CompleteSnapshot "starts an asynchronous workflow that seals the snapshot" (user guide,
    writing snapshots); its Status is completed, pending or error. A ChangedBlocksCount other than
    the blocks written, or a LINEAR Checksum that does not match them, is no request error: the
    seal fails and the snapshot ends in state ``error``. Returns (state, why)."""
    if changed_blocks != len(digests):
        return "error", f"ChangedBlocksCount {changed_blocks!r}, {len(digests)} blocks written"
    if checksum is not None and checksum != linear_checksum(digests):
        return "error", "the aggregate LINEAR checksum does not match the blocks written"
    return "completed", ""
