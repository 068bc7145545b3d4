from __future__ import annotations

import dataclasses

import boto3
import pytest

from fedimg.aws.clients import Clients
from fedimg.aws.image import ami_name, register_image_if_not_exists
from fedimg.config import Settings
from fedimg.errors import InputError
from fedimg.identity import ImageIdentity
from tests.helpers import ec2, record

IDENTITY = ImageIdentity("Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64", "x86_64", "ab" * 32)
ARM = ImageIdentity("Fedora-Cloud-Base-AmazonEC2-41-1.4.aarch64", "aarch64", "cd" * 32)


def snapshot(url: str) -> str:
    client = ec2(url)
    vol = client.create_volume(Size=5, AvailabilityZone="us-east-1a")["VolumeId"]
    return str(client.create_snapshot(VolumeId=vol)["SnapshotId"])


def test_register_sends_everything_fedora_amis_need(settings: Settings, aws: str) -> None:
    session = boto3.session.Session()
    rec = record(session)
    image = register_image_if_not_exists(
        settings, Clients(settings.aws, session=session), IDENTITY, snapshot(aws), 5
    )
    (p,) = rec.of("RegisterImage")
    assert p["Name"] == "Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64-hvm-us-east-1-gp3-0"
    assert p["Architecture"] == "x86_64" and p["VirtualizationType"] == "hvm"
    assert p["RootDeviceName"] == "/dev/sda1"
    (bdm,) = p["BlockDeviceMappings"]
    assert bdm["DeviceName"] == "/dev/sda1"
    assert bdm["Ebs"]["VolumeSize"] == 5 and bdm["Ebs"]["VolumeType"] == "gp3"
    assert bdm["Ebs"]["DeleteOnTermination"] is True
    assert p["EnaSupport"] is True and p["SriovNetSupport"] == "simple"
    assert p["BootMode"] == "uefi-preferred" and p["ImdsSupport"] == "v2.0"
    assert "TpmSupport" not in p
    kinds = {t["ResourceType"] for t in p["TagSpecifications"]}
    assert kinds == {"image", "snapshot"}
    assert image.ami.startswith("ami-") and not image.reused


def test_aarch64_with_tpm_is_arm64_uefi(settings: Settings, aws: str) -> None:
    s = dataclasses.replace(
        settings,
        image=dataclasses.replace(
            settings.image, tpm=True, boot_mode={"x86_64": "uefi", "aarch64": "uefi"}
        ),
    )
    session = boto3.session.Session()
    rec = record(session)
    register_image_if_not_exists(s, Clients(s.aws, session=session), ARM, snapshot(aws), 5)
    (p,) = rec.of("RegisterImage")
    assert p["Architecture"] == "arm64" and p["BootMode"] == "uefi"
    assert p["TpmSupport"] == "v2.0"


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
    crashed = ec2(aws).register_image(Name=name, RootDeviceName="/dev/sda1")["ImageId"]
    image = register_image_if_not_exists(
        settings, Clients(settings.aws), IDENTITY, snapshot(aws), 5
    )
    assert image.ami == crashed and image.reused
    tags = ec2(aws).describe_images(ImageIds=[crashed])["Images"][0]["Tags"]
    assert {"Key": "fedimg:image-key", "Value": IDENTITY.key} in tags


def test_bad_ami_name_is_refused(settings: Settings) -> None:
    s = dataclasses.replace(
        settings, image=dataclasses.replace(settings.image, name_template="{image_name}@{region}")
    )
    with pytest.raises(InputError, match="AMI name"):
        ami_name(s, IDENTITY, "us-east-1")
