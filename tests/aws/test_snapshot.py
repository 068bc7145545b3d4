from __future__ import annotations

import base64
import hashlib
import lzma
from pathlib import Path
from typing import Any

import boto3
import pytest

from fedimg.aws.clients import Clients
from fedimg.aws.snapshot import upload_snapshot_if_not_exists
from fedimg.config import Settings
from fedimg.errors import AwsError, ChecksumMismatch, InputError
from fedimg.identity import TAG_KEY, ImageIdentity
from fedimg.source import BLOCK_SIZE, ImageSource, sha256_file
from fedimg.synthetic import write_sparse_image
from tests.helpers import Recorder, ebs, ec2, record

SIZE = 40 * BLOCK_SIZE + 512


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, list[int]]:
    raw = tmp_path / "sparse.x86_64.raw"
    nonzero = write_sparse_image(raw, SIZE, 0.3)
    xz = tmp_path / "sparse.x86_64.raw.xz"
    xz.write_bytes(lzma.compress(raw.read_bytes(), preset=0))
    return xz, nonzero


@pytest.fixture
def session() -> boto3.session.Session:
    return boto3.session.Session()


@pytest.fixture
def rec(session: boto3.session.Session) -> Recorder:
    return record(session)


def upload(settings: Settings, session: boto3.session.Session, xz: Path, sha: str = "") -> Any:
    identity = ImageIdentity("sparse.x86_64", "x86_64", sha or sha256_file(xz))
    clients = Clients(settings.aws, session=session)
    with ImageSource(str(xz), sha256=identity.sha256) as src:
        return upload_snapshot_if_not_exists(src, identity, settings, clients)


def our_snapshots(url: str) -> list[dict[str, Any]]:
    snaps = ec2(url).describe_snapshots(OwnerIds=["self"])["Snapshots"]
    return [s for s in snaps if any(t["Key"] == TAG_KEY for t in s.get("Tags", []))]


def test_every_block_reads_back_byte_for_byte(
    settings: Settings, session: boto3.session.Session, image: tuple[Path, list[int]], aws: str
) -> None:
    xz, nonzero = image
    result = upload(settings, session, xz)
    raw = lzma.decompress(xz.read_bytes()) + bytes(-SIZE % BLOCK_SIZE)
    client = ebs(aws)
    listed = client.list_snapshot_blocks(SnapshotId=result.snapshot_id)["Blocks"]
    assert sorted(b["BlockIndex"] for b in listed) == nonzero  # zero blocks never sent
    for b in listed:
        got = client.get_snapshot_block(
            SnapshotId=result.snapshot_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
        )["BlockData"].read()
        i = b["BlockIndex"]
        assert got == raw[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
    assert result.blocks_sent == len(nonzero)
    assert result.blocks_skipped == 41 - len(nonzero)
    assert result.volume_size_gib == 1
    assert result.bytes_read == xz.stat().st_size


def test_sends_checksums_tokens_and_tags(
    settings: Settings,
    session: boto3.session.Session,
    rec: Recorder,
    image: tuple[Path, list[int]],
) -> None:
    xz, nonzero = image
    upload(settings, session, xz)
    (start,) = rec.of("StartSnapshot")
    assert start["VolumeSize"] == 1 and start["ClientToken"]
    assert start["Timeout"] == settings.aws.snapshot_timeout_minutes
    tags = {t["Key"]: t["Value"] for t in start["Tags"]}
    assert tags["fedimg:state"] == "uploading" and tags[TAG_KEY]
    puts = sorted(rec.of("PutSnapshotBlock"), key=lambda p: p["BlockIndex"])
    assert [p["BlockIndex"] for p in puts] == nonzero
    digests = []
    for p in puts:
        digest = hashlib.sha256(p["BlockData"]).digest()
        assert p["Checksum"] == base64.b64encode(digest).decode()
        assert p["ChecksumAlgorithm"] == "SHA256" and p["DataLength"] == BLOCK_SIZE
        digests.append(digest)
    (complete,) = rec.of("CompleteSnapshot")
    assert complete["ChangedBlocksCount"] == len(nonzero)
    assert complete["ChecksumAggregationMethod"] == "LINEAR"
    linear = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    assert complete["Checksum"] == linear


def test_rerun_reuses_the_completed_snapshot(
    settings: Settings,
    session: boto3.session.Session,
    rec: Recorder,
    image: tuple[Path, list[int]],
    aws: str,
) -> None:
    xz, _ = image
    first = upload(settings, session, xz)
    second = upload(settings, session, xz)
    assert second.reused and second.snapshot_id == first.snapshot_id
    assert rec.count("StartSnapshot") == 1
    assert len(our_snapshots(aws)) == 1


def test_checksum_mismatch_leaves_no_snapshot(
    settings: Settings, session: boto3.session.Session, image: tuple[Path, list[int]], aws: str
) -> None:
    xz, _ = image
    with pytest.raises(ChecksumMismatch):
        upload(settings, session, xz, sha="ab" * 32)
    assert our_snapshots(aws) == []


def test_corrupt_input_leaves_no_snapshot(
    settings: Settings,
    session: boto3.session.Session,
    rec: Recorder,
    image: tuple[Path, list[int]],
    aws: str,
) -> None:
    xz, _ = image
    data = bytearray(xz.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = bytes(256)
    xz.write_bytes(bytes(data))
    with pytest.raises(InputError):
        upload(settings, session, xz)
    assert rec.count("StartSnapshot") == 1  # it had started …
    assert our_snapshots(aws) == []  # … and was cleaned up


def test_failed_block_write_deletes_the_snapshot(
    settings: Settings, session: boto3.session.Session, image: tuple[Path, list[int]], aws: str
) -> None:
    xz, _ = image
    puts = {"n": 0}

    def reject_third_put(request: Any, **_: Any) -> Any:
        if "/blocks/" in request.url:
            puts["n"] += 1
            if puts["n"] == 3:
                from botocore.awsrequest import AWSResponse

                body = b'{"message":"bad block","Reason":"INVALID_BLOCK"}'
                return AWSResponse(
                    request.url, 400, {"x-amzn-ErrorType": "ValidationException"}, _Raw(body)
                )
        return None

    session.events.register("before-send.ebs", reject_third_put)
    with pytest.raises(AwsError, match="ValidationException"):
        upload(settings, session, xz)
    assert our_snapshots(aws) == []


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body

    def read(self, *_: Any) -> bytes:
        return self.body


def test_killed_upload_is_resumed_into_the_same_snapshot(
    settings: Settings,
    session: boto3.session.Session,
    rec: Recorder,
    image: tuple[Path, list[int]],
    aws: str,
) -> None:
    xz, nonzero = image
    ebs_client = ebs(aws)
    # What a run killed mid-upload leaves: a started snapshot, tagged uploading, a few blocks in.
    identity = ImageIdentity("sparse.x86_64", "x86_64", sha256_file(xz))
    tags = [{"Key": k, "Value": v} for k, v in identity.tags().items()]
    killed = ebs_client.start_snapshot(
        VolumeSize=1, Tags=[*tags, {"Key": "fedimg:state", "Value": "uploading"}]
    )["SnapshotId"]
    result = upload(settings, session, xz)
    assert result.snapshot_id == killed and not result.reused
    assert rec.count("StartSnapshot") == 0
    listed = ebs_client.list_snapshot_blocks(SnapshotId=killed)["Blocks"]
    assert sorted(b["BlockIndex"] for b in listed) == nonzero
    assert [s["SnapshotId"] for s in our_snapshots(aws)] == [killed]


def test_run_killed_while_completing_is_completed_without_the_data(
    settings: Settings,
    session: boto3.session.Session,
    rec: Recorder,
    image: tuple[Path, list[int]],
    aws: str,
) -> None:
    xz, _ = image
    identity = ImageIdentity("sparse.x86_64", "x86_64", sha256_file(xz))
    tags = [{"Key": k, "Value": v} for k, v in identity.tags().items()]
    state = [
        {"Key": "fedimg:state", "Value": "completing"},
        {"Key": "fedimg:changed-blocks", "Value": "12"},
        {"Key": "fedimg:linear-checksum", "Value": "abc="},
    ]
    snap = ebs(aws).start_snapshot(VolumeSize=1, Tags=[*tags, *state])["SnapshotId"]
    stale = ebs(aws).start_snapshot(
        VolumeSize=1, Tags=[*tags, {"Key": "fedimg:state", "Value": "uploading"}]
    )["SnapshotId"]
    result = upload(settings, session, xz)
    assert result.snapshot_id == snap and result.reused
    assert rec.count("PutSnapshotBlock") == 0
    assert [s["SnapshotId"] for s in our_snapshots(aws)] == [snap]  # the stale one is gone
    assert stale not in {s["SnapshotId"] for s in our_snapshots(aws)}
    tags_now = {t["Key"]: t["Value"] for t in our_snapshots(aws)[0]["Tags"]}
    assert tags_now["fedimg:state"] == "uploaded"
