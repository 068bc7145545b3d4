"""The strict stand-in's ImportSnapshot, DescribeImportSnapshotTasks and CancelImportTask.

Each test names the page it follows: the EC2 API reference (API_ImportSnapshot.html,
API_DescribeImportSnapshotTasks.html, API_CancelImportTask.html, API_SnapshotDiskContainer.html)
or the VM Import/Export User Guide ("Required service role", import a disk as a snapshot).
"""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from fedimg.standins.aws import options

BUCKET = "fedimg-import-rules"
BLOCK = 524288
VMIE_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "vmie.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def client(service: str, url: str) -> Any:
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client(service, region_name="us-east-1", endpoint_url=url, config=config)


@pytest.fixture
def ec2(aws: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(options.IMPORT_SECONDS, "0.2")
    client("s3", aws).create_bucket(Bucket=BUCKET)
    client("iam", aws).create_role(
        RoleName="vmimport", AssumeRolePolicyDocument=json.dumps(VMIE_TRUST)
    )
    return client("ec2", aws)


def put(aws: str, key: str, data: bytes) -> None:
    client("s3", aws).put_object(Bucket=BUCKET, Key=key, Body=data)


def start(ec2: Any, key: str, **overrides: Any) -> dict[str, Any]:
    params = {
        "DiskContainer": {"Format": "RAW", "UserBucket": {"S3Bucket": BUCKET, "S3Key": key}}
    } | overrides
    return dict(ec2.import_snapshot(**params))


def settled(ec2: Any, task_id: str, deadline: float = 10.0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        task = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])["ImportSnapshotTasks"]
        detail: dict[str, Any] = task[0]["SnapshotTaskDetail"]
        if detail["Status"] in ("completed", "deleted") or time.monotonic() > end:
            return detail
        time.sleep(0.05)


def refused(call: Any, code: str) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.response["Error"]["Code"] == code
    return str(caught.value.response["Error"]["Message"])


def test_a_raw_disk_becomes_a_completed_snapshot_holding_its_bytes(ec2: Any, aws: str) -> None:
    """API_SnapshotTaskDetail.html: SnapshotId once completed; EBS direct reads the blocks."""
    data = b"\1" * BLOCK + bytes(BLOCK) + b"\2" * 1024
    put(aws, "disk.raw", data)
    detail = settled(ec2, start(ec2, "disk.raw")["ImportTaskId"])
    assert detail["Status"] == "completed" and detail["DiskImageSize"] == len(data)
    ebs = client("ebs", aws)
    blocks = ebs.list_snapshot_blocks(SnapshotId=detail["SnapshotId"])["Blocks"]
    assert [b["BlockIndex"] for b in blocks] == [0, 2]  # the zero block holds no data
    last = ebs.get_snapshot_block(
        SnapshotId=detail["SnapshotId"], BlockIndex=2, BlockToken=blocks[1]["BlockToken"]
    )["BlockData"].read()
    assert last == b"\2" * 1024 + bytes(BLOCK - 1024)


def test_the_task_moves_through_pending_and_rising_progress(
    ec2: Any, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Describe import snapshot tasks (CLI example): active, "downloading/converting", Progress."""
    monkeypatch.setenv(options.IMPORT_SECONDS, "1.0")
    put(aws, "disk.raw", b"\1" * 4096)
    task = start(ec2, "disk.raw")
    assert task["SnapshotTaskDetail"]["StatusMessage"] == "pending"
    seen = []
    for _ in range(12):
        d = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task["ImportTaskId"]])
        detail = d["ImportSnapshotTasks"][0]["SnapshotTaskDetail"]
        if detail["Status"] == "active" and detail["StatusMessage"] != "pending":
            seen.append(int(detail["Progress"]))
        time.sleep(0.08)
    assert seen and seen == sorted(seen) and seen[0] < seen[-1] < 100


def test_a_reused_client_token_returns_the_same_task_and_refuses_other_parameters(
    ec2: Any, aws: str
) -> None:
    """API_ImportSnapshot.html, ClientToken; EC2 common errors: IdempotentParameterMismatch."""
    put(aws, "disk.raw", b"\1" * 4096)
    first = start(ec2, "disk.raw", ClientToken="t")
    assert start(ec2, "disk.raw", ClientToken="t")["ImportTaskId"] == first["ImportTaskId"]
    refused(
        lambda: start(ec2, "disk.raw", ClientToken="t", Description="other"),
        "IdempotentParameterMismatch",
    )


def test_a_missing_object_ends_the_task_deleted(ec2: Any) -> None:
    """The service role reads the disk from S3; a key that is not there fails the task."""
    detail = settled(ec2, start(ec2, "nothing.raw")["ImportTaskId"])
    assert detail["Status"] == "deleted"
    assert detail["StatusMessage"].startswith("ClientError: Disk validation failed")


def test_a_disk_not_a_whole_number_of_sectors_is_refused(ec2: Any, aws: str) -> None:
    put(aws, "odd.raw", b"\1" * 1000)
    detail = settled(ec2, start(ec2, "odd.raw")["ImportTaskId"])
    assert detail["Status"] == "deleted" and "512" in detail["StatusMessage"]


def test_a_format_it_cannot_read_is_refused(ec2: Any, aws: str) -> None:
    """API_SnapshotDiskContainer.html, Format: a VHD without its footer is not a VHD."""
    put(aws, "disk.vhd", b"\1" * 4096)
    container = {"Format": "VHD", "UserBucket": {"S3Bucket": BUCKET, "S3Key": "disk.vhd"}}
    detail = settled(ec2, start(ec2, "disk.vhd", DiskContainer=container)["ImportTaskId"])
    assert detail["StatusMessage"] == (
        "ClientError: Disk validation failed [Unsupported specified file format]"
    )


def test_a_format_outside_the_valid_values_is_refused_at_once(ec2: Any) -> None:
    """API_SnapshotDiskContainer.html, Format: "Valid values: VHD | VMDK | RAW"."""
    container = {"Format": "QCOW2", "UserBucket": {"S3Bucket": BUCKET, "S3Key": "x"}}
    refused(lambda: start(ec2, "x", DiskContainer=container), "InvalidParameterValue")


def test_the_role_must_exist_vmimport_by_default(ec2: Any, aws: str) -> None:
    """API_ImportSnapshot.html, RoleName: default 'vmimport'."""
    client("iam", aws).delete_role(RoleName="vmimport")
    message = refused(lambda: start(ec2, "x"), "InvalidParameter")
    assert "service role vmimport provided does not exist" in message


def test_a_role_that_does_not_trust_vm_import_is_unusable(ec2: Any, aws: str) -> None:
    """VM Import/Export User Guide, "Required service role": trust vmie.amazonaws.com."""
    trust = json.loads(json.dumps(VMIE_TRUST))
    trust["Statement"][0]["Principal"]["Service"] = "ec2.amazonaws.com"
    client("iam", aws).create_role(RoleName="other", AssumeRolePolicyDocument=json.dumps(trust))
    refused(lambda: start(ec2, "x", RoleName="other"), "InvalidParameter")


def test_cancel_moves_an_active_task_to_deleted_and_refuses_a_finished_one(
    ec2: Any, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API_CancelImportTask.html: PreviousState and State of the cancelled task."""
    monkeypatch.setenv(options.IMPORT_SECONDS, "60")
    put(aws, "disk.raw", b"\1" * 4096)
    task_id = start(ec2, "disk.raw")["ImportTaskId"]
    answer = ec2.cancel_import_task(ImportTaskId=task_id, CancelReason="stuck")
    assert (answer["PreviousState"], answer["State"]) == ("active", "deleting")
    assert settled(ec2, task_id)["Status"] == "deleted"
    refused(lambda: ec2.cancel_import_task(ImportTaskId=task_id), "IncorrectState")


def test_a_stalled_task_stays_active_at_the_stall_point(
    ec2: Any, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(options.IMPORT_STALL_AT, "30")
    put(aws, "disk.raw", b"\1" * 4096)
    task_id = start(ec2, "disk.raw")["ImportTaskId"]
    detail = settled(ec2, task_id, deadline=0.6)
    assert (detail["Status"], detail["Progress"]) == ("active", "30")


def test_tags_go_on_the_task_and_only_its_resource_type_is_accepted(ec2: Any, aws: str) -> None:
    """API_ImportSnapshot.html, TagSpecifications: "tags to apply to the import snapshot task"."""
    put(aws, "disk.raw", b"\1" * 4096)
    spec = {"ResourceType": "import-snapshot-task", "Tags": [{"Key": "k", "Value": "v"}]}
    task = start(ec2, "disk.raw", TagSpecifications=[spec])
    assert task["Tags"] == [{"Key": "k", "Value": "v"}]
    wrong = [spec | {"ResourceType": "snapshot"}]
    refused(lambda: start(ec2, "disk.raw", TagSpecifications=wrong), "InvalidParameterValue")


def test_an_unknown_task_id_is_refused(ec2: Any) -> None:
    refused(
        lambda: ec2.describe_import_snapshot_tasks(ImportTaskIds=["import-snap-0"]),
        "InvalidConversionTaskId",
    )
