"""The strict stand-in's EBS direct timing: StartSnapshot's Timeout and eventual consistency.

AWS minutes are compressed with ``FEDIMG_STANDIN_MINUTE_SECONDS`` so a Timeout of 10 minutes
passes in a second.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from fedimg.standins.aws import options
from tests.standins.test_aws_ebs import BLOCK, client, complete, put, refused, state


@pytest.fixture
def ebs(aws: str) -> Any:
    return client("ebs", aws)


@pytest.fixture
def ec2(aws: str) -> Any:
    ec2 = client("ec2", aws)
    ec2.describe_snapshots(OwnerIds=["self"])  # loads botocore's (large) EC2 model before timing
    return ec2


def test_a_snapshot_idle_past_its_timeout_is_cancelled(
    ebs: Any, ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """StartSnapshot, Timeout: the snapshot is cancelled if no block is written, or it is not
    completed after the last block, within Timeout minutes: state ``error``; PutSnapshotBlock and
    CompleteSnapshot then fail (ValidationException, reason WRITE_REQUEST_TIMEOUT). A write
    restarts the clock."""
    monkeypatch.setenv(options.MINUTE_SECONDS, "0.1")  # Timeout 10 → 1 s
    snapshot_id = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
    data = os.urandom(BLOCK)
    time.sleep(0.6)
    put(ebs, snapshot_id, 0, data)
    time.sleep(0.5)  # over 1 s since the start, 0.5 s since the write
    assert state(ec2, snapshot_id)["State"] == "pending"
    time.sleep(1.1)
    assert state(ec2, snapshot_id)["State"] == "error"
    refused(lambda: put(ebs, snapshot_id, 1, data), "ValidationException", "WRITE_REQUEST_TIMEOUT")
    refused(
        lambda: complete(ebs, snapshot_id, {0: data}),
        "ValidationException",
        "WRITE_REQUEST_TIMEOUT",
    )


def test_a_new_snapshot_is_invisible_for_the_visibility_delay(
    ebs: Any, ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EC2 API reference, "Eventual consistency": right after StartSnapshot, DescribeSnapshots by
    id answers InvalidSnapshot.NotFound and by filter leaves it out, and PutSnapshotBlock answers
    ResourceNotFoundException ("snapshot does not exist"), until the delay has passed."""
    monkeypatch.setenv(options.VISIBILITY_DELAY, "0.5")
    started = time.monotonic()
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = os.urandom(BLOCK)
    refused(lambda: ec2.describe_snapshots(SnapshotIds=[snapshot_id]), "InvalidSnapshot.NotFound")
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
    refused(lambda: put(ebs, snapshot_id, 0, data), "ResourceNotFoundException")
    assert time.monotonic() - started < 0.5, "too slow to see the delay; the test proves nothing"
    time.sleep(0.5)
    put(ebs, snapshot_id, 0, data)
    assert state(ec2, snapshot_id)["State"] == "pending"
    assert [s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]] == [
        snapshot_id
    ]
