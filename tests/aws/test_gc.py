"""fedimg gc against the moto server: exactly fedimg's orphans are found, and only they go."""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from rich.console import Console

from fedimg.aws.clients import Clients
from fedimg.aws.gc import Orphan, find_orphans, gc_command, remove_orphans
from fedimg.config import Settings
from fedimg.identity import tag_list
from fedimg.standins.aws.ec2_import import VMIMPORT_TRUST
from tests.helpers import ebs, ec2

# moto stamps everything "now": looking from three hours later ages every resource past the
# one-hour grace period and the two-hour upload timeout.
LATER = datetime.now(UTC) + timedelta(hours=3)


def managed(**extra: str) -> dict[str, str]:
    return {"fedimg:managed": "true", "fedimg:image-key": "k-" + extra.pop("key", "x")} | extra


def spec(kind: str, tags: dict[str, str]) -> list[Any]:
    return [{"ResourceType": kind, "Tags": tag_list(tags)}]


@dataclass
class World:
    """What a few crashed fedimg runs leave in moto, next to what must survive gc."""

    orphans: set[tuple[str, str, str]] = field(default_factory=set)
    uploads: set[tuple[str, str, str]] = field(default_factory=set)  # unfinished, among orphans
    keep: dict[str, str] = field(default_factory=dict)  # resource id -> why it must stay


def uploading_snapshot(url: str, region: str, tags: dict[str, str]) -> str:
    resp = ebs(url, region).start_snapshot(VolumeSize=1, Tags=tag_list(tags), Timeout=120)
    return str(resp["SnapshotId"])


def plain_snapshot(url: str, tags: dict[str, str] | None = None) -> str:
    client = ec2(url)
    vol = client.create_volume(Size=1, AvailabilityZone="us-east-1a")["VolumeId"]
    kwargs: dict[str, Any] = {"TagSpecifications": spec("snapshot", tags)} if tags else {}
    return str(client.create_snapshot(VolumeId=vol, **kwargs)["SnapshotId"])


def boot_test_resources(url: str, run: str, tags: dict[str, str]) -> tuple[str, str, str]:
    """Key pair, security group and instance, as the boot test makes them."""
    client = ec2(url)
    tags = tags | {"fedimg:test-run": run}
    client.create_key_pair(KeyName=f"fedimg-test-{run}", TagSpecifications=spec("key-pair", tags))
    group = client.create_security_group(
        GroupName=f"fedimg-test-{run}",
        Description="fedimg boot test",
        TagSpecifications=spec("security-group", tags),
    )["GroupId"]
    instance = client.run_instances(
        ImageId="ami-12345678",
        MinCount=1,
        MaxCount=1,
        KeyName=f"fedimg-test-{run}",
        SecurityGroupIds=[group],
        TagSpecifications=spec("instance", tags),
    )["Instances"][0]["InstanceId"]
    return f"fedimg-test-{run}", group, instance


def ami_on(client: Any, name: str, snapshot: str) -> str:
    return str(
        client.register_image(
            Name=name,
            Architecture="x86_64",
            VirtualizationType="hvm",
            RootDeviceName="/dev/sda1",
            BlockDeviceMappings=[
                {"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snapshot, "VolumeSize": 1}}
            ],
        )["ImageId"]
    )


def make_world(url: str) -> World:
    w = World()
    client = ec2(url)
    test = managed(key="t", **{"fedimg:role": "test"})

    # Orphans.
    for region in ("us-east-1", "us-west-2"):
        sid = uploading_snapshot(url, region, managed(key="a", **{"fedimg:state": "uploading"}))
        w.uploads.add((region, "snapshot", sid))
    w.orphans |= w.uploads
    sid = plain_snapshot(url, managed(key="b", **{"fedimg:state": "uploaded"}))
    w.orphans.add(("us-east-1", "snapshot", sid))
    key, group, instance = boot_test_resources(url, "r1", test)
    w.orphans |= {
        ("us-east-1", "key-pair", key),
        ("us-east-1", "security-group", group),
        ("us-east-1", "instance", instance),
    }

    # Survivors.
    w.keep[plain_snapshot(url)] = "untagged snapshot"
    foreign = {"fedimg:state": "uploading", "fedimg:role": "test", "fedimg:test-run": "f"}
    w.keep[plain_snapshot(url, foreign)] = "snapshot without fedimg:managed"
    key, group, instance = boot_test_resources(url, "f", foreign)
    w.keep |= {key: "foreign key pair", group: "foreign group", instance: "foreign instance"}
    # A snapshot whose image key has an AMI (which boots from another snapshot).
    w.keep[plain_snapshot(url, managed(key="c", **{"fedimg:state": "uploaded"}))] = "AMI's key"
    root = plain_snapshot(url)
    w.keep[root] = "untagged snapshot"
    ami = ami_on(client, "fedimg-c", root)
    client.create_tags(Resources=[ami], Tags=tag_list(managed(key="c")))
    # A snapshot an AMI lists in its block device mappings, its key on no AMI.
    mapped = plain_snapshot(url, managed(key="d", **{"fedimg:state": "uploaded"}))
    other = ami_on(client, "fedimg-d", mapped)
    w.keep[mapped] = "snapshot mapped by an AMI"
    w.keep[ami] = w.keep[other] = "AMIs are never collected"
    # A test instance that is already terminated is no orphan (its group and key are).
    key, group, instance = boot_test_resources(url, "r2", test)
    client.terminate_instances(InstanceIds=[instance])
    w.orphans |= {("us-east-1", "key-pair", key), ("us-east-1", "security-group", group)}
    return w


def found(orphans: list[Orphan]) -> set[tuple[str, str, str]]:
    return {(o.region, o.kind, o.resource_id) for o in orphans}


def existing(url: str) -> set[str]:
    """Ids of every snapshot, live instance, key pair, security group and image, all regions."""
    ids: set[str] = set()
    for region in ("us-east-1", "us-west-2", "eu-west-1"):
        c = ec2(url, region)
        ids |= {s["SnapshotId"] for s in c.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
        ids |= {
            i["InstanceId"]
            for r in c.describe_instances()["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        }
        ids |= {k["KeyName"] for k in c.describe_key_pairs()["KeyPairs"]}
        ids |= {g["GroupId"] for g in c.describe_security_groups()["SecurityGroups"]}
        ids |= {i["ImageId"] for i in c.describe_images(Owners=["self"])["Images"]}
    return ids


def run_gc(settings: Settings, clients: Clients, *, act: bool) -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    rc = gc_command(settings, clients, act=act, as_json=True, console=Console(file=out), now=LATER)
    return rc, json.loads(out.getvalue())


def test_dry_run_finds_exactly_the_orphans_and_removes_nothing(
    settings: Settings, aws: str
) -> None:
    world = make_world(aws)
    before = existing(aws)
    rc, rows = run_gc(settings, Clients(settings.aws), act=False)
    assert rc == 0
    assert {(r["region"], r["kind"], r["id"]) for r in rows} == world.orphans
    assert all(set(r) == {"region", "kind", "id", "reason", "removed"} for r in rows)
    assert not any(r["removed"] for r in rows)
    assert existing(aws) == before


def test_yes_removes_exactly_the_orphans_and_keeps_the_rest(settings: Settings, aws: str) -> None:
    world = make_world(aws)
    before = existing(aws)
    rc, rows = run_gc(settings, Clients(settings.aws), act=True)
    assert rc == 0
    assert {(r["region"], r["kind"], r["id"]) for r in rows} == world.orphans
    assert all(r["removed"] for r in rows)
    assert existing(aws) == before - {rid for _, _, rid in world.orphans}
    assert set(world.keep) <= existing(aws)
    assert find_orphans(settings, Clients(settings.aws), now=LATER) == []


def test_a_failed_removal_is_reported_and_the_others_still_go(settings: Settings, aws: str) -> None:
    world = make_world(aws)
    refused = sorted(rid for region, kind, rid in world.orphans if kind == "snapshot")[0]
    session = boto3.session.Session()

    def refuse(params: dict[str, Any], **_: Any) -> Any:
        if params["body"].get("SnapshotId") != refused:
            return None
        error = {"Code": "InvalidSnapshot.InUse", "Message": f"{refused} is in use"}
        return AWSResponse("", 400, {}, None), {"Error": error, "ResponseMetadata": {}}

    session.events.register("before-call.ec2.DeleteSnapshot", refuse)
    rc, rows = run_gc(settings, Clients(settings.aws, session=session), act=True)
    assert rc == 1
    assert [r["id"] for r in rows if not r["removed"]] == [refused]
    gone = {rid for _, _, rid in world.orphans} - {refused}
    assert not gone & existing(aws)
    assert refused in existing(aws)


def test_grace_period_keeps_fresh_snapshots_and_running_tests(settings: Settings, aws: str) -> None:
    world = make_world(aws)
    clients = Clients(settings.aws)
    # Seen right now, nothing is old enough: uploads are within their timeout, tests are young.
    assert find_orphans(settings, clients) == []
    # Three hours on, a four-hour grace still protects completed snapshots and test resources;
    # only the unfinished uploads (two-hour timeout) are orphans.
    orphans = find_orphans(settings, clients, now=LATER, grace=timedelta(hours=4))
    assert found(orphans) == world.uploads


def test_a_test_whose_lease_is_renewed_is_kept_however_old(settings: Settings, aws: str) -> None:
    """A live boot test renews fedimg:lease-until; its instance (and so its key pair and group)
    stays even past the grace period, and goes once the lease has run out."""
    run = {"fedimg:role": "test", "fedimg:ami": "ami-1"}
    until = {"fedimg:lease-until": f"{LATER.timestamp() + 30:.0f}"}
    key, group, instance = boot_test_resources(aws, "live", managed(**run, **until))
    clients = Clients(settings.aws)
    assert found(find_orphans(settings, clients, now=LATER)) == set()
    expired = LATER + timedelta(minutes=1)
    assert found(find_orphans(settings, clients, now=expired)) == {
        ("us-east-1", "instance", instance),
        ("us-east-1", "key-pair", key),
        ("us-east-1", "security-group", group),
    }


def test_removing_what_is_already_gone_counts_as_removed(settings: Settings, aws: str) -> None:
    sid = plain_snapshot(aws, managed(key="b", **{"fedimg:state": "uploaded"}))
    clients = Clients(settings.aws)
    (orphan,) = find_orphans(settings, clients, now=LATER)
    ec2(aws).delete_snapshot(SnapshotId=sid)
    (removal,) = remove_orphans(settings, clients, [orphan])
    assert removal.ok and removal.error == ""


@pytest.mark.parametrize("act", [False, True])
def test_table_report_names_each_orphan(settings: Settings, aws: str, act: bool) -> None:
    sid = plain_snapshot(aws, managed(key="b", **{"fedimg:state": "uploaded"}))
    out = io.StringIO()
    console = Console(file=out, width=200)
    rc = gc_command(settings, act=act, as_json=False, console=console, now=LATER)
    text = out.getvalue()
    assert rc == 0 and sid in text and "no AMI uses it" in text
    assert ("dry run" in text) is (not act)
    assert sid not in existing(aws) if act else sid in existing(aws)


def test_nothing_to_do_is_success(settings: Settings, aws: str) -> None:
    out = io.StringIO()
    assert gc_command(settings, act=True, as_json=True, console=Console(file=out)) == 0
    assert json.loads(out.getvalue()) == []


def test_gc_converges_through_a_faulty_network(settings: Settings, aws: str) -> None:
    from tests.faultproxy import fault_proxy

    world = make_world(aws)
    with fault_proxy(aws, rate=0.3, seed=3, kinds=("500", "503", "reset")) as proxy:
        clients = Clients(settings.with_aws(endpoint_url=proxy.url).aws)
        rc, rows = run_gc(settings, clients, act=True)
        assert proxy.stats()["faulted"] > 0
    assert rc == 0 and all(r["removed"] for r in rows)
    assert {(r["region"], r["kind"], r["id"]) for r in rows} == world.orphans
    assert not {rid for _, _, rid in world.orphans} & existing(aws)


# ---------------------------------------------------------------------------------------------
# The S3 + ImportSnapshot method's leftovers

BUCKET = "fedimg-staging"


def import_world(aws: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A killed import's task (still active) and its object, a staged object and a multipart
    upload nobody came back for; next to them what gc must keep: an object without fedimg's
    metadata, one outside the prefix, and another account user's active task."""
    from fedimg.standins.aws import options

    monkeypatch.setenv(options.IMPORT_SECONDS, "3600")  # tasks stay active
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws)
    s3.create_bucket(Bucket=BUCKET)
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=aws)
    iam.create_role(RoleName="vmimport", AssumeRolePolicyDocument=json.dumps(VMIMPORT_TRUST))
    meta = {"fedimg-image-key": "k"}
    for key in ("fedimg/read-by-task.raw", "fedimg/left.raw", "fedimg/theirs.raw"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"\0" * 512, Metadata=meta)
    s3.put_object(Bucket=BUCKET, Key="fedimg/no-metadata.raw", Body=b"\0" * 512)
    s3.put_object(Bucket=BUCKET, Key="other/outside.raw", Body=b"\0" * 512, Metadata=meta)
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="fedimg/half.raw")["UploadId"]

    def start(key: str, tags: dict[str, str]) -> str:
        disk = {"Format": "RAW", "UserBucket": {"S3Bucket": BUCKET, "S3Key": key}}
        specs = spec("import-snapshot-task", tags) if tags else []
        task = ec2(aws).import_snapshot(DiskContainer=disk, TagSpecifications=specs)
        return str(task["ImportTaskId"])

    return {
        "task": start("fedimg/read-by-task.raw", managed()),
        "their_task": start("fedimg/theirs.raw", {}),
        "upload": f"fedimg/half.raw?uploadId={upload}",
    }


def test_import_leftovers_past_the_deadline_are_reported_then_removed_with_yes(
    settings: Settings, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = import_world(aws, monkeypatch)
    s = dataclasses.replace(
        settings, upload=dataclasses.replace(settings.upload, bucket=BUCKET, deadline_seconds=3600)
    )
    clients = Clients(s.aws)
    # Everything is young; but moto answers every multipart upload's Initiated as 2010-11-10.
    assert {o.kind for o in find_orphans(s, clients)} == {"multipart-upload"}
    expected = {
        ("us-east-1", "import-task", made["task"]),
        ("us-east-1", "multipart-upload", made["upload"]),
        ("us-east-1", "s3-object", "fedimg/left.raw"),
        ("us-east-1", "s3-object", "fedimg/read-by-task.raw"),  # its task is cancelled too
    }
    orphans = find_orphans(s, clients, now=LATER)
    assert found(orphans) == expected
    assert orphans[0].kind == "import-task"  # cancelled before its object is deleted
    assert gc_command(s, clients, act=True, as_json=True, now=LATER) == 0
    tasks = {
        t["ImportTaskId"]: t["SnapshotTaskDetail"]["Status"]
        for t in ec2(aws).describe_import_snapshot_tasks()["ImportSnapshotTasks"]
    }
    assert tasks[made["task"]] in ("deleting", "deleted")
    assert tasks[made["their_task"]] == "active"
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {"fedimg/theirs.raw", "fedimg/no-metadata.raw", "other/outside.raw"}
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
