"""The strict stand-in's SSM Parameter Store rules, spoken to over HTTP like AWS.

Each test names the Systems Manager API reference page (PutParameter, Name / DataType) it follows.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fedimg.standins.aws import options
from tests.standins.test_aws_ebs import client, refused

# The ARN before a name in us-east-1 with moto's account: 45 characters count toward the 1011.
ARN = "arn:aws:ssm:us-east-1:123456789012:parameter/"


@pytest.fixture
def ssm(aws: str) -> Any:
    return client("ssm", aws)


@pytest.fixture
def amis(aws: str) -> list[str]:
    """Two AMIs in us-east-1, registered the way fedimg does (from a completed snapshot)."""
    ebs, ec2 = client("ebs", aws), client("ec2", aws)
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=0)
    root = "/dev/sda1"
    return [
        ec2.register_image(
            Name=f"Fedora-Cloud-Base-{n}",
            Architecture="x86_64",
            VirtualizationType="hvm",
            RootDeviceName=root,
            BlockDeviceMappings=[
                {"DeviceName": root, "Ebs": {"SnapshotId": snapshot_id, "VolumeType": "gp3"}}
            ],
            EnaSupport=True,
            BootMode="uefi",
        )["ImageId"]
        for n in (1, 2)
    ]


def put_image(ssm: Any, name: str, value: str) -> int:
    response = ssm.put_parameter(
        Name=name, Value=value, Type="String", DataType="aws:ec2:image", Overwrite=True
    )
    return int(response["Version"])


def value(ssm: Any, name: str) -> str:
    try:
        return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as e:
        assert e.response["Error"]["Code"] == "ParameterNotFound"
        return ""


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("/fedimg/has space", "ValidationException"),
        ("/fedimg/dollar$", "ValidationException"),
        ("fedimg/no/leading/slash", "ValidationException"),
        ("/fedimg//empty-level", "ValidationException"),
        ("/fedimg/trailing/", "ValidationException"),
        ("/" + "/".join(f"l{i}" for i in range(16)), "HierarchyLevelLimitExceededException"),
        ("/f" + "x" * (1011 - len(ARN)), "ValidationException"),  # 1012 with the ARN
        ("ssm-latest", "ValidationException"),
        ("/Ssm/latest", "ValidationException"),
        ("awsome", "ValidationException"),
        ("/aws/service/fedimg", "AccessDeniedException"),
    ],
)
def test_put_parameter_refuses_names_aws_refuses(ssm: Any, name: str, code: str) -> None:
    """PutParameter, Name: only a-zA-Z0-9_.- and /; a hierarchy begins with /; at most fifteen
    levels (HierarchyLevelLimitExceededException); at most 1011 characters with the ARN before
    it; no ``aws``/``ssm`` prefix (reserved ``/aws/`` paths: AccessDeniedException)."""
    refused(lambda: ssm.put_parameter(Name=name, Value="v", Type="String"), code)


@pytest.mark.parametrize(
    "name",
    [
        "/" + "/".join(f"l{i}" for i in range(15)),
        "/f" + "x" * (1011 - len(ARN) - 1),  # 1011 with the ARN
        "fedimg.latest-x86_64",
        "  /fedimg/trimmed  ",
    ],
    ids=["15-levels", "1011-with-arn", "flat", "outer-spaces-removed"],
)
def test_put_parameter_accepts_names_at_the_limits(ssm: Any, name: str) -> None:
    """PutParameter, Name: the limits themselves pass; spaces at the beginning or end are
    removed by the service."""
    ssm.put_parameter(Name=name, Value="v", Type="String")
    assert ssm.get_parameter(Name=name.strip())["Parameter"]["Value"] == "v"


def test_an_ec2_image_value_is_kept_only_if_it_names_an_ami_here(ssm: Any, amis: list[str]) -> None:
    """PutParameter, DataType aws:ec2:image: the value is validated asynchronously; an invalid one
    (not an AMI id, or no such AMI in the account and region) still answers success, but "the
    parameter will not be created or updated". Overwrite keeps moto's versioning."""
    name = "/fedimg/42/Cloud_Base/x86_64/latest"
    assert put_image(ssm, name, "ami-0123456789abcdef0") == 1  # well formed, no such AMI
    assert value(ssm, name) == ""
    put_image(ssm, name, amis[0])
    assert value(ssm, name) == amis[0]
    put_image(ssm, name, "not-an-ami")
    put_image(ssm, name, "ami-0123456789abcdef0")
    assert value(ssm, name) == amis[0]
    put_image(ssm, name, amis[1])
    assert value(ssm, name) == amis[1]
    refused(
        lambda: ssm.put_parameter(Name=name, Value=amis[0], Type="String"),
        "ParameterAlreadyExists",
    )


def test_reads_see_the_previous_value_until_validation_finishes(
    ssm: Any, amis: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PutParameter, DataType aws:ec2:image: "the PutParameter call returns before the validation
    is complete" — until then GetParameter returns the previous version."""
    name = "/fedimg/latest"
    put_image(ssm, name, amis[0])
    monkeypatch.setenv(options.SSM_VALIDATION_DELAY, "0.5")
    started = time.monotonic()
    version = put_image(ssm, name, amis[1])
    seen = ssm.get_parameter(Name=name)["Parameter"]
    assert time.monotonic() - started < 0.5, "too slow to see the delay; the test proves nothing"
    assert (seen["Value"], seen["Version"]) == (amis[0], version - 1)
    time.sleep(0.5)
    seen = ssm.get_parameter(Name=name)["Parameter"]
    assert (seen["Value"], seen["Version"]) == (amis[1], version)
