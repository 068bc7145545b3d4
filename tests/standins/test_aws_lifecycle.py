"""The stand-in's AMI lifecycle rules (ec2_lifecycle.py), spoken to over HTTP like AWS; each test
names the EC2 API Reference page it follows."""

from __future__ import annotations

from typing import Any

import pytest

from fedimg.standins.aws import options
from tests.standins.test_aws_ec2_images import client, image, refused, register, snapshot

PUBLIC = {"Add": [{"Group": "all"}]}


@pytest.fixture
def ec2(aws: str) -> Any:
    return client(aws)


@pytest.fixture
def ami(ec2: Any) -> str:
    return register(ec2, snapshot(ec2))


def listed(ec2: Any, **params: Any) -> set[str]:
    return {i["ImageId"] for i in ec2.describe_images(Owners=["self"], **params)["Images"]}


def test_disable_image_makes_the_ami_private_and_unlisted(ec2: Any, ami: str) -> None:
    """API_DisableImage.html: state disabled, all launch permissions removed, absent from
    DescribeImages unless IncludeDisabled (API_DescribeImages.html)."""
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission=PUBLIC)
    ec2.disable_image(ImageId=ami)
    assert ami not in listed(ec2)
    got = ec2.describe_images(ImageIds=[ami], IncludeDisabled=True)["Images"][0]
    assert (got["State"], got["Public"]) == ("disabled", False)
    assert ami in listed(ec2, IncludeDisabled=True)


def test_a_disabled_ami_cannot_be_shared(ec2: Any, ami: str) -> None:
    """API_DisableImage.html: "A disabled AMI can't be shared"."""
    ec2.disable_image(ImageId=ami)
    refused(
        "InvalidAMIID.Unavailable", ec2.modify_image_attribute, ImageId=ami, LaunchPermission=PUBLIC
    )


def test_enable_image_does_not_give_back_lost_access(ec2: Any, ami: str) -> None:
    """API_EnableImage.html: available again, those who lost access "do not regain access
    automatically"."""
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission=PUBLIC)
    ec2.disable_image(ImageId=ami)
    ec2.enable_image(ImageId=ami)
    got = image(ec2, ami)
    assert (got["State"], got["Public"]) == ("available", False)


def test_a_protected_ami_cannot_be_deregistered(ec2: Any, ami: str) -> None:
    """API_EnableImageDeregistrationProtection.html: "the AMI can't be deregistered";
    API_DisableImageDeregistrationProtection.html lifts it. DescribeImages shows the state."""
    assert image(ec2, ami)["DeregistrationProtection"] == "disabled"
    ec2.enable_image_deregistration_protection(ImageId=ami)
    assert image(ec2, ami)["DeregistrationProtection"] == "enabled"
    refused("OperationNotPermitted", ec2.deregister_image, ImageId=ami)
    ec2.disable_image_deregistration_protection(ImageId=ami)
    ec2.deregister_image(ImageId=ami)
    assert ami not in listed(ec2, IncludeDisabled=True)


def test_protection_with_cooldown_holds_for_a_day_after_it_is_disabled(ec2: Any, ami: str) -> None:
    """API_EnableImageDeregistrationProtection.html, WithCooldown: "enforces deregistration
    protection for 24 hours after deregistration protection is disabled"."""
    ec2.enable_image_deregistration_protection(ImageId=ami, WithCooldown=True)
    assert image(ec2, ami)["DeregistrationProtection"] == "enabled-with-cooldown"
    ec2.disable_image_deregistration_protection(ImageId=ami)
    assert image(ec2, ami)["DeregistrationProtection"].startswith("disabled-until 20")
    refused("OperationNotPermitted", ec2.deregister_image, ImageId=ami)


def test_a_disabled_ami_can_be_deregistered_and_its_snapshot_then_deleted(ec2: Any) -> None:
    """API_DeregisterImage.html and API_DeleteSnapshot.html: a snapshot is deletable once no
    registered AMI uses it; disabling does not release it."""
    snap = snapshot(ec2)
    ami = register(ec2, snap)
    ec2.disable_image(ImageId=ami)
    refused("InvalidSnapshot.InUse", ec2.delete_snapshot, SnapshotId=snap)
    ec2.deregister_image(ImageId=ami)
    ec2.delete_snapshot(SnapshotId=snap)


def test_the_public_ami_quota_is_enforced_at_awss_default_unless_set(
    ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Service Quotas' "Public AMIs" (L-0E3CBAB9, default 5 per region): the value GetServiceQuota
    reports is the one ModifyImageAttribute enforces, with ``ResourceLimitExceeded``."""
    monkeypatch.delenv(options.PUBLIC_AMI_QUOTA, raising=False)
    assert options.public_ami_quota() == 5
    snap = snapshot(ec2)
    amis = [register(ec2, snap, Name=f"public-{n}") for n in range(6)]
    for ami in amis[:5]:
        ec2.modify_image_attribute(ImageId=ami, LaunchPermission=PUBLIC)
    refused(
        "ResourceLimitExceeded",
        ec2.modify_image_attribute,
        ImageId=amis[5],
        LaunchPermission=PUBLIC,
    )
    ec2.disable_image(ImageId=amis[0])  # a disabled AMI is private: it frees a place
    ec2.modify_image_attribute(ImageId=amis[5], LaunchPermission=PUBLIC)
