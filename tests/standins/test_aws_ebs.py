"""The strict stand-in's EBS direct rules, spoken to over HTTP like AWS.

Each test names the EBS direct APIs reference page (and parameter) it follows.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from fedimg.standins.moto import reset

BLOCK = 524288


def client(service: str, url: str) -> Any:
    # One attempt and no client-side validation: the server's answer is what is under test.
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"}, parameter_validation=False
    )
    return boto3.client(service, region_name="us-east-1", endpoint_url=url, config=config)


@pytest.fixture
def ebs(aws: str) -> Any:
    return client("ebs", aws)


@pytest.fixture
def ec2(aws: str) -> Any:
    return client("ec2", aws)


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def put(ebs: Any, snapshot_id: str, index: int, data: bytes, **overrides: Any) -> Any:
    params = {
        "SnapshotId": snapshot_id,
        "BlockIndex": index,
        "BlockData": data,
        "DataLength": len(data),
        "Checksum": b64(digest(data)),
        "ChecksumAlgorithm": "SHA256",
    } | overrides
    return ebs.put_snapshot_block(**params)


def complete(ebs: Any, snapshot_id: str, blocks: dict[int, bytes], **overrides: Any) -> Any:
    linear = b64(digest(b"".join(digest(blocks[i]) for i in sorted(blocks))))
    params = {
        "SnapshotId": snapshot_id,
        "ChangedBlocksCount": len(blocks),
        "Checksum": linear,
        "ChecksumAlgorithm": "SHA256",
        "ChecksumAggregationMethod": "LINEAR",
    } | overrides
    return ebs.complete_snapshot(**params)


def refused(call: Any, code: str, reason: str | None = None) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        call()
    response: dict[str, Any] = caught.value.response
    assert response["Error"]["Code"] == code, response
    if reason is not None:
        assert response.get("Reason") == reason, response
    return response


def state(ec2: Any, snapshot_id: str) -> dict[str, Any]:
    snapshots: list[dict[str, Any]] = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    return snapshots[0]


def test_client_token_returns_the_same_snapshot_or_conflicts(ebs: Any) -> None:
    """User guide, "Idempotency for StartSnapshot API" (StartSnapshot, ClientToken): the same
    token and parameters return the original snapshot; other parameters: ConflictException."""
    first = ebs.start_snapshot(VolumeSize=1, ClientToken="fedimg-1", Timeout=60)
    again = ebs.start_snapshot(VolumeSize=1, ClientToken="fedimg-1", Timeout=60)
    assert again["SnapshotId"] == first["SnapshotId"]
    refused(
        lambda: ebs.start_snapshot(VolumeSize=2, ClientToken="fedimg-1", Timeout=60),
        "ConflictException",
    )
    other = ebs.start_snapshot(VolumeSize=2, ClientToken="fedimg-2", Timeout=60)
    assert other["SnapshotId"] != first["SnapshotId"]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"Timeout": 9}, "INVALID_PARAMETER_VALUE"),
        ({"Timeout": 4321}, "INVALID_PARAMETER_VALUE"),
        ({"VolumeSize": 0}, "INVALID_VOLUME_SIZE"),
        ({"VolumeSize": 65537}, "INVALID_VOLUME_SIZE"),
        ({"Tags": [{"Key": f"k{i}", "Value": ""} for i in range(51)]}, "INVALID_TAG"),
        ({"Tags": [{"Key": "k" * 128, "Value": ""}]}, "INVALID_TAG"),
        ({"Tags": [{"Key": "k", "Value": "v" * 256}]}, "INVALID_TAG"),
        ({"Tags": [{"Key": "aws:owner", "Value": "x"}]}, "INVALID_TAG"),
        ({"Description": "d" * 256}, "INVALID_PARAMETER_VALUE"),
    ],
)
def test_start_snapshot_refuses_what_the_reference_forbids(
    ebs: Any, params: dict[str, Any], reason: str
) -> None:
    """StartSnapshot: Timeout 10-4320, VolumeSize 1-65536 GiB, Description at most 255; Tag
    data type: key at most 127, value at most 255; EC2 tag restrictions: 50 tags, no ``aws:``."""
    start = {"VolumeSize": 1} | params
    refused(lambda: ebs.start_snapshot(**start), "ValidationException", reason)


def test_start_snapshot_accepts_the_limits_and_holds_them(ebs: Any, ec2: Any) -> None:
    """StartSnapshot: the limits themselves pass; the snapshot is ``pending`` with its tags and
    a BlockSize of 524288 (PutSnapshotBlock: "the only supported size"), and no volume exists."""
    tags = [{"Key": f"{i:03d}" + "k" * 124, "Value": "v" * 255} for i in range(50)]
    started = ebs.start_snapshot(VolumeSize=65536, Timeout=4320, Tags=tags, Description="d" * 255)
    assert started["BlockSize"] == BLOCK and started["Status"] == "pending"
    assert ebs.start_snapshot(VolumeSize=1, Timeout=10)["Status"] == "pending"
    described = state(ec2, started["SnapshotId"])
    assert described["State"] == "pending"
    assert sorted(described["Tags"], key=lambda t: t["Key"]) == tags
    assert ec2.describe_volumes()["Volumes"] == []


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"BlockData": b"x" * 4096, "DataLength": 4096}, "INVALID_PARAMETER_VALUE"),
        ({"DataLength": 4096}, "INVALID_PARAMETER_VALUE"),
        ({"Checksum": b64(digest(b"other data"))}, "INVALID_PARAMETER_VALUE"),
        ({"ChecksumAlgorithm": "MD5"}, "INVALID_PARAMETER_VALUE"),
        ({"BlockIndex": 2048}, "INVALID_BLOCK"),
    ],
)
def test_put_snapshot_block_refuses_bad_blocks(
    ebs: Any, overrides: dict[str, Any], reason: str
) -> None:
    """PutSnapshotBlock: DataLength and data 524288 bytes; Checksum the Base64 SHA256 of the data,
    ChecksumAlgorithm SHA256 ("If the checksums do not correspond, the request fails"); BlockIndex
    within the volume (1 GiB: blocks 0-2047). The block index 2047 itself is accepted."""
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = os.urandom(BLOCK)
    refused(lambda: put(ebs, snapshot_id, 0, data, **overrides), "ValidationException", reason)
    assert put(ebs, snapshot_id, 2047, data)["Checksum"] == b64(digest(data))


def test_put_snapshot_block_needs_an_existing_pending_snapshot(ebs: Any) -> None:
    """PutSnapshotBlock: "The target snapshot must be in the pending state"; an unknown snapshot is
    ResourceNotFoundException (reason SNAPSHOT_NOT_FOUND)."""
    data = os.urandom(BLOCK)
    refused(
        lambda: put(ebs, "snap-0123456789abcdef0", 0, data),
        "ResourceNotFoundException",
        "SNAPSHOT_NOT_FOUND",
    )
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put(ebs, snapshot_id, 0, data)
    complete(ebs, snapshot_id, {0: data})
    refused(lambda: put(ebs, snapshot_id, 1, data), "ValidationException", "INVALID_SNAPSHOT_ID")


def test_a_block_written_twice_keeps_the_last_write(ebs: Any) -> None:
    """PutSnapshotBlock: "If the specified block contains data, the existing data is overwritten";
    CompleteSnapshot counts it once and checks the LINEAR checksum against the last data."""
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    first, last = os.urandom(BLOCK), os.urandom(BLOCK)
    put(ebs, snapshot_id, 7, first)
    put(ebs, snapshot_id, 7, last)
    assert complete(ebs, snapshot_id, {7: last})["Status"] == "completed"
    token = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"][0]["BlockToken"]
    got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=7, BlockToken=token)
    assert got["BlockData"].read() == last


@pytest.mark.parametrize(
    "overrides",
    [{"ChangedBlocksCount": 1}, {"ChangedBlocksCount": 3}, {"Checksum": b64(digest(b"x"))}],
    ids=["too-few", "too-many", "wrong-linear-checksum"],
)
def test_a_seal_that_does_not_match_the_blocks_ends_in_error(
    ebs: Any, ec2: Any, overrides: dict[str, Any]
) -> None:
    """CompleteSnapshot starts an asynchronous seal (user guide, "Write snapshots"); its Status is
    completed | pending | error. A ChangedBlocksCount or LINEAR Checksum that does not match the
    blocks written is no request error: the snapshot goes to ``error``, and stays there."""
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    blocks = {0: os.urandom(BLOCK), 9: os.urandom(BLOCK)}
    for index, data in blocks.items():
        put(ebs, snapshot_id, index, data)
    assert complete(ebs, snapshot_id, blocks, **overrides)["Status"] == "error"
    described = state(ec2, snapshot_id)
    assert described["State"] == "error" and described["StateMessage"]
    refused(lambda: complete(ebs, snapshot_id, blocks), "ValidationException")


def test_complete_snapshot_checksum_needs_sha256_and_linear(ebs: Any) -> None:
    """CompleteSnapshot: ChecksumAlgorithm SHA256 and ChecksumAggregationMethod LINEAR are "the
    only supported" values for an aggregate Checksum."""
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    refused(
        lambda: complete(ebs, snapshot_id, {}, ChecksumAggregationMethod="TREE"),
        "ValidationException",
        "INVALID_PARAMETER_VALUE",
    )
    assert complete(ebs, snapshot_id, {})["Status"] == "completed"


def test_fedimg_style_upload_reads_back_block_for_block(ebs: Any, ec2: Any) -> None:
    """PutSnapshotBlock with per-block checksums, CompleteSnapshot with the LINEAR aggregate (user
    guide, "Use checksums"), then ListSnapshotBlocks / GetSnapshotBlock return the data with
    BlockSize 524288. A repeated CompleteSnapshot finds the seal done and changes nothing."""
    snapshot_id = ebs.start_snapshot(VolumeSize=1, ClientToken="upload", Timeout=60)["SnapshotId"]
    blocks = {index: os.urandom(BLOCK) for index in (2047, 0, 5)}
    for index, data in blocks.items():
        put(ebs, snapshot_id, index, data)
    assert complete(ebs, snapshot_id, blocks)["Status"] == "completed"
    assert complete(ebs, snapshot_id, blocks)["Status"] == "completed"
    assert state(ec2, snapshot_id)["State"] == "completed"
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    assert listed["BlockSize"] == BLOCK and listed["VolumeSize"] == 1
    assert [b["BlockIndex"] for b in listed["Blocks"]] == [0, 5, 2047]
    for b in listed["Blocks"]:
        got = ebs.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
        )
        data = blocks[b["BlockIndex"]]
        assert got["BlockData"].read() == data
        assert got["Checksum"] == b64(digest(data)) and got["DataLength"] == BLOCK


def test_reset_forgets_client_tokens(ebs: Any, aws: str) -> None:
    """moto-api/reset forgets the rules' state with moto's: a used ClientToken is free again."""
    ebs.start_snapshot(VolumeSize=1, ClientToken="reused")
    reset(aws)
    assert ebs.start_snapshot(VolumeSize=2, ClientToken="reused")["VolumeSize"] == 2
