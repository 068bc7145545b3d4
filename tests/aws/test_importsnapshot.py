"""The S3 + ImportSnapshot upload path against the strict stand-in, over HTTP.

Crashes are simulated in-process: a botocore hook raises ``Killed`` (a BaseException, like the
SIGKILL it stands for, it skips fedimg's clean-up) right after the named call reached the server.
"""

from __future__ import annotations

import dataclasses
import json
import lzma
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from fedimg.aws.clients import Clients
from fedimg.aws.importsnapshot import import_snapshot_if_not_exists
from fedimg.aws.s3stage import MIN_PART_SIZE, object_key, raw_parts
from fedimg.config import Settings, validate
from fedimg.errors import AwsError, TransientError
from fedimg.identity import TAG_STATE, ImageIdentity, tags_of
from fedimg.source import BLOCK_SIZE, ImageSource, sha256_file
from fedimg.standins.aws import options
from fedimg.standins.aws.ec2_import import VMIMPORT_TRUST
from fedimg.standins.synthetic import write_sparse_image
from tests.helpers import Recorder, ebs, ec2, record

BUCKET = "fedimg-staging"
SIZE = 2 * MIN_PART_SIZE + 3 * BLOCK_SIZE + 512  # three parts, the last one short


class Killed(BaseException):
    """The process dies here."""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("import")
    raw = folder / "disk.x86_64.raw"
    write_sparse_image(raw, SIZE, 0.3)
    xz = folder / "disk.x86_64.raw.xz"
    xz.write_bytes(lzma.compress(raw.read_bytes(), preset=0))
    return xz, raw.read_bytes()


@pytest.fixture
def world(aws: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A bucket, the vmimport role, fast imports; settings for the import method."""
    monkeypatch.setenv(options.IMPORT_SECONDS, "0.3")
    boto3.client("s3", region_name="us-east-1", endpoint_url=aws).create_bucket(Bucket=BUCKET)
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=aws)
    iam.create_role(RoleName="vmimport", AssumeRolePolicyDocument=json.dumps(VMIMPORT_TRUST))
    upload = dataclasses.replace(
        settings.upload, method="import-snapshot", bucket=BUCKET, stall_seconds=30
    )
    return validate(dataclasses.replace(settings, upload=upload))


def run(
    settings: Settings, xz: Path, *, kill_after: str = "", nth: int = 1
) -> tuple[Any, Recorder]:
    session = boto3.session.Session()
    rec = record(session)
    calls = {"n": 0}

    def die(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            raise Killed(kill_after)

    if kill_after:
        session.events.register(f"after-call.{kill_after}", die)
    identity = ImageIdentity("disk.x86_64", "x86_64", sha256_file(xz))
    clients = Clients(settings.aws, session=session)
    with ImageSource(str(xz), sha256=identity.sha256) as src:
        try:
            return import_snapshot_if_not_exists(src, identity, settings, clients), rec
        except Killed:
            return None, rec


def snapshot_bytes(aws: str, snapshot_id: str, size: int) -> bytes:
    client = ebs(aws)
    disk = bytearray(-(-size // BLOCK_SIZE) * BLOCK_SIZE)
    for b in client.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]:
        got = client.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
        )
        start = b["BlockIndex"] * BLOCK_SIZE
        disk[start : start + BLOCK_SIZE] = got["BlockData"].read()
    return bytes(disk[:size])


def staged_keys(aws: str) -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws)
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def tasks(aws: str) -> list[dict[str, Any]]:
    return list(ec2(aws).describe_import_snapshot_tasks()["ImportSnapshotTasks"])


def test_raw_parts_rebuild_the_disk_with_its_zeros(image: tuple[Path, bytes]) -> None:
    xz, raw = image
    with ImageSource(str(xz)) as src:
        parts = list(raw_parts(src, MIN_PART_SIZE))
    assert [len(p) for p in parts[:-1]] == [MIN_PART_SIZE] * (len(parts) - 1)
    assert b"".join(parts) == raw


def test_import_yields_a_tagged_snapshot_holding_the_image_and_removes_the_object(
    world: Settings, image: tuple[Path, bytes], aws: str
) -> None:
    xz, raw = image
    result, rec = run(world, xz)
    assert snapshot_bytes(aws, result.snapshot_id, SIZE) == raw
    (request,) = rec.of("ImportSnapshot")
    assert request["DiskContainer"]["Format"] == "RAW"
    assert request["RoleName"] == "vmimport"
    assert len(request["ClientToken"]) == 64
    assert request["TagSpecifications"][0]["ResourceType"] == "import-snapshot-task"
    assert all(p["ChecksumAlgorithm"] == "SHA256" for p in rec.of("UploadPart"))
    assert rec.count("UploadPart") == 3
    snap = ec2(aws).describe_snapshots(SnapshotIds=[result.snapshot_id])["Snapshots"][0]
    assert tags_of(snap)[TAG_STATE] == "uploaded"
    assert staged_keys(aws) == []
    again, rec2 = run(world, xz)
    assert again.reused and again.snapshot_id == result.snapshot_id
    assert rec2.count("ImportSnapshot") == rec2.count("UploadPart") == 0


def test_a_run_killed_mid_multipart_is_continued_without_resending_parts(
    world: Settings, image: tuple[Path, bytes], aws: str
) -> None:
    xz, raw = image
    world = dataclasses.replace(world, aws=dataclasses.replace(world.aws, upload_workers=1))
    killed, first = run(world, xz, kill_after="s3.UploadPart", nth=2)
    assert killed is None and first.count("UploadPart") == 2
    result, second = run(world, xz)
    assert second.count("ListParts") == 1
    assert second.count("UploadPart") == 1  # parts 1 and 2 were there
    assert second.count("CreateMultipartUpload") == 0
    assert snapshot_bytes(aws, result.snapshot_id, SIZE) == raw
    assert len(tasks(aws)) == 1


def test_an_object_left_by_a_killed_run_is_reused(
    world: Settings, image: tuple[Path, bytes], aws: str
) -> None:
    xz, raw = image
    killed, _ = run(world, xz, kill_after="s3.CompleteMultipartUpload")
    assert killed is None and len(staged_keys(aws)) == 1
    result, second = run(world, xz)
    assert second.count("UploadPart") == 0 and second.count("ImportSnapshot") == 1
    assert snapshot_bytes(aws, result.snapshot_id, SIZE) == raw
    assert staged_keys(aws) == []


def test_a_running_task_left_by_a_killed_run_is_followed_not_started_again(
    world: Settings, image: tuple[Path, bytes], aws: str
) -> None:
    xz, raw = image
    killed, _ = run(world, xz, kill_after="ec2.ImportSnapshot")
    assert killed is None
    (task,) = tasks(aws)
    assert task["SnapshotTaskDetail"]["Status"] == "active"
    result, second = run(world, xz)
    assert second.count("ImportSnapshot") == 0 and second.count("UploadPart") == 0
    assert snapshot_bytes(aws, result.snapshot_id, SIZE) == raw
    snap = ec2(aws).describe_snapshots(SnapshotIds=[result.snapshot_id])["Snapshots"][0]
    assert tags_of(snap)["fedimg:import-task"] == task["ImportTaskId"]
    assert len(tasks(aws)) == 1 and staged_keys(aws) == []


def test_a_stalled_task_is_cancelled_reported_and_the_next_run_imports_anew(
    world: Settings, image: tuple[Path, bytes], aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    xz, raw = image
    monkeypatch.setenv(options.IMPORT_STALL_AT, "40")
    stalling = dataclasses.replace(world, upload=dataclasses.replace(world.upload, stall_seconds=1))
    with pytest.raises(TransientError, match=r"made no progress for 1 s \(at 40%.*cancelled"):
        run(stalling, xz)
    (task,) = tasks(aws)
    assert task["SnapshotTaskDetail"]["Status"] in ("deleting", "deleted")
    assert staged_keys(aws) == []
    monkeypatch.delenv(options.IMPORT_STALL_AT)
    result, second = run(world, xz)
    assert second.count("ImportSnapshot") == 2  # the dead task's token, then the next one
    assert snapshot_bytes(aws, result.snapshot_id, SIZE) == raw


def test_a_task_past_the_deadline_is_cancelled(
    world: Settings, image: tuple[Path, bytes], aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    xz, _ = image
    monkeypatch.setenv(options.IMPORT_SECONDS, "60")
    short = dataclasses.replace(world, upload=dataclasses.replace(world.upload, deadline_seconds=1))
    with pytest.raises(TransientError, match="not done after 1 s"):
        run(short, xz)
    assert tasks(aws)[0]["SnapshotTaskDetail"]["Status"] in ("deleting", "deleted")


def test_a_missing_role_fails_permanently_and_leaves_no_object(
    world: Settings, image: tuple[Path, bytes], aws: str
) -> None:
    xz, _ = image
    other = dataclasses.replace(world, upload=dataclasses.replace(world.upload, role="nope"))
    with pytest.raises(AwsError, match=r"InvalidParameter.*service role nope") as caught:
        run(other, xz)
    assert not caught.value.retryable
    assert staged_keys(aws) == []
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_object_key_names_the_content() -> None:
    a = ImageIdentity("disk.x86_64", "x86_64", "a" * 64)
    b = ImageIdentity("disk.x86_64", "x86_64", "b" * 64)
    assert object_key("p/", a) != object_key("p/", b)
    assert object_key("p/", a).startswith("p/disk.x86_64-")


def test_a_denied_s3_action_fails_the_upload_with_s3s_access_denied(
    world: Settings, image: tuple[Path, bytes], aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in's IAM model covers S3 (FEDIMG_STANDIN_DENY): UploadPart is s3:PutObject,
    refused with S3's AccessDenied, 403; no import is started."""
    xz, _ = image
    monkeypatch.setenv(options.DENY, "s3:PutObject")
    with pytest.raises(AwsError, match="AccessDenied") as caught:
        run(world, xz)
    assert not caught.value.retryable
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws)
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"x")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert tasks(aws) == []
