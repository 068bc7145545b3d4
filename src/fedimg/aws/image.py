"""The snapshot becomes an AMI in the base region, with everything Fedora's AMIs need."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws import limits
from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.wait import wait_until
from fedimg.config import Settings
from fedimg.errors import InputError, TransientError
from fedimg.identity import TAG_KEY, TAG_ROLE, ImageIdentity, tag_list, tags_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

# An AMI another run just registered may stay unknown to DescribeImages this long.
NAMED_VISIBLE_DEADLINE_S = 60.0
ROOT_DEVICE = "/dev/sda1"  # Fedora's choice


@dataclass(frozen=True)
class RegisteredImage:
    ami: str
    region: str
    name: str
    reused: bool


def ami_name(settings: Settings, identity: ImageIdentity, region: str) -> str:
    name = settings.image.name_template.format(
        image_name=identity.image_name,
        region=region,
        volume_type=settings.image.volume_type,
        arch=identity.arch,
        release=identity.release,
        subvariant=identity.subvariant,
        compose_id=identity.compose_id,
    )
    return checked_ami_name(name)


def checked_ami_name(name: str) -> str:
    problem = limits.ami_name_problem(name)
    if problem:
        raise InputError(problem)
    return name


def ami_description(identity: ImageIdentity) -> str:
    # Image names are far shorter than AWS's 255; cut rather than fail if one ever is not.
    return f"Fedora image {identity.image_name}"[: limits.AMI_DESCRIPTION_MAX]


def find_image(ec2: EC2Client, identity: ImageIdentity, name: str) -> str | None:
    """Our AMI in this region: by the image-key tag, or by its (region-unique) name."""
    for filters in (
        [{"Name": f"tag:{TAG_KEY}", "Values": [identity.key]}],
        [{"Name": "name", "Values": [name]}],
    ):
        images = ec2.describe_images(Owners=["self"], Filters=filters)["Images"]  # type: ignore[arg-type]
        live = [i for i in images if i.get("State") not in ("deregistered", "failed", "error")]
        if live:
            return sorted(live, key=lambda i: i.get("CreationDate", ""))[0]["ImageId"]
    return None


def base_image_tags(settings: Settings, identity: ImageIdentity) -> list[Any]:
    return tag_list(identity.tags(settings.image.tags) | {TAG_ROLE: "base"})


def register_params(
    settings: Settings, identity: ImageIdentity, snapshot_id: str, volume_gib: int, name: str
) -> dict[str, Any]:
    img = settings.image
    params: dict[str, Any] = {
        "Name": name,
        "Description": ami_description(identity),
        "Architecture": identity.aws_arch,
        "VirtualizationType": "hvm",
        "RootDeviceName": ROOT_DEVICE,
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {
                    "SnapshotId": snapshot_id,
                    "VolumeSize": volume_gib,
                    "VolumeType": img.volume_type,
                    "DeleteOnTermination": True,
                },
            }
        ],
        "EnaSupport": img.ena,
        "BootMode": img.boot_mode.get(identity.arch, "uefi"),
        # RegisterImage tags only the AMI ("If you specify another value for ResourceType, the
        # request fails"); the snapshot has carried its tags since StartSnapshot.
        "TagSpecifications": [
            {"ResourceType": "image", "Tags": base_image_tags(settings, identity)}
        ],
    }
    if img.sriov:
        params["SriovNetSupport"] = "simple"
    if img.imds_v2:
        params["ImdsSupport"] = "v2.0"
    if img.tpm:
        params["TpmSupport"] = "v2.0"
    return params


def register_image_if_not_exists(
    settings: Settings,
    clients: Clients,
    identity: ImageIdentity,
    snapshot_id: str,
    volume_gib: int,
    *,
    name: str | None = None,
) -> RegisteredImage:
    """Registers the AMI unless this image already has one in the base region.

    Safe to re-run: the AMI is found by tag or name first; tags are re-applied either way, so a
    run that crashed between RegisterImage and tagging converges.
    """
    region = settings.aws.base_region
    ec2 = clients.ec2(region)
    name = checked_ami_name(name) if name else ami_name(settings, identity, region)
    what = f"AMI {name} in {region}"
    try:
        ami = find_image(ec2, identity, name)
        reused = ami is not None
        if ami is None:
            volume_gib = volume_gib or _snapshot_size(ec2, snapshot_id)
            params = register_params(settings, identity, snapshot_id, volume_gib, name)
            try:
                ami = ec2.register_image(**params)["ImageId"]
                log.info("%s: registered %s", identity.image_name, ami)
            except ClientError as e:
                if error_code(e) != "InvalidAMIName.Duplicate":
                    raise
                # A concurrent run registered it first (names are unique per region): use its AMI.
                ami, reused = _registered_elsewhere(ec2, identity, name), True
        if reused:
            _check_same_image(ec2, ami, identity, what)
            # A new AMI has its tags from TagSpecifications (atomic), and may not be known to
            # CreateTags yet (eventual consistency); a found one gets them re-applied.
            ec2.create_tags(Resources=[ami], Tags=base_image_tags(settings, identity))
        wait_image_available(ec2, ami, what, settings.aws.wait_seconds)
    except (ClientError, BotoCoreError) as e:
        raise translate(e, what) from e
    return RegisteredImage(ami, region, name, reused)


def _registered_elsewhere(ec2: EC2Client, identity: ImageIdentity, name: str) -> str:
    """The AMI another run registered under ``name``, once visible (eventual consistency)."""
    end = time.monotonic() + NAMED_VISIBLE_DEADLINE_S
    while (ami := find_image(ec2, identity, name)) is None:
        if time.monotonic() > end:
            raise TransientError(f"AMI {name}: taken, but not visible yet")
        time.sleep(0.5)
    return ami


def _check_same_image(ec2: EC2Client, ami: str, identity: ImageIdentity, what: str) -> None:
    """An AMI found by name is reused only if it is of this image's content."""
    images = ec2.describe_images(ImageIds=[ami])["Images"]
    key = tags_of(images[0]).get(TAG_KEY, "") if images else ""
    if key and key != identity.key:
        raise InputError(
            f"{what}: the name is taken by {ami}, an AMI of other content; choose another name"
        )


def wait_image_available(ec2: EC2Client, ami: str, what: str, deadline_s: float) -> None:
    def state() -> str:
        images = ec2.describe_images(ImageIds=[ami])["Images"]
        return images[0].get("State", "") if images else ""

    wait_until(what, state, done="available", failed=("failed", "error"), deadline_s=deadline_s)


def _snapshot_size(ec2: EC2Client, snapshot_id: str) -> int:
    snaps = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    return int(snaps[0].get("VolumeSize", 1)) if snaps else 1
