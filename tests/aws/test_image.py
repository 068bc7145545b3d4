from __future__ import annotations

import dataclasses
from typing import Any

import boto3
import pytest

from fedimg.aws.clients import Clients
from fedimg.aws.image import (
    ami_name,
    base_image_tags,
    register_image_if_not_exists,
    register_params,
)
from fedimg.config import Settings
from fedimg.errors import InputError
from fedimg.identity import ImageIdentity, tags_of
from tests.helpers import ec2, record

IDENTITY = ImageIdentity("Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64", "x86_64", "ab" * 32)
ARM = ImageIdentity("Fedora-Cloud-Base-AmazonEC2-41-1.4.aarch64", "aarch64", "cd" * 32)


def snapshot(url: str) -> str:
    client = ec2(url)
    vol = client.create_volume(Size=5, AvailabilityZone="us-east-1a")["VolumeId"]
    return str(client.create_snapshot(VolumeId=vol)["SnapshotId"])


def attribute(client: Any, ami: str, name: str) -> Any:
    key = name[0].upper() + name[1:]
    return client.describe_image_attribute(ImageId=ami, Attribute=name).get(key, {}).get("Value")


def test_register_makes_the_ami_fedora_needs(settings: Settings, aws: str) -> None:
    """Read back from AWS: the AMI boots from the snapshot given, with every attribute set."""
    snap = snapshot(aws)
    snapshot_tags_before = ec2(aws).describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]
    image = register_image_if_not_exists(settings, Clients(settings.aws), IDENTITY, snap, 5)
    client = ec2(aws)
    (held,) = client.describe_images(ImageIds=[image.ami])["Images"]
    assert held["Name"] == "Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64-hvm-us-east-1-gp3-0"
    assert held["State"] == "available" and not image.reused
    assert held["Architecture"] == "x86_64" and held["VirtualizationType"] == "hvm"
    assert held["RootDeviceName"] == "/dev/sda1"
    (bdm,) = held["BlockDeviceMappings"]
    assert bdm["DeviceName"] == "/dev/sda1"
    assert bdm["Ebs"]["SnapshotId"] == snap
    assert bdm["Ebs"]["VolumeSize"] == 5 and bdm["Ebs"]["VolumeType"] == "gp3"
    assert bdm["Ebs"]["DeleteOnTermination"] is True
    assert held["EnaSupport"] is True and held["SriovNetSupport"] == "simple"
    assert held["BootMode"] == "uefi-preferred" and held["ImdsSupport"] == "v2.0"
    assert "TpmSupport" not in held
    assert attribute(client, image.ami, "bootMode") == "uefi-preferred"
    assert attribute(client, image.ami, "imdsSupport") == "v2.0"
    assert attribute(client, image.ami, "sriovNetSupport") == "simple"
    assert attribute(client, image.ami, "tpmSupport") is None
    assert tags_of(held) == base_image_tags_dict(settings)
    # RegisterImage tags only the AMI: the snapshot keeps the tags StartSnapshot gave it.
    after = client.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]
    assert after.get("Tags", []) == snapshot_tags_before.get("Tags", [])


def base_image_tags_dict(settings: Settings) -> dict[str, str]:
    return tags_of({"Tags": base_image_tags(settings, IDENTITY)})


def test_aarch64_with_tpm_is_arm64_uefi(settings: Settings, aws: str) -> None:
    s = dataclasses.replace(
        settings,
        image=dataclasses.replace(
            settings.image, tpm=True, boot_mode={"x86_64": "uefi", "aarch64": "uefi"}
        ),
    )
    image = register_image_if_not_exists(s, Clients(s.aws), ARM, snapshot(aws), 5)
    (held,) = ec2(aws).describe_images(ImageIds=[image.ami])["Images"]
    assert held["Architecture"] == "arm64" and held["BootMode"] == "uefi"
    assert held["TpmSupport"] == "v2.0"
    assert attribute(ec2(aws), image.ami, "tpmSupport") == "v2.0"


def test_second_registration_finds_the_first(settings: Settings, aws: str) -> None:
    session = boto3.session.Session()
    rec = record(session)
    clients = Clients(settings.aws, session=session)
    snap = snapshot(aws)
    first = register_image_if_not_exists(settings, clients, IDENTITY, snap, 5)
    second = register_image_if_not_exists(settings, clients, IDENTITY, snap, 5)
    assert second.ami == first.ami and second.reused
    assert rec.count("RegisterImage") == 1
    assert len(ec2(aws).describe_images(Owners=["self"])["Images"]) == 1


def test_untagged_image_from_a_crash_is_found_by_name(settings: Settings, aws: str) -> None:
    name = ami_name(settings, IDENTITY, "us-east-1")
    snap = snapshot(aws)
    untagged = register_params(settings, IDENTITY, snap, 5, name)
    del untagged["TagSpecifications"]
    crashed = ec2(aws).register_image(**untagged)["ImageId"]
    image = register_image_if_not_exists(settings, Clients(settings.aws), IDENTITY, snap, 5)
    assert image.ami == crashed and image.reused
    tags = ec2(aws).describe_images(ImageIds=[crashed])["Images"][0]["Tags"]
    assert {"Key": "fedimg:image-key", "Value": IDENTITY.key} in tags


def test_bad_ami_name_is_refused(settings: Settings) -> None:
    s = dataclasses.replace(
        settings, image=dataclasses.replace(settings.image, name_template="{image_name}#{region}")
    )
    with pytest.raises(InputError, match=r"AMI name .*AWS allows"):
        ami_name(s, IDENTITY, "us-east-1")
