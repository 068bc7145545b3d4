"""The boot test in the networks real accounts have: configured subnets (a VPC and subnet made
through the API here), an account without a default VPC, SSH to the public or the private address.

EC2 calls go to the stand-in; SSH goes to the module's one QEMU guest of the sample image, through
a resolver that first asks the production resolver which address it would use."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import paramiko
import pytest

from fedimg.aws.boottest import Ec2BootTester, SshTarget, address_resolver
from fedimg.aws.clients import Clients
from fedimg.aws.testnetwork import find_network
from fedimg.boot.qemu import Guest, running_guest
from fedimg.boot.sample import sample_image
from fedimg.config import Settings, from_dict
from fedimg.errors import ConfigError
from fedimg.pipeline import NEEDS_INSPECTION, PASSED, TestSubject, TestVerdict
from tests.aws.test_boottest import IDENTITY, NOTHING_LEFT, boot_settings, interrupted, leftovers
from tests.helpers import Recorder, ec2, record

REGION = "us-east-1"


@pytest.fixture(scope="module")
def guest(build_dir: Path) -> Iterator[Guest]:
    with running_guest(sample_image(build_dir), "bios", "root") as g:
        yield g


def new_subnet(url: str, vpc: str = "", public: bool = False, zone: str = "b") -> tuple[str, str]:
    """A subnet (in a new VPC unless ``vpc`` is given), as an organisation's network has them;
    returns (VPC id, subnet id)."""
    c = ec2(url)
    if not vpc:
        vpc = c.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    taken = len(c.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"])
    subnet = c.create_subnet(
        VpcId=vpc, CidrBlock=f"10.20.{taken + 1}.0/24", AvailabilityZone=f"{REGION}{zone}"
    )["Subnet"]["SubnetId"]
    if public:
        c.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    return vpc, subnet


def subject(url: str) -> TestSubject:
    """A new AMI to test (a name of its own: a test may test twice)."""
    name = f"under-test-{uuid.uuid4().hex[:8]}"
    ami = ec2(url).register_image(Name=name, RootDeviceName="/dev/sda1", Architecture="x86_64")
    return TestSubject(IDENTITY, ami["ImageId"], REGION)


def network_settings(settings: Settings, subnets: Any = (), **test: Any) -> Settings:
    s = boot_settings(settings, **test)
    given = {REGION: subnets} if subnets else {}
    return dataclasses.replace(s, test=dataclasses.replace(s.test, subnet_ids=given))


class Routed:
    """Asks the production resolver (``test.ssh_address``) for the target, keeps its host, and
    routes the connection to the guest."""

    def __init__(self, settings: Settings, guest: Guest) -> None:
        self.production = address_resolver(settings.test.ssh_address)
        self.guest = guest
        self.hosts: list[str] = []
        self.instances: list[dict[str, Any]] = []

    def __call__(self, instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
        self.hosts.append(self.production(instance, pkey).host)
        self.instances.append(instance)
        return SshTarget(self.guest.host, self.guest.port, self.guest.pkey)


def run(settings: Settings, resolve: Any, url: str) -> tuple[TestVerdict, Recorder]:
    session = boto3.session.Session()
    rec = record(session)
    tester = Ec2BootTester(settings, Clients(settings.aws, session=session), resolve)
    return tester(subject(url)), rec


def launched(settings: Settings, url: str) -> Recorder:
    """The calls of a boot test stopped once its instance runs (no SSH)."""
    session = boto3.session.Session()
    rec = record(session)
    with pytest.raises(KeyboardInterrupt):
        Ec2BootTester(settings, Clients(settings.aws, session=session), interrupted)(subject(url))
    return rec


def group_vpc(rec: Recorder) -> str:
    (created,) = rec.of("CreateSecurityGroup")
    return str(created["VpcId"])


def test_a_boot_test_in_a_configured_subnet_passes_with_its_group_in_that_vpc(
    settings: Settings, guest: Guest, aws: str
) -> None:
    vpc, subnet = new_subnet(aws, public=True)
    s = network_settings(settings, subnet)
    routed = Routed(s, guest)
    verdict, rec = run(s, routed, aws)
    assert verdict.outcome == PASSED, verdict.reason
    assert group_vpc(rec) == vpc
    (launch,) = rec.of("RunInstances")
    assert launch["SubnetId"] == subnet
    (instance,) = routed.instances
    assert (instance["SubnetId"], instance["VpcId"]) == (subnet, vpc)
    assert routed.hosts == [instance["PublicIpAddress"]]
    assert leftovers(aws) == NOTHING_LEFT


def test_private_address_mode_sshes_to_the_private_address(
    settings: Settings, guest: Guest, aws: str
) -> None:
    """A subnet that gives no public address is fine when fedimg runs inside the VPC."""
    vpc, subnet = new_subnet(aws, public=False)
    s = network_settings(settings, [subnet], ssh_address="private")
    routed = Routed(s, guest)
    verdict, rec = run(s, routed, aws)
    assert verdict.outcome == PASSED, verdict.reason
    assert group_vpc(rec) == vpc
    (instance,) = routed.instances
    assert "PublicIpAddress" not in instance
    assert routed.hosts == [instance["PrivateIpAddress"]]
    assert routed.hosts[0].startswith("10.20.1.")
    assert leftovers(aws) == NOTHING_LEFT


def test_without_configured_subnets_the_default_vpcs_first_zone_is_used(
    settings: Settings, aws: str
) -> None:
    c = ec2(aws)
    (default,) = c.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    subnets = c.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [default["VpcId"]]}])
    first = min(subnets["Subnets"], key=lambda s: s["AvailabilityZone"])["SubnetId"]
    rec = launched(network_settings(settings), aws)
    assert group_vpc(rec) == default["VpcId"]
    assert [r["SubnetId"] for r in rec.of("RunInstances")] == [first]
    assert leftovers(aws) == NOTHING_LEFT


def test_no_default_vpc_and_no_subnet_configured_is_a_clear_error_leaving_nothing(
    settings: Settings, aws: str
) -> None:
    c = ec2(aws)
    (default,) = c.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    found = c.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [default["VpcId"]]}])
    for subnet in found["Subnets"]:
        c.delete_subnet(SubnetId=subnet["SubnetId"])
    c.delete_vpc(VpcId=default["VpcId"])  # as organisations do
    verdict, rec = run(network_settings(settings), interrupted, aws)
    assert verdict.outcome == NEEDS_INSPECTION
    assert verdict.reason.startswith(f"test.subnet_ids: {REGION} has no default VPC; ")
    assert f"test.subnet_ids.{REGION}" in verdict.reason
    made = {"ImportKeyPair", "CreateSecurityGroup", "RunInstances"}
    assert [op for _, op, _ in rec.calls if op in made] == []
    assert leftovers(aws) == NOTHING_LEFT


def test_public_mode_launches_only_in_subnets_that_give_public_addresses(
    settings: Settings, aws: str
) -> None:
    vpc, private = new_subnet(aws, public=False)
    _, public = new_subnet(aws, vpc, public=True, zone="c")
    rec = launched(network_settings(settings, [private, public]), aws)
    assert [r["SubnetId"] for r in rec.of("RunInstances")] == [public]
    verdict, rec = run(network_settings(settings, [private]), interrupted, aws)
    assert verdict.outcome == NEEDS_INSPECTION
    assert private in verdict.reason and 'test.ssh_address = "private"' in verdict.reason
    assert rec.of("ImportKeyPair") == []
    assert leftovers(aws) == NOTHING_LEFT


def test_a_zone_that_cannot_launch_the_type_moves_the_launch_to_the_next_subnet(
    settings: Settings, aws: str
) -> None:
    from botocore.exceptions import ClientError

    vpc, first = new_subnet(aws, public=True)
    _, second = new_subnet(aws, vpc, public=True, zone="c")
    s = network_settings(settings, [first, second])
    session = boto3.session.Session()
    tried: list[str] = []

    def no_capacity_in_first(params: dict[str, Any], **_: Any) -> None:
        tried.append(params["SubnetId"])
        if params["SubnetId"] == first:
            raise ClientError(
                {"Error": {"Code": "InsufficientInstanceCapacity", "Message": "none"}},
                "RunInstances",
            )

    session.events.register("provide-client-params.ec2.RunInstances", no_capacity_in_first)
    with pytest.raises(KeyboardInterrupt):  # reached once the instance runs
        Ec2BootTester(s, Clients(s.aws, session=session), interrupted)(subject(aws))
    assert tried == [first, second]
    assert leftovers(aws) == NOTHING_LEFT


def test_configured_subnets_must_exist_and_share_one_vpc(settings: Settings, aws: str) -> None:
    _, one = new_subnet(aws, public=True)
    _, other = new_subnet(aws, public=True)  # another new VPC
    c = ec2(aws)
    with pytest.raises(ConfigError, match=rf"^test\.subnet_ids\.{REGION}: the subnets are in 2"):
        find_network(network_settings(settings, [one, other]).test, c, REGION)
    with pytest.raises(ConfigError, match=rf"^test\.subnet_ids\.{REGION}: InvalidSubnetID"):
        find_network(network_settings(settings, "subnet-0000000000000000f").test, c, REGION)


def test_the_network_keys_are_read_from_the_configuration() -> None:
    one, two = "subnet-0123456789abcdef0", "subnet-89abcdef"
    s = from_dict(
        {
            "aws": {"regions": ["us-east-1", "eu-west-1"]},
            "test": {"subnet_ids": {"us-east-1": one, "eu-west-1": [one, two]}},
        }
    )
    assert (s.test.subnets_in("us-east-1"), s.test.subnets_in("eu-west-1")) == ((one,), (one, two))
    assert s.test.subnets_in("us-west-2") == () and s.test.ssh_address == "public"
    bad = {
        "test.subnet_ids.us-east-1: must be a string or a list": {"us-east-1": 7},
        "test.subnet_ids.us-east-1: names no subnet": {"us-east-1": []},
        "test.subnet_ids.us-east-1: 'vpc-1' is not a subnet id": {"us-east-1": ["vpc-1"]},
        "test.subnet_ids.ap-east-1: not a region in aws": {"ap-east-1": one},
    }
    for message, subnet_ids in bad.items():
        with pytest.raises(ConfigError, match=f"^{message}"):
            from_dict({"test": {"subnet_ids": subnet_ids}})
    with pytest.raises(ConfigError, match=r"^test\.ssh_address: must be one of public, private"):
        from_dict({"test": {"ssh_address": "ipv6"}})
