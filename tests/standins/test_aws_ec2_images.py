"""The strict stand-in's AMI rules, spoken to over HTTP like AWS (EC2 API Reference pages named)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from fedimg.standins.aws import options

ROOT = "/dev/sda1"


def client(url: str, region: str = "us-east-1") -> Any:
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"}, parameter_validation=False
    )
    return boto3.client("ec2", region_name=region, endpoint_url=url, config=config)


@pytest.fixture
def ec2(aws: str) -> Any:
    return client(aws)


def snapshot(ec2: Any, gib: int = 2) -> str:
    volume = ec2.create_volume(Size=gib, AvailabilityZone="us-east-1a")["VolumeId"]
    return str(ec2.create_snapshot(VolumeId=volume)["SnapshotId"])


def register(ec2: Any, snap: str, **overrides: Any) -> str:
    """RegisterImage with what fedimg sends for a Fedora image (one TagSpecification)."""
    params: dict[str, Any] = {
        "Name": "Fedora-Cloud-Base-42-hvm-us-east-1-gp3-0",
        "Description": "Fedora image",
        "Architecture": "x86_64",
        "VirtualizationType": "hvm",
        "RootDeviceName": ROOT,
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT,
                "Ebs": {
                    "SnapshotId": snap,
                    "VolumeSize": 5,
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                },
            }
        ],
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "BootMode": "uefi",
        "ImdsSupport": "v2.0",
        "TpmSupport": "v2.0",
        "TagSpecifications": [{"ResourceType": "image", "Tags": [{"Key": "k", "Value": "v"}]}],
    } | overrides
    return str(ec2.register_image(**params)["ImageId"])


def refused(code: str, call: Any, *, status: int = 400, **params: Any) -> None:
    with pytest.raises(ClientError) as e:
        call(**params)
    assert e.value.response["Error"]["Code"] == code
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def image(ec2: Any, ami: str) -> dict[str, Any]:
    return dict(ec2.describe_images(ImageIds=[ami])["Images"][0])


def test_registered_ami_keeps_its_snapshot_and_attributes(ec2: Any) -> None:
    """API_RegisterImage.html: the mapping's SnapshotId and every attribute read back as given."""
    snap = snapshot(ec2)
    ami = register(ec2, snap)
    got = image(ec2, ami)
    assert got["BlockDeviceMappings"] == [
        {
            "DeviceName": ROOT,
            "Ebs": {
                "SnapshotId": snap,
                "VolumeSize": 5,
                "VolumeType": "gp3",
                "DeleteOnTermination": True,
                "Encrypted": False,
            },
        }
    ]
    expected = {
        "Architecture": "x86_64",
        "BootMode": "uefi",
        "ImdsSupport": "v2.0",
        "TpmSupport": "v2.0",
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "VirtualizationType": "hvm",
        "RootDeviceName": ROOT,
        "RootDeviceType": "ebs",
        "Tags": [{"Key": "k", "Value": "v"}],
    }
    assert {k: got.get(k) for k in expected} == expected
    assert [s["SnapshotId"] for s in ec2.describe_snapshots()["Snapshots"]] == [snap]
    for attribute, key, value in (
        ("bootMode", "BootMode", "uefi"),
        ("imdsSupport", "ImdsSupport", "v2.0"),
        ("tpmSupport", "TpmSupport", "v2.0"),
        ("sriovNetSupport", "SriovNetSupport", "simple"),
        ("description", "Description", "Fedora image"),
        ("deregistrationProtection", "DeregistrationProtection", "disabled"),
    ):
        answer = ec2.describe_image_attribute(ImageId=ami, Attribute=attribute)
        assert answer[key] == {"Value": value}
    # API_DescribeImageAttribute.html: blockDeviceMapping "returns the Client.AuthFailure error".
    refused(
        "AuthFailure",
        ec2.describe_image_attribute,
        status=401,
        ImageId=ami,
        Attribute="blockDeviceMapping",
    )


def test_register_image_refuses_a_snapshot_tag_specification(ec2: Any) -> None:
    """API_RegisterImage.html, TagSpecifications: "If you specify another value for ResourceType,
    the request fails" — the call fedimg used to make (image + snapshot) is refused."""
    tags = [{"Key": "fedimg:managed", "Value": "true"}]
    specs = [{"ResourceType": "image", "Tags": tags}, {"ResourceType": "snapshot", "Tags": tags}]
    snap = snapshot(ec2)
    refused("InvalidParameterValue", register, ec2=ec2, snap=snap, TagSpecifications=specs)
    assert ec2.describe_images(Owners=["self"])["Images"] == []


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("ab", False),
        ("a" * 129, False),
        ("bad#name", False),
        ("abc", True),
        ("Fedora [x] (1.0) it's/@_-", True),
        ("a" * 128, True),
    ],
)
def test_register_image_name_is_3_to_128_documented_characters(
    ec2: Any, name: str, ok: bool
) -> None:
    """API_RegisterImage.html, Name: 3-128 characters of the documented set."""
    snap = snapshot(ec2)
    if ok:
        assert image(ec2, register(ec2, snap, Name=name))["Name"] == name
    else:
        refused("InvalidAMIName.Malformed", register, ec2=ec2, snap=snap, Name=name)


def test_register_image_name_is_unique_among_live_amis(ec2: Any) -> None:
    """API_RegisterImage.html, Name (InvalidAMIName.Duplicate); free again once deregistered."""
    snap = snapshot(ec2)
    first = register(ec2, snap)
    refused("InvalidAMIName.Duplicate", register, ec2=ec2, snap=snap)
    ec2.deregister_image(ImageId=first)
    assert register(ec2, snap) != first


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"Description": "d" * 256}, "InvalidParameterValue"),
        ({"BootMode": "uefi-preferred"}, "InvalidParameterCombination"),  # TPM needs uefi
        ({"BootMode": "bios"}, "InvalidParameterValue"),
        ({"ImdsSupport": "v1"}, "InvalidParameterValue"),
        ({"Architecture": "riscv"}, "InvalidParameterValue"),
    ],
)
def test_register_image_refuses_undocumented_values(ec2: Any, overrides: Any, code: str) -> None:
    """API_RegisterImage.html: Description (<= 255), TpmSupport (with BootMode uefi only),
    BootMode, ImdsSupport and Architecture (their valid values)."""
    refused(code, register, ec2=ec2, snap=snapshot(ec2), **overrides)


def test_register_image_mapping_needs_an_existing_big_enough_snapshot(ec2: Any) -> None:
    """API_EbsBlockDevice.html, SnapshotId and VolumeSize (>= the snapshot's size)."""
    missing = {"DeviceName": ROOT, "Ebs": {"SnapshotId": "snap-0123456789abcdef0"}}
    refused("InvalidSnapshot.NotFound", register, ec2=ec2, snap="", BlockDeviceMappings=[missing])
    small = {"DeviceName": ROOT, "Ebs": {"SnapshotId": snapshot(ec2, gib=8), "VolumeSize": 4}}
    refused("InvalidBlockDeviceMapping", register, ec2=ec2, snap="", BlockDeviceMappings=[small])


def test_snapshot_of_a_registered_ami_cannot_be_deleted(ec2: Any) -> None:
    """API_DeleteSnapshot.html: not while a registered AMI uses it (InvalidSnapshot.InUse)."""
    snap = snapshot(ec2)
    ami = register(ec2, snap)
    refused("InvalidSnapshot.InUse", ec2.delete_snapshot, SnapshotId=snap)
    ec2.deregister_image(ImageId=ami)
    ec2.delete_snapshot(SnapshotId=snap)


def test_copy_image_is_a_new_ami_with_new_snapshots_and_the_source_attributes(aws: str) -> None:
    """API_CopyImage.html: the copy in the destination region, its own snapshot, the source's
    attributes; CopyImageTags copies user tags; TagSpecifications tag image and snapshot."""
    east, west = client(aws), client(aws, "us-west-2")
    snap = snapshot(east)
    source = register(east, snap)
    copy = west.copy_image(
        SourceRegion="us-east-1",
        SourceImageId=source,
        Name="copy",
        CopyImageTags=True,
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "role", "Value": "copy"}]},
            {"ResourceType": "snapshot", "Tags": [{"Key": "role", "Value": "copy"}]},
        ],
    )["ImageId"]
    got, src = image(west, copy), image(east, source)
    new_snap = got["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert new_snap != snap
    assert west.describe_snapshots(SnapshotIds=[new_snap])["Snapshots"][0]["Tags"] == [
        {"Key": "role", "Value": "copy"}
    ]
    same = ("Architecture", "BootMode", "ImdsSupport", "TpmSupport", "EnaSupport")
    assert {k: got[k] for k in same} == {k: src[k] for k in same}
    assert got["SourceImageId"] == source
    assert sorted((t["Key"], t["Value"]) for t in got["Tags"]) == [("k", "v"), ("role", "copy")]


def test_copy_image_client_token_is_idempotent(aws: str) -> None:
    """API_CopyImage.html, ClientToken: the same request gives the first ImageId; the token with
    other parameters is IdempotentParameterMismatch. CopyImage names need not be unique."""
    east, west = client(aws), client(aws, "us-west-2")
    source = register(east, snapshot(east))
    params = {"SourceRegion": "us-east-1", "SourceImageId": source, "Name": "copy"}
    first = west.copy_image(ClientToken="t1", **params)["ImageId"]
    assert west.copy_image(ClientToken="t1", **params)["ImageId"] == first
    refused(
        "IdempotentParameterMismatch",
        west.copy_image,
        ClientToken="t1",
        **params | {"Name": "other"},
    )
    assert west.copy_image(ClientToken="t2", **params)["ImageId"] != first
    refused("InvalidAMIName.Malformed", west.copy_image, **params | {"Name": "xy"})


def test_copy_image_refuses_other_tag_resource_types(aws: str) -> None:
    """API_CopyImage.html, TagSpecifications: image or snapshot, "other values ... fails"."""
    east, west = client(aws), client(aws, "us-west-2")
    source = register(east, snapshot(east))
    spec = [{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "b"}]}]
    refused(
        "InvalidParameterValue",
        west.copy_image,
        SourceRegion="us-east-1",
        SourceImageId=source,
        Name="copy",
        TagSpecifications=spec,
    )


@pytest.mark.parametrize(
    ("tags", "code"),
    [
        ([{"Key": "aws:owner", "Value": "x"}], "InvalidParameterValue"),
        ([{"Key": "k" * 129, "Value": "x"}], "InvalidParameterValue"),
        ([{"Key": "k", "Value": "v" * 257}], "InvalidParameterValue"),
        ([{"Key": f"k{i}", "Value": ""} for i in range(50)], "TagLimitExceeded"),  # 1 + 50
    ],
)
def test_create_tags_enforces_tag_limits(ec2: Any, tags: Any, code: str) -> None:
    """API_CreateTags.html / API_Tag.html: 50 tags per resource counting its own, key 1-128
    characters without aws:, value <= 256 characters."""
    ami = register(ec2, snapshot(ec2))
    refused(code, ec2.create_tags, Resources=[ami], Tags=tags)
    ec2.create_tags(Resources=[ami], Tags=tags[:1] if code == "TagLimitExceeded" else [])


def test_new_amis_are_invisible_during_the_visibility_delay(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EC2 eventual consistency (API Reference, "Eventual consistency"): a new AMI or copy is
    unknown to DescribeImages and CreateTags for a while."""
    monkeypatch.setenv(options.VISIBILITY_DELAY, "0.5")
    east, west = client(aws), client(aws, "us-west-2")
    ami = register(east, snapshot(east))
    refused("InvalidAMIID.NotFound", east.describe_images, ImageIds=[ami])
    refused(
        "InvalidAMIID.NotFound",
        east.create_tags,
        Resources=[ami],
        Tags=[{"Key": "a", "Value": "b"}],
    )
    named = [{"Name": "name", "Values": ["Fedora-Cloud-Base-42-hvm-us-east-1-gp3-0"]}]
    assert east.describe_images(Filters=named)["Images"] == []
    time.sleep(0.6)
    assert [i["ImageId"] for i in east.describe_images(Filters=named)["Images"]] == [ami]
    copy = west.copy_image(SourceRegion="us-east-1", SourceImageId=ami, Name="copy-2")["ImageId"]
    refused("InvalidAMIID.NotFound", west.describe_images, ImageIds=[copy])


def test_enable_image_deprecation_rounds_and_bounds_deprecate_at(ec2: Any) -> None:
    """API_EnableImageDeprecation.html, DeprecateAt: rounded to the nearest minute, not in the
    past, <= 10 years ahead, for a public AMI <= 2 years after CreationDate."""
    ami = register(ec2, snapshot(ec2))
    created = dt.datetime.fromisoformat(image(ec2, ami)["CreationDate"].replace("Z", "+00:00"))
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(minutes=1)
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    refused(
        "InvalidParameterValue",
        ec2.enable_image_deprecation,
        ImageId=ami,
        DeprecateAt=now - dt.timedelta(hours=1),
    )
    refused(
        "InvalidParameterValue",
        ec2.enable_image_deprecation,
        ImageId=ami,
        DeprecateAt=now.replace(year=now.year + 11),
    )
    three_years = now + dt.timedelta(days=3 * 365, seconds=31)
    ec2.enable_image_deprecation(ImageId=ami, DeprecateAt=three_years)  # private: fine
    rounded = three_years.replace(second=0) + dt.timedelta(minutes=1)
    assert image(ec2, ami)["DeprecationTime"] == rounded.strftime("%Y-%m-%dT%H:%M:00.000Z")
    ec2.disable_image_deprecation(ImageId=ami)
    assert "DeprecationTime" not in image(ec2, ami)
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]})
    refused(
        "InvalidParameterValue", ec2.enable_image_deprecation, ImageId=ami, DeprecateAt=three_years
    )
    ec2.enable_image_deprecation(ImageId=ami, DeprecateAt=now + dt.timedelta(days=700))


def test_describe_images_filters_still_work(ec2: Any) -> None:
    """moto's DescribeImages filters (name, tag, state, is-public) on the stand-in's AMIs."""
    ami = register(ec2, snapshot(ec2))
    for filters in (
        [{"Name": "name", "Values": ["Fedora-*"]}],
        [{"Name": "tag:k", "Values": ["v"]}],
        [{"Name": "state", "Values": ["available"]}],
        [{"Name": "is-public", "Values": ["false"]}],
    ):
        found = ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
        assert [i["ImageId"] for i in found] == [ami], filters
