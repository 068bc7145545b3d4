"""The EC2 boot test stage: EC2 calls go to moto, SSH goes to a real QEMU guest of the sample image
(moto cannot boot instances), so the real SSH and check code runs against a really booted image."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import paramiko
import pytest

from fedimg.aws.boottest import Ec2BootTester, SshTarget
from fedimg.aws.clients import Clients
from fedimg.boot.qemu import Guest, running_guest
from fedimg.boot.sample import sample_image
from fedimg.config import Check, Settings
from fedimg.identity import ImageIdentity
from fedimg.pipeline import FAILED, NEEDS_INSPECTION, PASSED, TestSubject
from fedimg.standins.moto import free_port
from tests.helpers import Recorder, ec2, record

CHECKS = (
    Check("true", "/bin/true"),
    Check("kernel", "uname -s", "Linux"),
    Check("root-mounted", 'awk \'$2 == "/" {print "mounted"; exit}\' /proc/mounts', "mounted"),
)
IDENTITY = ImageIdentity("Fedora-Cloud-Base-AmazonEC2-99-1.0.x86_64", "x86_64", "ab" * 32)


@pytest.fixture(scope="module")
def guest(build_dir: Path) -> Iterator[Guest]:
    with running_guest(sample_image(build_dir), "bios", "root") as g:
        yield g


def boot_settings(settings: Settings, checks: tuple[Check, ...] = CHECKS, **test: Any) -> Settings:
    options = {"ssh_user": "root", "checks": checks, "ssh_seconds": 30, "ssh_cidr": "192.0.2.0/24"}
    return dataclasses.replace(
        settings, test=dataclasses.replace(settings.test, **(options | test))
    )


def to(guest: Guest) -> Any:
    def resolve(instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
        return SshTarget(guest.host, guest.port, guest.pkey)

    return resolve


def subject(url: str) -> TestSubject:
    ami = ec2(url).register_image(Name="under-test", RootDeviceName="/dev/sda1")["ImageId"]
    return TestSubject(IDENTITY, ami, "us-east-1")


def leftovers(url: str) -> dict[str, list[str]]:
    client = ec2(url)
    live = [
        i["InstanceId"]
        for r in client.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    groups = [
        g["GroupId"]
        for g in client.describe_security_groups()["SecurityGroups"]
        if g["GroupName"] != "default"
    ]
    keys = [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]]
    return {"instances": live, "groups": groups, "keys": keys}


NOTHING_LEFT = {"instances": [], "groups": [], "keys": []}


def run(settings: Settings, resolve: Any, url: str) -> tuple[Any, Recorder]:
    session = boto3.session.Session()
    rec = record(session)
    verdict = Ec2BootTester(settings, Clients(settings.aws, session=session), resolve)(subject(url))
    return verdict, rec


def test_passing_image_passes_and_leaves_nothing(
    settings: Settings, guest: Guest, aws: str
) -> None:
    verdict, rec = run(boot_settings(settings), to(guest), aws)
    assert verdict.outcome == PASSED, verdict.reason
    assert [c["name"] for c in verdict.checks] == ["true", "kernel", "root-mounted"]
    assert all(c["outcome"] == PASSED for c in verdict.checks)
    assert "Linux" in verdict.checks[1]["output"]
    (launch,) = rec.of("RunInstances")
    token = launch["ClientToken"]
    (held,) = [
        i
        for r in ec2(aws).describe_instances()["Reservations"]
        for i in r["Instances"]
        if i.get("ClientToken") == token
    ]
    # IMDSv2 only, as instances of an AMI registered with ImdsSupport v2.0 get it
    options = held["MetadataOptions"]
    assert (options["HttpTokens"], options["HttpPutResponseHopLimit"]) == ("required", 2)
    assert options["HttpEndpoint"] == "enabled"
    assert launch["InstanceType"] == "t3.small"
    tags = {t["Key"]: t["Value"] for t in launch["TagSpecifications"][0]["Tags"]}
    assert tags["fedimg:role"] == "test" and tags["fedimg:managed"] == "true"
    (ingress,) = rec.of("AuthorizeSecurityGroupIngress")
    (perm,) = ingress["IpPermissions"]
    assert (perm["FromPort"], perm["ToPort"]) == (22, 22)
    assert perm["IpRanges"][0]["CidrIp"] == "192.0.2.0/24"
    (key,) = rec.of("ImportKeyPair")
    assert key["PublicKeyMaterial"].startswith(b"ssh-ed25519 ")
    assert leftovers(aws) == NOTHING_LEFT


def test_failing_check_fails_with_console_output(
    settings: Settings, guest: Guest, aws: str
) -> None:
    checks = (*CHECKS, Check("selinux-enforcing", "getenforce", "Enforcing"))
    verdict, _ = run(boot_settings(settings, checks), to(guest), aws)
    assert verdict.outcome == FAILED
    assert "selinux-enforcing" in verdict.reason and "console output" in verdict.reason
    assert verdict.checks[-1]["outcome"] == FAILED
    assert leftovers(aws) == NOTHING_LEFT


def test_no_ssh_is_the_images_fault(settings: Settings, aws: str) -> None:
    port = free_port()  # nothing listens here

    def nowhere(instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
        return SshTarget("127.0.0.1", port, pkey)

    verdict, _ = run(boot_settings(settings, ssh_seconds=3), nowhere, aws)
    assert verdict.outcome == FAILED and "no SSH" in verdict.reason
    assert leftovers(aws) == NOTHING_LEFT


def test_aws_failure_needs_inspection(settings: Settings, guest: Guest, aws: str) -> None:
    s = boot_settings(settings, instance_types={"x86_64": "no-such.type"})
    session = boto3.session.Session()

    def refuse_launch(params: dict[str, Any], **_: Any) -> None:
        from botocore.exceptions import ClientError

        raise ClientError(
            {"Error": {"Code": "InsufficientInstanceCapacity", "Message": "none"}}, "RunInstances"
        )

    session.events.register("provide-client-params.ec2.RunInstances", refuse_launch)
    verdict = Ec2BootTester(s, Clients(s.aws, session=session), to(guest))(subject(aws))
    assert verdict.outcome == NEEDS_INSPECTION and "InsufficientInstanceCapacity" in verdict.reason
    assert leftovers(aws) == NOTHING_LEFT


def test_interrupt_still_cleans_up(settings: Settings, aws: str) -> None:
    def interrupted(instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(boot_settings(settings), interrupted, aws)
    assert leftovers(aws) == NOTHING_LEFT
