"""The strict stand-in's sharing and launch rules (EC2 API Reference pages named per test)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from fedimg.standins.aws import options

PUBLIC = {"Add": [{"Group": "all"}]}
TAGS = [{"Key": "fedimg:managed", "Value": "true"}]


@pytest.fixture
def ec2(aws: str) -> Any:
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"}, parameter_validation=False
    )
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=aws, config=config)


def ami(ec2: Any, name: str = "fedimg-test-ami", arch: str = "x86_64") -> str:
    image = ec2.register_image(Name=name, VirtualizationType="hvm", Architecture=arch)
    return str(image["ImageId"])


def snapshot(ec2: Any, encrypted: bool = False) -> str:
    volume = ec2.create_volume(Size=1, AvailabilityZone="us-east-1a", Encrypted=encrypted)
    return str(ec2.create_snapshot(VolumeId=volume["VolumeId"])["SnapshotId"])


def refused(code: str, call: Any, **params: Any) -> None:
    with pytest.raises(ClientError) as e:
        call(**params)
    assert e.value.response["Error"]["Code"] == code
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def is_public(ec2: Any, image: str) -> bool:
    return bool(ec2.describe_images(ImageIds=[image])["Images"][0]["Public"])


def test_modify_image_attribute_takes_one_attribute_per_call(ec2: Any) -> None:
    """API_ModifyImageAttribute.html: "You can specify only one attribute at a time"."""
    image = ami(ec2)
    refused(
        "InvalidParameterCombination",
        ec2.modify_image_attribute,
        ImageId=image,
        Description={"Value": "new"},
        LaunchPermission=PUBLIC,
    )
    assert not is_public(ec2, image)
    ec2.modify_image_attribute(ImageId=image, Attribute="launchPermission", LaunchPermission=PUBLIC)
    ec2.modify_image_attribute(ImageId=image, Description={"Value": "new"})
    got = ec2.describe_images(ImageIds=[image])["Images"][0]
    assert (got["Public"], got["Description"]) == (True, "new")
    # ami-deprecate.html: a public AMI is deprecated 2 years after its creation by default.
    assert got["DeprecationTime"][:4] == str(int(got["CreationDate"][:4]) + 2)


def test_public_ami_quota_is_resource_limit_exceeded(
    ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "Public AMIs" quota per region (knob FEDIMG_STANDIN_PUBLIC_AMI_QUOTA; off by default)."""
    monkeypatch.setenv(options.PUBLIC_AMI_QUOTA, "1")
    first, second = ami(ec2, "first-ami"), ami(ec2, "second-ami")
    ec2.modify_image_attribute(ImageId=first, LaunchPermission=PUBLIC)
    ec2.modify_image_attribute(ImageId=first, LaunchPermission=PUBLIC)  # already public: fine
    refused(
        "ResourceLimitExceeded", ec2.modify_image_attribute, ImageId=second, LaunchPermission=PUBLIC
    )
    ec2.modify_image_attribute(
        ImageId=second, LaunchPermission={"Add": [{"UserId": "111122223333"}]}
    )


def test_image_block_public_access_blocks_new_public_amis(ec2: Any) -> None:
    """API_EnableImageBlockPublicAccess.html: block-new-sharing blocks making an AMI public;
    Get…State answers per region, unblocked by default."""
    image = ami(ec2)
    assert ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"] == "unblocked"
    refused(
        "InvalidParameterValue",
        ec2.enable_image_block_public_access,
        ImageBlockPublicAccessState="unblocked",
    )
    ec2.enable_image_block_public_access(ImageBlockPublicAccessState="block-new-sharing")
    state = ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"]
    assert state == "block-new-sharing"
    refused(
        "OperationNotPermitted", ec2.modify_image_attribute, ImageId=image, LaunchPermission=PUBLIC
    )
    ec2.disable_image_block_public_access()
    ec2.modify_image_attribute(ImageId=image, LaunchPermission=PUBLIC)
    assert is_public(ec2, image)


def test_snapshot_block_public_access_and_encryption_refuse_public_snapshots(ec2: Any) -> None:
    """API_EnableSnapshotBlockPublicAccess.html (no new public sharing while blocked) and
    API_ModifySnapshotAttribute.html ("Encrypted snapshots ... cannot be made public")."""
    plain, encrypted = snapshot(ec2), snapshot(ec2, encrypted=True)
    public = {"Attribute": "createVolumePermission", "OperationType": "add", "GroupNames": ["all"]}
    refused("UnsupportedOperation", ec2.modify_snapshot_attribute, SnapshotId=encrypted, **public)
    assert ec2.get_snapshot_block_public_access_state()["State"] == "unblocked"
    ec2.enable_snapshot_block_public_access(State="block-all-sharing")
    refused("OperationNotPermitted", ec2.modify_snapshot_attribute, SnapshotId=plain, **public)
    ec2.disable_snapshot_block_public_access()
    ec2.modify_snapshot_attribute(SnapshotId=plain, **public)
    perms = ec2.describe_snapshot_attribute(SnapshotId=plain, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == [{"Group": "all"}]


def test_run_instances_client_token_is_idempotent(ec2: Any) -> None:
    """API_RunInstances.html, ClientToken: a retry returns the same instances; the token with
    other parameters is IdempotentParameterMismatch."""
    image = ami(ec2)
    params = {"ImageId": image, "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.small"}
    first = ec2.run_instances(ClientToken="run-1", **params)
    again = ec2.run_instances(ClientToken="run-1", **params)
    assert again["ReservationId"] == first["ReservationId"]
    assert again["Instances"][0]["InstanceId"] == first["Instances"][0]["InstanceId"]
    refused(
        "IdempotentParameterMismatch",
        ec2.run_instances,
        ClientToken="run-1",
        **params | {"InstanceType": "t3.large"},
    )
    reservations = ec2.describe_instances()["Reservations"]
    assert sum(len(r["Instances"]) for r in reservations) == 1


def test_run_instances_needs_an_instance_type_of_the_amis_architecture(ec2: Any) -> None:
    """API_ProcessorInfo.html, SupportedArchitectures (DescribeInstanceTypes): t3 is x86_64, t4g
    arm64; RunInstances with an AMI of another architecture is InvalidParameterValue, as AWS
    answers it."""
    x86, arm = ami(ec2, "x86", "x86_64"), ami(ec2, "arm", "arm64")
    launch = {"MinCount": 1, "MaxCount": 1}
    for image, wrong_type in ((arm, "t3.small"), (x86, "t4g.small")):
        refused(
            "InvalidParameterValue",
            ec2.run_instances,
            ImageId=image,
            InstanceType=wrong_type,
            **launch,
        )
    ec2.run_instances(ImageId=arm, InstanceType="t4g.small", **launch)
    ec2.run_instances(ImageId=x86, InstanceType="t3.small", **launch)
    reservations = ec2.describe_instances()["Reservations"]
    assert sorted(i["ImageId"] for r in reservations for i in r["Instances"]) == sorted([x86, arm])


@pytest.mark.parametrize(
    "metadata",
    [
        {"HttpTokens": "always"},
        {"HttpPutResponseHopLimit": 0},
        {"HttpPutResponseHopLimit": 65},
        {"HttpEndpoint": "on"},
        {"InstanceMetadataTags": "yes"},
    ],
)
def test_run_instances_metadata_options_take_documented_values(ec2: Any, metadata: Any) -> None:
    """API_InstanceMetadataOptionsRequest.html: HttpTokens, HttpPutResponseHopLimit (1-64),
    HttpEndpoint, InstanceMetadataTags."""
    good = {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2}
    params = {"ImageId": ami(ec2), "MinCount": 1, "MaxCount": 1}
    refused("InvalidParameterValue", ec2.run_instances, MetadataOptions=good | metadata, **params)
    ec2.run_instances(MetadataOptions=good, **params)


def test_tag_specifications_take_each_actions_resource_types(ec2: Any) -> None:
    """TagSpecifications of API_RunInstances.html (instance, volume, spot-instances-request,
    network-interface), API_CreateSecurityGroup.html (security-group) and
    API_ImportKeyPair.html (key-pair)."""
    params = {"ImageId": ami(ec2), "MinCount": 1, "MaxCount": 1}
    bad = [{"ResourceType": "image", "Tags": TAGS}]
    refused("InvalidParameterValue", ec2.run_instances, TagSpecifications=bad, **params)
    kinds = ("instance", "volume")
    ec2.run_instances(
        TagSpecifications=[{"ResourceType": k, "Tags": TAGS} for k in kinds], **params
    )
    group = {"GroupName": "g", "Description": "d"}
    refused("InvalidParameterValue", ec2.create_security_group, TagSpecifications=bad, **group)
    spec = [{"ResourceType": "security-group", "Tags": TAGS}]
    ec2.create_security_group(TagSpecifications=spec, **group)
    key = {"KeyName": "k", "PublicKeyMaterial": KEY}
    refused("InvalidParameterValue", ec2.import_key_pair, TagSpecifications=bad, **key)
    ec2.import_key_pair(TagSpecifications=[{"ResourceType": "key-pair", "Tags": TAGS}], **key)
    refused(
        "InvalidParameterValue",
        ec2.create_security_group,
        TagSpecifications=[
            {"ResourceType": "security-group", "Tags": [{"Key": "aws:x", "Value": ""}]}
        ],
        GroupName="g2",
        Description="d",
    )


KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm3ZQ0mD0yqkY0cX0x7X0b8eQ0t3Zq7w0l1m0n2o3p4 fedimg"
