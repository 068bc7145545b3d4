"""The strict stand-in's time model (``timing.py``): AWS's durations, compressed, read over HTTP.

Each test switches the model on with a strong compression (``FEDIMG_STANDIN_TIME_SCALE``) and names
the source of the behaviour it checks. States are asserted in order; durations only from below
(nothing is ready before its modelled time), never from above, so a loaded machine cannot fail them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config

from fedimg.standins.aws import options, timing
from tests.standins.test_aws_ebs import BLOCK, client, complete, put, refused
from tests.standins.test_aws_ec2_images import register, snapshot

REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2", "sa-east-1", "eu-north-1")


@pytest.fixture
def ebs(aws: str) -> Any:
    return client("ebs", aws)


@pytest.fixture
def ec2(aws: str) -> Any:
    return client("ec2", aws)


@pytest.fixture
def scale(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Turns the model on at the given real seconds per AWS second."""

    def set_scale(value: float) -> None:
        monkeypatch.setenv(options.TIME_SCALE, str(value))

    return set_scale


def until(read: Callable[[], Any], want: Any, deadline_s: float = 10.0) -> float:
    """Seconds until ``read()`` returns ``want`` (polled every 10 ms)."""
    start = time.monotonic()
    while (got := read()) != want:
        assert time.monotonic() - start < deadline_s, f"still {got!r}, want {want!r}"
        time.sleep(0.01)
    return time.monotonic() - start


def snapshot_of(ec2: Any, snapshot_id: str) -> dict[str, Any]:
    return dict(ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0])


def image_state(ec2: Any, ami: str) -> str:
    return str(ec2.describe_images(ImageIds=[ami])["Images"][0]["State"])


def percent(progress: str) -> int:
    return int(progress.rstrip("%"))


def test_the_model_is_off_unless_switched_on(ebs: Any, ec2: Any) -> None:
    """Without FEDIMG_STANDIN_TIME_SCALE everything is ready at once, as moto has it."""
    assert os.environ.get(options.TIME_SCALE) is None
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = os.urandom(BLOCK)
    put(ebs, snapshot_id, 0, data)
    assert complete(ebs, snapshot_id, {0: data})["Status"] == "completed"
    assert image_state(ec2, register(ec2, snapshot_id, BlockDeviceMappings=[])) == "available"


def test_model_durations_follow_size_and_region() -> None:
    """The model's figures: the seal and a copy grow with the data written; a region's copy factor
    is fixed by its name and lies in the documented spread."""
    assert timing.seal_seconds(2 * timing.GIB) > timing.seal_seconds(0) == timing.SEAL_BASE_S
    assert timing.copy_seconds("eu-west-1", 4 * timing.GIB) > timing.copy_seconds(
        "eu-west-1", timing.GIB
    )
    low, high = timing.COPY_REGION_SPREAD
    factors = {r: timing.region_factor(r) for r in REGIONS}
    assert all(low <= f <= high for f in factors.values())
    assert factors == {r: timing.region_factor(r) for r in REGIONS}
    assert len(set(factors.values())) == len(REGIONS)
    assert timing.copy_seconds("sa-east-1", timing.GIB) == pytest.approx(
        (timing.COPY_BASE_S + timing.COPY_S_PER_GIB) * factors["sa-east-1"]
    )


def test_a_completed_upload_is_pending_with_rising_progress_until_sealed(
    ebs: Any, ec2: Any, scale: Callable[[float], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EBS user guide, "Write snapshots": CompleteSnapshot starts an asynchronous seal; its Status
    and DescribeSnapshots say pending (Progress rising) until completed. Meanwhile a retried
    CompleteSnapshot answers pending, a new block is refused, and StartSnapshot's Timeout (for a
    snapshot "not completed after writing the last block") no longer applies."""
    scale(0.05)  # the seal of one block: ~30 AWS s → 1.5 s
    monkeypatch.setenv(options.MINUTE_SECONDS, "0.1")  # Timeout 10 → 1 s, shorter than the seal
    snapshot_id = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
    data = os.urandom(BLOCK)
    put(ebs, snapshot_id, 0, data)
    sealed_at = time.monotonic()
    assert complete(ebs, snapshot_id, {0: data})["Status"] == "pending"
    first = snapshot_of(ec2, snapshot_id)
    assert first["State"] == "pending"
    assert complete(ebs, snapshot_id, {0: data})["Status"] == "pending"
    refused(lambda: put(ebs, snapshot_id, 1, data), "ValidationException")
    time.sleep(0.15)
    second = snapshot_of(ec2, snapshot_id)
    assert percent(first["Progress"]) < percent(second["Progress"]) < 100
    until(lambda: snapshot_of(ec2, snapshot_id)["State"], "completed")
    assert time.monotonic() - sealed_at >= timing.real_seconds(timing.seal_seconds(BLOCK))
    assert snapshot_of(ec2, snapshot_id)["Progress"] == "100%"
    assert complete(ebs, snapshot_id, {0: data})["Status"] == "completed"


def test_a_registered_ami_is_pending_then_available(
    ec2: Any, scale: Callable[[float], None]
) -> None:
    """API_RegisterImage.html / DescribeImages State: a new AMI is pending, then available."""
    snap = snapshot(ec2)
    scale(0.04)  # 15 AWS s → 0.6 s
    started = time.monotonic()
    ami = register(ec2, snap)
    assert image_state(ec2, ami) == "pending"
    until(lambda: image_state(ec2, ami), "available")
    assert time.monotonic() - started >= timing.real_seconds(timing.REGISTER_S)


def test_a_copy_takes_its_region_s_time_with_its_snapshots(
    aws: str, ec2: Any, scale: Callable[[float], None]
) -> None:
    """Copy an AMI (EC2 user guide): best effort, minutes; modelled from the data written and a
    factor per region. The copy and its snapshots are pending, then available and completed, and
    neither region's copy is done before its own modelled time."""
    factors = {r: timing.region_factor(r) for r in REGIONS if r != "us-east-1"}
    fast, slow = min(factors, key=factors.__getitem__), max(factors, key=factors.__getitem__)
    snap = snapshot(ec2, gib=1)
    scale(0.004)  # 1 GiB: 300 AWS s x factor → 0.6-2.4 s
    ami = register(ec2, snap)
    until(lambda: image_state(ec2, ami), "available")
    clients = {r: client_in(aws, r) for r in (fast, slow)}
    started = time.monotonic()
    copies = {
        r: c.copy_image(SourceRegion="us-east-1", SourceImageId=ami, Name="copy")["ImageId"]
        for r, c in clients.items()
    }
    copied_snaps = {}
    for r, c in clients.items():
        mapping = c.describe_images(ImageIds=[copies[r]])["Images"][0]["BlockDeviceMappings"][0]
        copied_snaps[r] = mapping["Ebs"]["SnapshotId"]
        assert image_state(c, copies[r]) == snapshot_of(c, copied_snaps[r])["State"] == "pending"
    for r in (fast, slow):
        c, copy, copied_snap = clients[r], copies[r], copied_snaps[r]
        until(lambda: image_state(c, copy), "available")  # noqa: B023 - used at once
        assert time.monotonic() - started >= timing.real_seconds(timing.copy_seconds(r, timing.GIB))
        assert snapshot_of(c, copied_snap)["State"] == "completed"
    assert timing.copy_seconds(slow, timing.GIB) > 2 * timing.copy_seconds(fast, timing.GIB)


def client_in(url: str, region: str) -> Any:
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("ec2", region_name=region, endpoint_url=url, config=config)


def test_an_instance_runs_then_passes_its_status_checks(
    ec2: Any, scale: Callable[[float], None]
) -> None:
    """RunInstances answers pending; pending → running (measured ~17 s), then DescribeInstanceStatus
    shows the instance and system checks initializing until they have run (every minute), then ok.
    """
    registered = ec2.register_image(Name="boot", Architecture="x86_64", VirtualizationType="hvm")
    ami = str(registered["ImageId"])
    scale(0.015)  # running after 0.26 s, checks ok 1.8 s later
    started = time.monotonic()
    launched = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.small")
    instance = launched["Instances"][0]
    assert instance["State"] == {"Code": 0, "Name": "pending"}

    def status() -> tuple[str, str, str]:
        s = ec2.describe_instance_status(
            InstanceIds=[instance["InstanceId"]], IncludeAllInstances=True
        )["InstanceStatuses"][0]
        return (
            s["InstanceState"]["Name"],
            s["InstanceStatus"]["Status"],
            s["SystemStatus"]["Status"],
        )

    assert status()[0] == "pending"
    until(lambda: status()[0], "running")
    running = time.monotonic() - started
    assert running >= timing.real_seconds(timing.RUNNING_S)
    assert status()[1:] == ("initializing", "initializing")
    until(status, ("running", "ok", "ok"))
    assert time.monotonic() - started >= timing.real_seconds(
        timing.RUNNING_S + timing.STATUS_CHECKS_S
    )
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    assert status()[0] == "terminated"


def test_put_snapshot_block_above_the_rate_is_throttled_and_botocore_retries_it(
    aws: str, ebs: Any, scale: Callable[[float], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Service Quotas, EBS L-1774F84A: PutSnapshotBlock requests per snapshot, 1,000 a second
    (lowered here); above it RequestThrottledException, HTTP 400, reason RESOURCE_LEVEL_THROTTLE
    (EBS direct API reference), which botocore's standard retry mode retries."""
    scale(0.001)
    monkeypatch.setenv(options.PUT_BLOCK_RATE, "5")
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = os.urandom(BLOCK)
    response = refused(
        lambda: [put(ebs, snapshot_id, index, data) for index in range(30)],
        "RequestThrottledException",
        "RESOURCE_LEVEL_THROTTLE",
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400

    retrying = boto3.client(
        "ebs",
        region_name="us-east-1",
        endpoint_url=aws,
        config=Config(retries={"total_max_attempts": 10, "mode": "standard"}),
    )
    answers = [put(retrying, snapshot_id, index, data) for index in range(5)]
    assert sum(a["ResponseMetadata"]["RetryAttempts"] for a in answers) > 0
