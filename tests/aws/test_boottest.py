"""The EC2 boot test stage: EC2 calls go to moto, SSH goes to a real QEMU guest of the sample image
(moto cannot boot instances), so the real SSH and check code runs against a really booted image.

Two guests for the whole module: the x86_64 sample (BIOS) and the aarch64 sample (UEFI, emulated:
its boot is the slow part, ~13 s), which stands in for the ``t4g`` instance of an arm64 AMI."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import paramiko
import pytest
from rich.console import Console

from fedimg.aws.boottest import Ec2BootTester, SshTarget, booted_firmware
from fedimg.aws.clients import Clients
from fedimg.boot.qemu import Guest, running_guest
from fedimg.boot.sample import sample_image, sample_image_xz
from fedimg.config import Check, Settings
from fedimg.demo import region_table, to_guest_of_arch
from fedimg.errors import ConfigError
from fedimg.identity import ImageIdentity
from fedimg.pipeline import FAILED, NEEDS_INSPECTION, PASSED, Pipeline, TestSubject
from fedimg.report import ResultsReporter, fetch_results
from fedimg.standins.moto import free_port
from fedimg.standins.resultsdb import resultsdb_standin
from fedimg.standins.samplecompose import build_sample_compose, serve_directory
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


@pytest.fixture(scope="module")
def arm_guest(build_dir: Path) -> Iterator[Guest]:
    """The module's one aarch64 boot (TCG): the stand-in for every arm64 test instance."""
    with running_guest(sample_image(build_dir, "aarch64"), "uefi", "root", arch="aarch64") as g:
        yield g


@pytest.fixture(scope="module")
def sample_compose(build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo's compose: each arch's real sample image, served over HTTP; yields its location."""
    tree = tmp_path_factory.mktemp("compose")
    xzs = {arch: sample_image_xz(build_dir, arch) for arch in ("x86_64", "aarch64")}
    location = build_sample_compose(tree, xzs)
    with serve_directory(tree) as base:
        yield f"{base}/{location.relative_to(tree).as_posix()}"


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
    image = ec2(url).register_image(
        Name="under-test", RootDeviceName="/dev/sda1", Architecture="x86_64"
    )
    ami = image["ImageId"]
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


def interrupted(instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
    """A resolver reached only once the instance runs: stops the test before any SSH."""
    raise KeyboardInterrupt


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
    # leased from the start, so that another run's clean-up leaves this live test alone
    assert float(tags["fedimg:lease-until"]) > time.time()
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
    with pytest.raises(KeyboardInterrupt):
        run(boot_settings(settings), interrupted, aws)
    assert leftovers(aws) == NOTHING_LEFT


def test_an_arch_the_configuration_leaves_out_gets_its_default_instance_type(
    settings: Settings, aws: str
) -> None:
    """A ``test.instance_types`` table naming x86_64 only must not put an arm64 AMI on t3."""
    s = boot_settings(settings, instance_types={"x86_64": "t3.micro"})
    session = boto3.session.Session()
    rec = record(session)

    arm = ImageIdentity("Fedora-Cloud-Base-AmazonEC2-99-1.0.aarch64", "aarch64", "cd" * 32)
    ami = ec2(aws).register_image(
        Name="arm-under-test", RootDeviceName="/dev/sda1", Architecture="arm64"
    )["ImageId"]
    with pytest.raises(KeyboardInterrupt):
        Ec2BootTester(s, Clients(s.aws, session=session), interrupted)(
            TestSubject(arm, ami, "us-east-1")
        )
    (launch,) = rec.of("RunInstances")
    assert launch["InstanceType"] == "t4g.small"


def test_both_arches_are_registered_tested_and_published_as_their_own_arch(
    settings: Settings, guest: Guest, arm_guest: Guest, sample_compose: str, aws: str
) -> None:
    """The demo's pipeline: each AMI's test instance SSHes to the guest of its architecture."""
    checks = (*CHECKS, Check("machine", "uname -m"))
    s = boot_settings(settings, checks)
    session = boto3.session.Session()
    rec = record(session)
    clients = Clients(s.aws, session=session)
    with resultsdb_standin() as rdb:
        s = dataclasses.replace(s, resultsdb=dataclasses.replace(s.resultsdb, url=rdb))
        tester = Ec2BootTester(
            s, clients, to_guest_of_arch({"x86_64": guest, "aarch64": arm_guest})
        )
        pipeline = Pipeline(s, clients, tester=tester, reporter=ResultsReporter(s.resultsdb))
        outcome = pipeline.run_compose(sample_compose)
        rows = fetch_results(rdb, outcome.compose_id)

    assert outcome.ok, [i.error for i in outcome.images]
    by_arch = {i.arch: i for i in outcome.images}
    expected = {"x86_64": ("x86_64", "uefi-preferred"), "aarch64": ("arm64", "uefi")}
    for arch, image in by_arch.items():
        assert image.test is not None
        assert {c["name"]: c["output"].strip() for c in image.test.checks}["machine"] == arch
        assert sorted(image.regions) == sorted(s.aws.regions)
        for region, ami in image.regions.items():  # the copies keep the base AMI's attributes
            (held,) = ec2(aws, region).describe_images(ImageIds=[ami])["Images"]
            assert (held["Architecture"], held["BootMode"]) == expected[arch]
    launched = {r["ImageId"]: r["InstanceType"] for r in rec.of("RunInstances")}
    assert launched == {
        by_arch["x86_64"].base_ami: "t3.small",
        by_arch["aarch64"].base_ami: "t4g.small",
    }
    assert {(r.ami, r.architecture, r.outcome) for r in rows} == {
        (by_arch[arch].base_ami, arch, PASSED) for arch in by_arch
    }
    # arm64's boot mode uefi leaves no choice; x86_64's uefi-preferred is unknown unless reported
    assert {(r.architecture, r.firmware) for r in rows} == {("x86_64", ""), ("aarch64", "uefi")}
    table = io.StringIO()
    Console(file=table, width=250).print(region_table(outcome, clients))
    arm_rows = [line for line in table.getvalue().splitlines() if ".aarch64 " in line]
    assert len(arm_rows) == len(s.aws.regions)
    assert all(" arm64 " in line and " uefi " in line for line in arm_rows)
    assert leftovers(aws) == NOTHING_LEFT


def test_an_ipv6_ssh_cidr_is_admitted_as_an_ipv6_range(settings: Settings, aws: str) -> None:
    """EC2 takes an IPv6 block only in ``Ipv6Ranges`` (``IpRanges`` holds IPv4 ones)."""
    session = boto3.session.Session()
    rec = record(session)
    s = boot_settings(settings, ssh_cidr="2001:db8:1::/48")
    with pytest.raises(KeyboardInterrupt):  # reached once AWS took the rule and launched
        Ec2BootTester(s, Clients(s.aws, session=session), interrupted)(subject(aws))
    (ingress,) = rec.of("AuthorizeSecurityGroupIngress")
    (perm,) = ingress["IpPermissions"]
    assert perm["Ipv6Ranges"] == [{"CidrIpv6": "2001:db8:1::/48", "Description": "fedimg SSH"}]
    assert "IpRanges" not in perm


def test_the_boot_tester_refuses_an_empty_ssh_cidr(settings: Settings) -> None:
    s = boot_settings(settings, ssh_cidr="")
    with pytest.raises(ConfigError, match=r"^test\.ssh_cidr: "):
        Ec2BootTester(s, Clients(s.aws))


@pytest.mark.parametrize(
    ("reported", "boot_mode", "firmware"),
    [
        ("legacy-bios", "uefi-preferred", "bios"),  # what EC2 says the instance booted with
        ("uefi", "uefi-preferred", "uefi"),
        (None, "uefi", "uefi"),  # not reported: the AMI's boot mode leaves no choice
        (None, "legacy-bios", "bios"),
        (None, "uefi-preferred", ""),  # not reported and either could be: unknown
    ],
)
def test_the_verdict_names_the_firmware_the_instance_booted_with(
    settings: Settings, reported: str | None, boot_mode: str, firmware: str
) -> None:
    s = dataclasses.replace(
        settings, image=dataclasses.replace(settings.image, boot_mode={"x86_64": boot_mode})
    )
    instance = {"CurrentInstanceBootMode": reported} if reported else {}
    assert booted_firmware(instance, s, "x86_64") == firmware
