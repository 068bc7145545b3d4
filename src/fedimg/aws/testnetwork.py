"""Where the boot test's instance runs, and the address fedimg reaches it at.

- ``test.subnet_ids`` names the region's subnets: those, in the order given. They must share one
  VPC, because the test's security group belongs to one VPC (CreateSecurityGroup's VpcId).
- Otherwise the default VPC's default subnets, one per availability zone, in zone order: where EC2
  itself launches when a request names no subnet (API_RunInstances.html, SubnetId). Many
  organisations delete the default VPC; such an account needs ``test.subnet_ids``.
- ``test.ssh_address = "public"`` uses only subnets that give instances a public address on
  launch (MapPublicIpOnLaunch, the subnet owner's statement that it is public; preflight checks
  the same). Asking for an address in any other subnet would give one that SSH may not reach (no
  route to an internet gateway), and the test would blame the image. ``"private"`` uses every
  subnet: fedimg runs inside the VPC (or reaches it by VPN or peering) and SSHes to the private
  address.

The first subnet is tried first; the next ones only when EC2 cannot launch the instance type in a
subnet's zone (``NEXT_SUBNET_CODES``), so that a zone without capacity or without that type does
not fail the test. Each subnet is one RunInstances request; botocore still retries each request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from fedimg.aws.clients import error_code
from fedimg.config import TestSettings
from fedimg.errors import ConfigError, TransientError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

# RunInstances answers meaning "not in this zone": no capacity for the type now, or the type is
# not offered in the zone ("Common client error codes": Unsupported).
NEXT_SUBNET_CODES = frozenset({"InsufficientInstanceCapacity", "Unsupported"})
PUBLIC, PRIVATE = "public", "private"


@dataclass(frozen=True)
class TestNetwork:
    """The VPC the test's security group is made in and the subnets to launch in, in order."""

    __test__ = False  # not a pytest class

    vpc_id: str
    subnet_ids: tuple[str, ...]


def find_network(test: TestSettings, ec2: EC2Client, region: str) -> TestNetwork:
    """The test network of ``region``; a ConfigError naming ``test.subnet_ids`` when there is
    none to use. Reads only: nothing is made before the network is known."""
    configured = test.subnets_in(region)
    if configured:
        subnets = _configured_subnets(ec2, region, configured)
        where = f"test.subnet_ids.{region}"
    else:
        subnets = _default_subnets(ec2, region)
        where = f"the default VPC of {region}"
    if test.ssh_address == PUBLIC:
        public = [s for s in subnets if s.get("MapPublicIpOnLaunch")]
        if not public:
            ids = ", ".join(s["SubnetId"] for s in subnets)
            raise ConfigError(
                f"test.subnet_ids: no subnet of {where} gives instances a public address "
                f"({ids}); name one that does in test.subnet_ids.{region}, or set "
                'test.ssh_address = "private" when fedimg runs inside the VPC'
            )
        subnets = public
    return TestNetwork(subnets[0]["VpcId"], tuple(s["SubnetId"] for s in subnets))


def _configured_subnets(ec2: EC2Client, region: str, ids: tuple[str, ...]) -> list[Any]:
    key = f"test.subnet_ids.{region}"
    try:
        found = ec2.describe_subnets(SubnetIds=list(ids))["Subnets"]
    except ClientError as e:
        if error_code(e).startswith("InvalidSubnetID"):
            message = e.response.get("Error", {}).get("Message", "")
            raise ConfigError(f"{key}: {error_code(e)}: {message}") from e
        raise
    by_id = {s["SubnetId"]: s for s in found}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ConfigError(f"{key}: no subnet {', '.join(missing)} in {region}")
    vpcs = sorted({by_id[i]["VpcId"] for i in ids})
    if len(vpcs) > 1:
        raise ConfigError(
            f"{key}: the subnets are in {len(vpcs)} VPCs ({', '.join(vpcs)}); the test's "
            "security group belongs to one VPC, so name subnets of one"
        )
    return [by_id[i] for i in ids]


def _default_subnets(ec2: EC2Client, region: str) -> list[Any]:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ConfigError(
            f"test.subnet_ids: {region} has no default VPC; name the subnet the boot test "
            f"launches in (test.subnet_ids.{region}), or create the default VPC "
            f"(aws ec2 create-default-vpc --region {region})"
        )
    vpc = vpcs[0]["VpcId"]
    found = ec2.describe_subnets(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc]},
            {"Name": "default-for-az", "Values": ["true"]},
        ]
    )["Subnets"]
    if not found:
        raise ConfigError(
            f"test.subnet_ids: the default VPC {vpc} of {region} has no default subnets; name "
            f"a subnet in test.subnet_ids.{region}, or create one (aws ec2 "
            f"create-default-subnet --region {region} --availability-zone ZONE)"
        )
    return sorted(found, key=lambda s: str(s.get("AvailabilityZone", "")))


def ssh_host(instance: dict[str, Any], ssh_address: str) -> str:
    """The instance's public or private address, as ``test.ssh_address`` says."""
    key = "PrivateIpAddress" if ssh_address == PRIVATE else "PublicIpAddress"
    host = instance.get(key)
    if not host:
        raise TransientError(f"instance {instance.get('InstanceId')} has no {ssh_address} address")
    return str(host)
