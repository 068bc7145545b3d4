from __future__ import annotations

import base64
import dataclasses
import hashlib
import lzma
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from fedimg.aws import snapshot as snapshot_module
from fedimg.aws.clients import Clients
from fedimg.aws.snapshot import upload_snapshot_if_not_exists
from fedimg.config import Settings
from fedimg.errors import AwsError, ChecksumMismatch, InputError
from fedimg.identity import TAG_KEY, ImageIdentity
from fedimg.source import BLOCK_SIZE, ImageSource, sha256_file
from fedimg.standins.synthetic import write_sparse_image
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


def fail_complete_snapshot(session: boto3.session.Session) -> None:
    """Every CompleteSnapshot of ``session``'s clients answers HTTP 500 (a transient failure)."""
    from botocore.awsrequest import AWSResponse

    def answer_500(request: Any, **_: Any) -> Any:
        if "/snapshots/completion/" in request.url:
            body = b'{"message":"internal error"}'
            return AWSResponse(
                request.url, 500, {"x-amzn-ErrorType": "InternalServerException"}, _Raw(body)
            )
        return None

    session.events.register("before-send.ebs", answer_500)


def test_transient_complete_failure_keeps_the_snapshot_for_the_next_attempt(
    settings: Settings, image: tuple[Path, list[int]], aws: str
) -> None:
    xz, nonzero = image
    failing = boto3.session.Session()
    fail_complete_snapshot(failing)
    with pytest.raises(AwsError) as failed:
        upload(settings, failing, xz)
    assert failed.value.retryable
    (kept,) = our_snapshots(aws)
    assert tags(kept)["fedimg:state"] == "completing"
    assert tags(kept)["fedimg:changed-blocks"] == str(len(nonzero))

    again = boto3.session.Session()
    rec = record(again)
    result = upload(settings, again, xz)
    assert result.snapshot_id == kept["SnapshotId"]
    assert rec.count("PutSnapshotBlock") == 0 and rec.count("CompleteSnapshot") == 1
    (done,) = our_snapshots(aws)
    assert done["State"] == "completed" and tags(done)["fedimg:state"] == "uploaded"


def tags(snapshot: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}


def leftover(aws: str, xz: Path, **extra: str) -> str:
    """A snapshot as another run leaves it while uploading (or after dying), with ``extra`` tags."""
    identity = ImageIdentity("sparse.x86_64", "x86_64", sha256_file(xz))
    all_tags = identity.tags() | {"fedimg:state": "uploading"} | extra
    return str(
        ebs(aws).start_snapshot(
            VolumeSize=1, Tags=[{"Key": k, "Value": v} for k, v in all_tags.items()]
        )["SnapshotId"]
    )


def test_snapshot_of_a_dead_runs_expired_lease_is_taken_over(
    settings: Settings,
    session: boto3.session.Session,
    rec: Recorder,
    image: tuple[Path, list[int]],
    aws: str,
) -> None:
    xz, nonzero = image
    expired = str(int(time.time()) - 1)
    dead = leftover(aws, xz, **{"fedimg:lease-owner": "dead", "fedimg:lease-until": expired})
    result = upload(settings, session, xz)
    assert result.snapshot_id == dead and rec.count("StartSnapshot") == 0
    assert rec.count("PutSnapshotBlock") == len(nonzero)


def test_run_waits_for_a_live_run_and_reuses_its_snapshot(
    settings: Settings, image: tuple[Path, list[int]], aws: str
) -> None:
    """The first run is paused mid-upload; the second finds its live lease, waits, and reuses
    the result instead of writing or deleting anything."""
    xz, _ = image
    first_session, second_session = boto3.session.Session(), boto3.session.Session()
    paused, resume = threading.Event(), threading.Event()

    def pause_third_block(request: Any, **_: Any) -> None:
        if "/blocks/" in request.url and not paused.is_set():
            paused.set()
            resume.wait(30)

    first_session.events.register("before-send.ebs", pause_third_block)
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(upload(settings, first_session, xz)))
    first.start()
    assert paused.wait(30)
    second_rec = record(second_session)
    second = threading.Thread(target=lambda: results.append(upload(settings, second_session, xz)))
    second.start()
    time.sleep(1.0)  # the second run is now waiting on the first's lease
    assert second.is_alive()
    resume.set()
    first.join(30)
    second.join(30)
    a, b = results
    assert a.snapshot_id == b.snapshot_id and b.reused
    assert second_rec.count("PutSnapshotBlock") == 0 and second_rec.count("DeleteSnapshot") == 0
    assert [s["SnapshotId"] for s in our_snapshots(aws)] == [a.snapshot_id]


def test_start_token_is_shared_by_runs_and_new_after_a_dead_snapshot(
    settings: Settings,
    session: boto3.session.Session,
    rec: Recorder,
    image: tuple[Path, list[int]],
    aws: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    xz, _ = image
    good = xz.read_bytes()
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 256] = bytes(256)
    xz.write_bytes(bytes(corrupt))
    identity_sha = hashlib.sha256(good).hexdigest()
    with pytest.raises(InputError):  # permanent: the snapshot is deleted
        upload(settings, session, xz, sha=identity_sha)
    assert our_snapshots(aws) == []
    xz.write_bytes(good)
    monkeypatch.setattr(snapshot_module, "VISIBLE_DEADLINE_S", 0.5)
    result = upload(settings, session, xz, sha=identity_sha)
    first, dead_replay, new = (s["ClientToken"] for s in rec.of("StartSnapshot"))
    assert dead_replay == first != new  # the same token again finds the dead one; then a new one
    assert [s["SnapshotId"] for s in our_snapshots(aws)] == [result.snapshot_id]


def test_start_snapshot_timeout_is_within_aws_bounds(
    settings: Settings, session: boto3.session.Session, rec: Recorder, image: tuple[Path, list[int]]
) -> None:
    xz, _ = image
    short = dataclasses.replace(
        settings, aws=dataclasses.replace(settings.aws, snapshot_timeout_minutes=5)
    )
    upload(short, session, xz)
    (start,) = rec.of("StartSnapshot")
    assert start["Timeout"] == 10
