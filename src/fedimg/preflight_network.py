"""Preflight's check of the boot test's network in the base region.

The test instance is launched in the subnets ``test.subnet_ids`` names for the region, else in a
default subnet of the default VPC (aws/testnetwork.py), and fedimg SSHes to its public address.
Many organisations delete the default VPC; a subnet that does not map public IPs on launch gives
the instance none, so the boot test uses only subnets that do. ``test.ssh_address = "private"``
(fedimg inside the VPC) needs no public address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.config import Settings
from fedimg.preflight import BLOCKER, OK, UNCHECKED, WARNING, Row

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

CHECK = "boot test network"


def network_row(settings: Settings, ec2: EC2Client, region: str) -> Row:
    subnets = list(settings.test.subnets_in(region))
    public = settings.test.ssh_address != "private"
    try:
        if subnets:
            found = ec2.describe_subnets(SubnetIds=subnets)["Subnets"]
            where = f"configured subnets {', '.join(subnets)}"
        else:
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                return _no_default_vpc(settings, region)
            vpc = vpcs[0]["VpcId"]
            found = ec2.describe_subnets(
                Filters=[
                    {"Name": "vpc-id", "Values": [vpc]},
                    {"Name": "default-for-az", "Values": ["true"]},
                ]
            )["Subnets"]
            where = f"default VPC {vpc}"
    except (ClientError, BotoCoreError) as e:
        code = e.response.get("Error", {}).get("Code", "") if isinstance(e, ClientError) else ""
        if code.startswith("InvalidSubnetID"):
            fix = "fix test.subnet_ids"
            return Row(CHECK, region, BLOCKER, f"configured subnet not found: {code}", fix)
        return Row(CHECK, region, UNCHECKED, f"cannot read the network: {str(e)[:160]}")
    if not found:
        fix = f"aws ec2 create-default-subnet --region {region} --availability-zone AZ"
        return Row(CHECK, region, BLOCKER, f"{where} has no default subnets", fix)
    if not public:
        return Row(CHECK, region, OK, f"{where}; SSH to private addresses (fedimg in the VPC)")
    return _public_addresses(found, where, region)


def _no_default_vpc(settings: Settings, region: str) -> Row:
    fix = f"aws ec2 create-default-vpc --region {region}, or name a subnet in test.subnet_ids"
    return Row(CHECK, region, BLOCKER, "no default VPC, and no subnet configured", fix)


def _public_addresses(subnets: list[Any], where: str, region: str) -> Row:
    """Instances get a public address only in subnets that map one on launch."""
    private = sorted(s["SubnetId"] for s in subnets if not s.get("MapPublicIpOnLaunch"))
    fix = (
        "aws ec2 modify-subnet-attribute --map-public-ip-on-launch --subnet-id "
        f"{private[0] if private else 'ID'} --region {region} (each)"
    )
    if len(private) == len(subnets):
        detail = f"{where}: no subnet gives instances a public address ({', '.join(private)})"
        return Row(CHECK, region, BLOCKER, detail, fix)
    if private:
        detail = f"{where}: {', '.join(private)} give no public address; the test skips them"
        return Row(CHECK, region, WARNING, detail, fix)
    return Row(CHECK, region, OK, f"{where}: {len(subnets)} subnets map public addresses")
