"""The EC2 requests fedimg makes, each as a dry run with plausible parameters.

The list is every ``ec2:`` action of ``iam-policy.json`` (tests hold the two together). A dry run
"checks whether you have the required permissions for the action, without actually making the
request" (the DryRun parameter of every EC2 action): ``DryRunOperation`` when allowed,
``UnauthorizedOperation`` when not.

Under iam-policy.json fedimg may create only what it tags ``fedimg:managed=true`` in the same
call, and act only on resources that carry that tag. So the creating dry runs carry the tag in
their TagSpecifications, as fedimg's own requests do. The others (``ON_EXISTING``) name existing
resources by ids that are well formed but name nothing, so they carry no tag: an
``UnauthorizedOperation`` there cannot tell "not granted" from "granted on fedimg:managed
resources only", and preflight reports it as needing the tag on the resource, not as denied.
The EC2 reference does not say, per action, whether the permission is checked before the ids are
looked up; where EC2 looks first it answers ``*.NotFound``, and preflight reports that action as
unchecked rather than guessing. The Describe* reads name no ids, except DescribeImageAttribute.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import (
        BlockDeviceMappingTypeDef,
        IpPermissionTypeDef,
        TagSpecificationTypeDef,
        TagTypeDef,
    )

AMI = "ami-0f00d0000000000f0"
SNAPSHOT = "snap-0f00d0000000000f0"
INSTANCE = "i-0f00d0000000000f0"
GROUP = "sg-0f00d0000000000f0"
IMPORT_TASK = "import-snap-0f00d0000000000f0"
NAME = "fedimg-preflight"
# A well-formed ssh-ed25519 public key (wire format: name, then a 32-byte key).
_KEY_BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)
PUBLIC_KEY = b"ssh-ed25519 " + base64.b64encode(_KEY_BLOB) + b" fedimg-preflight"
SSH: list[IpPermissionTypeDef] = [
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
]
TAG: list[TagTypeDef] = [
    {"Key": "fedimg:managed", "Value": "true"},
    {"Key": "fedimg:preflight", "Value": "dry-run"},
]


def tagged(*resource_types: str) -> list[TagSpecificationTypeDef]:
    """TagSpecifications as fedimg's creating calls send them (tag-on-create)."""
    return [{"ResourceType": t, "Tags": TAG} for t in resource_types]  # type: ignore[typeddict-item]


MAPPING: list[BlockDeviceMappingTypeDef] = [
    {"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": SNAPSHOT, "VolumeType": "gp3"}}
]

DryRun = Callable[["EC2Client", str], object]


def _tomorrow() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


# action -> the request, as fedimg makes it (region: the region of the client).
DRY_RUNS: dict[str, DryRun] = {
    # Upload and register (aws/snapshot.py, aws/image.py)
    "RegisterImage": lambda ec2, _: ec2.register_image(
        Name=NAME,
        Architecture="x86_64",
        RootDeviceName="/dev/sda1",
        VirtualizationType="hvm",
        BlockDeviceMappings=MAPPING,
        TagSpecifications=tagged("image"),
        DryRun=True,
    ),
    "CreateTags": lambda ec2, _: ec2.create_tags(Resources=[AMI], Tags=TAG, DryRun=True),
    "DeleteSnapshot": lambda ec2, _: ec2.delete_snapshot(SnapshotId=SNAPSHOT, DryRun=True),
    "DescribeSnapshots": lambda ec2, _: ec2.describe_snapshots(OwnerIds=["self"], DryRun=True),
    "DescribeImages": lambda ec2, _: ec2.describe_images(Owners=["self"], DryRun=True),
    # Copy and publish (aws/replicate.py, aws/publish.py)
    "CopyImage": lambda ec2, region: ec2.copy_image(
        Name=NAME,
        SourceImageId=AMI,
        SourceRegion=region,
        TagSpecifications=tagged("image", "snapshot"),
        DryRun=True,
    ),
    "DescribeImageAttribute": lambda ec2, _: ec2.describe_image_attribute(
        ImageId=AMI, Attribute="launchPermission", DryRun=True
    ),
    "ModifyImageAttribute": lambda ec2, _: ec2.modify_image_attribute(
        ImageId=AMI, LaunchPermission={"Add": [{"Group": "all"}]}, DryRun=True
    ),
    "ModifySnapshotAttribute": lambda ec2, _: ec2.modify_snapshot_attribute(
        SnapshotId=SNAPSHOT,
        Attribute="createVolumePermission",
        OperationType="add",
        GroupNames=["all"],
        DryRun=True,
    ),
    "EnableImageDeprecation": lambda ec2, _: ec2.enable_image_deprecation(
        ImageId=AMI, DeprecateAt=_tomorrow(), DryRun=True
    ),
    "EnableImageDeregistrationProtection": lambda ec2, _: (
        ec2.enable_image_deregistration_protection(ImageId=AMI, DryRun=True)
    ),
    "GetImageBlockPublicAccessState": lambda ec2, _: ec2.get_image_block_public_access_state(
        DryRun=True
    ),
    "GetSnapshotBlockPublicAccessState": lambda ec2, _: ec2.get_snapshot_block_public_access_state(
        DryRun=True
    ),
    # Upload by S3 + ImportSnapshot (aws/importsnapshot.py)
    "ImportSnapshot": lambda ec2, _: ec2.import_snapshot(
        DiskContainer={
            "Format": "RAW",
            "UserBucket": {"S3Bucket": "fedimg-preflight", "S3Key": f"{NAME}.raw"},
        },
        TagSpecifications=tagged("import-snapshot-task"),
        DryRun=True,
    ),
    "DescribeImportSnapshotTasks": lambda ec2, _: ec2.describe_import_snapshot_tasks(DryRun=True),
    "CancelImportTask": lambda ec2, _: ec2.cancel_import_task(
        ImportTaskId=IMPORT_TASK, DryRun=True
    ),
    # Retention (aws/prune.py)
    "DisableImage": lambda ec2, _: ec2.disable_image(ImageId=AMI, DryRun=True),
    "DeregisterImage": lambda ec2, _: ec2.deregister_image(ImageId=AMI, DryRun=True),
    # The boot test (aws/boottest.py)
    "ImportKeyPair": lambda ec2, _: ec2.import_key_pair(
        KeyName=NAME,
        PublicKeyMaterial=PUBLIC_KEY,
        TagSpecifications=tagged("key-pair"),
        DryRun=True,
    ),
    "CreateSecurityGroup": lambda ec2, _: ec2.create_security_group(
        GroupName=NAME,
        Description="fedimg preflight (dry run)",
        TagSpecifications=tagged("security-group"),
        DryRun=True,
    ),
    "AuthorizeSecurityGroupIngress": lambda ec2, _: ec2.authorize_security_group_ingress(
        GroupId=GROUP, IpPermissions=SSH, DryRun=True
    ),
    "RunInstances": lambda ec2, _: ec2.run_instances(
        ImageId=AMI,
        InstanceType="t3.small",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=tagged("instance", "volume", "network-interface"),
        DryRun=True,
    ),
    "DescribeInstances": lambda ec2, _: ec2.describe_instances(DryRun=True),
    "DescribeInstanceStatus": lambda ec2, _: ec2.describe_instance_status(DryRun=True),
    "GetConsoleOutput": lambda ec2, _: ec2.get_console_output(InstanceId=INSTANCE, DryRun=True),
    "DescribeKeyPairs": lambda ec2, _: ec2.describe_key_pairs(DryRun=True),
    "DescribeSecurityGroups": lambda ec2, _: ec2.describe_security_groups(DryRun=True),
    "TerminateInstances": lambda ec2, _: ec2.terminate_instances(
        InstanceIds=[INSTANCE], DryRun=True
    ),
    "DeleteSecurityGroup": lambda ec2, _: ec2.delete_security_group(GroupId=GROUP, DryRun=True),
    "DeleteKeyPair": lambda ec2, _: ec2.delete_key_pair(KeyName=NAME, DryRun=True),
    # Preflight's own reads (the "Preflight" statement of iam-policy.json)
    "DescribeRegions": lambda ec2, _: ec2.describe_regions(AllRegions=True, DryRun=True),
    "DescribeVpcs": lambda ec2, _: ec2.describe_vpcs(DryRun=True),
    "DescribeSubnets": lambda ec2, _: ec2.describe_subnets(DryRun=True),
}

# The dry runs that name existing resources by placeholder ids (RegisterImage: the snapshot;
# RunInstances: the AMI), which the policy allows only when they carry fedimg:managed.
ON_EXISTING = frozenset(
    {
        "AuthorizeSecurityGroupIngress",
        "CancelImportTask",
        "CreateTags",
        "DeleteKeyPair",
        "DeleteSecurityGroup",
        "DeleteSnapshot",
        "DeregisterImage",
        "DescribeImageAttribute",
        "DisableImage",
        "EnableImageDeprecation",
        "EnableImageDeregistrationProtection",
        "GetConsoleOutput",
        "ModifyImageAttribute",
        "ModifySnapshotAttribute",
        "RegisterImage",
        "RunInstances",
        "TerminateInstances",
    }
)
