"""The EC2 boot test: launch the new AMI, SSH in, run the configured checks, clean up always.

Throwaway key pair (our own key, imported: the private half never crosses the API) and security
group (SSH from ``test.ssh_cidr`` only) in the test network's VPC; an instance with IMDSv2
required in one of its subnets (testnetwork.py: ``test.subnet_ids``, else the default VPC); wait
for running and status checks; checks over SSH to the public or private address
(``test.ssh_address``); console output kept on failure. The instance, key pair and
security group are removed in ``finally`` — on errors and Ctrl-C too — and all carry
``fedimg:role=test`` so ``fedimg gc`` finds anything a crash left.

Runs testing one AMI at the same time each make their own resources, under a lease they renew
while they live; before its test a run removes only the earlier runs' resources whose lease was
not renewed: their run is dead (testlease.py).

Outcomes: PASSED; FAILED when the image is at fault (instance impaired, no SSH, a check failed);
NEEDS_INSPECTION when the infrastructure failed (AWS errors, deadlines before the instance ran).
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paramiko
from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.testlease import RunLease, clean_up_earlier_tests, lease_tag
from fedimg.aws.testnetwork import NEXT_SUBNET_CODES, TestNetwork, find_network, ssh_host
from fedimg.aws.wait import wait_until
from fedimg.config import Settings, TestSettings
from fedimg.errors import AwsError, ConfigError, FedimgError, TransientError
from fedimg.identity import TAG_ROLE, TAG_TEST_RUN, TAG_TESTED_AMI, tag_list
from fedimg.pipeline import FAILED, NEEDS_INSPECTION, PASSED, TestSubject, TestVerdict

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import IpPermissionTypeDef

log = logging.getLogger(__name__)

CONSOLE_TAIL = 4000  # characters of console output kept with a failure
# A configured ``test.instance_types`` table replaces the default one: an arch it leaves out
# still gets an instance type of its own architecture (an arm64 AMI cannot launch on t3).
DEFAULT_INSTANCE_TYPES = TestSettings().instance_types


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    pkey: paramiko.PKey


# Where to SSH to for an instance. Production: its address (``test.ssh_address``) and our key.
# Tests (moto cannot boot instances): a local QEMU guest running the same image.
TargetResolver = Callable[[dict[str, Any], paramiko.PKey], SshTarget]


def address_resolver(ssh_address: str) -> TargetResolver:
    """SSH to the instance's public or private address, port 22, with our key."""

    def resolve(instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
        return SshTarget(ssh_host(instance, ssh_address), 22, pkey)

    return resolve


def instance_type(settings: Settings, arch: str) -> str:
    """The test instance's type for an image of ``arch`` (fedimg's name: x86_64, aarch64)."""
    return settings.test.instance_types.get(arch) or DEFAULT_INSTANCE_TYPES[arch]


def booted_firmware(instance: dict[str, Any], settings: Settings, arch: str) -> str:
    """``bios`` or ``uefi``: how the test instance booted, as EC2 reports it
    (``CurrentInstanceBootMode``), else as the AMI's boot mode leaves no choice; "" when neither
    says (``uefi-preferred`` on an instance that does not report its boot mode)."""
    mode = instance.get("CurrentInstanceBootMode") or settings.image.boot_mode.get(arch, "uefi")
    return {"legacy-bios": "bios", "uefi": "uefi"}.get(str(mode), "")


def metadata_options(settings: Settings) -> dict[str, Any]:
    """The test instance's metadata service as the AMI's users get it: an AMI registered with
    ImdsSupport v2.0 launches with tokens required and a hop limit of 2 (RegisterImage docs)."""
    if settings.image.imds_v2:
        return {"HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 2}
    return {"HttpEndpoint": "enabled", "HttpTokens": "optional"}


def ssh_permission(cidr: str) -> IpPermissionTypeDef:
    """Ingress on port 22 from ``cidr``; EC2 takes IPv6 blocks only in ``Ipv6Ranges``."""
    what = "fedimg SSH"
    permission: IpPermissionTypeDef = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}
    if ipaddress.ip_network(cidr, strict=False).version == 6:
        permission["Ipv6Ranges"] = [{"CidrIpv6": cidr, "Description": what}]
    else:
        permission["IpRanges"] = [{"CidrIp": cidr, "Description": what}]
    return permission


class _ImageFault(FedimgError):
    """The image, not the infrastructure, failed the test."""


class Ec2BootTester:
    def __init__(
        self, settings: Settings, clients: Clients, resolve: TargetResolver | None = None
    ) -> None:
        if not settings.test.ssh_cidr:
            raise ConfigError("test.ssh_cidr: required by the EC2 boot test (the address of SSH)")
        self.settings = settings
        self.clients = clients
        self.resolve = resolve or address_resolver(settings.test.ssh_address)

    def __call__(self, subject: TestSubject) -> TestVerdict:
        from fedimg.boot.ssh import throwaway_key

        ec2 = self.clients.ec2(subject.region)
        clean_up_earlier_tests(ec2, subject.ami, self.settings.test.boot_seconds)
        run = _TestRun(self.settings, ec2, subject, uuid.uuid4().hex[:12])
        pkey, public = throwaway_key()
        firmware = ""
        with run.lease.renewed():
            try:
                instance = run.launch(public)
                firmware = booted_firmware(instance, self.settings, subject.identity.arch)
                target = self.resolve(instance, pkey)
                checks = run.check(target)
            except _ImageFault as e:
                return TestVerdict(FAILED, reason=f"{e}{run.console()}", firmware=firmware)
            except (ClientError, BotoCoreError) as e:
                return TestVerdict(NEEDS_INSPECTION, reason=str(translate(e, "EC2 boot test")))
            except FedimgError as e:
                return TestVerdict(NEEDS_INSPECTION, reason=str(e))
            finally:
                run.clean_up()
        failed = [c for c in checks if c["outcome"] != PASSED]
        if failed:
            names = ", ".join(c["name"] for c in failed)
            reason = f"checks failed: {names}{run.console()}"
            return TestVerdict(FAILED, tuple(checks), reason, firmware)
        return TestVerdict(PASSED, tuple(checks), firmware=firmware)


class _TestRun:
    """The throwaway resources of one test, and their removal."""

    def __init__(self, settings: Settings, ec2: EC2Client, subject: TestSubject, run_id: str):
        self.settings, self.ec2, self.subject, self.run_id = settings, ec2, subject, run_id
        self.name = f"fedimg-test-{run_id}"
        self.key_name = ""
        self.key_pair_id = ""
        self.group_id = ""
        self.instance_id = ""
        self.lease = RunLease(ec2)
        self.tags = tag_list(
            subject.identity.tags(settings.image.tags)
            | {
                TAG_ROLE: "test",
                TAG_TEST_RUN: run_id,
                TAG_TESTED_AMI: subject.ami,
            }
            | lease_tag()
        )

    def _spec(self, kind: str) -> list[Any]:
        return [{"ResourceType": kind, "Tags": self.tags}]

    def launch(self, public_key: str) -> dict[str, Any]:
        t = self.settings.test
        network = find_network(t, self.ec2, self.subject.region)  # before anything is made
        self.key_pair_id = self.ec2.import_key_pair(
            KeyName=self.name,
            PublicKeyMaterial=public_key.encode(),
            TagSpecifications=self._spec("key-pair"),
        )["KeyPairId"]
        self.key_name = self.name
        self.lease.add(self.key_pair_id)
        self.group_id = self.ec2.create_security_group(
            GroupName=self.name,
            Description="fedimg boot test: SSH only",
            VpcId=network.vpc_id,
            TagSpecifications=self._spec("security-group"),
        )["GroupId"]
        self.lease.add(self.group_id)
        self.ec2.authorize_security_group_ingress(
            GroupId=self.group_id,
            IpPermissions=[ssh_permission(t.ssh_cidr)],
        )
        self.instance_id = self._run_instance(network)
        self.lease.add(self.instance_id)
        log.info("%s: test instance %s", self.subject.ami, self.instance_id)
        wait_until(
            f"test instance {self.instance_id}",
            lambda: self._describe().get("State", {}).get("Name", ""),
            done="running",
            failed=("terminated", "shutting-down", "stopped"),
            deadline_s=t.boot_seconds,
        )
        self._wait_status_checks(t.boot_seconds)
        return self._describe()

    def _run_instance(self, network: TestNetwork) -> str:
        """The instance, in the first subnet whose zone can launch its type."""
        *others, last = network.subnet_ids
        for subnet in others:
            try:
                return self._run_instance_in(subnet)
            except ClientError as e:
                if error_code(e) not in NEXT_SUBNET_CODES:
                    raise
                log.info("%s: %s in %s, trying the next subnet", self.name, error_code(e), subnet)
        return self._run_instance_in(last)

    def _run_instance_in(self, subnet: str) -> str:
        return self.ec2.run_instances(
            ImageId=self.subject.ami,
            InstanceType=instance_type(self.settings, self.subject.identity.arch),  # type: ignore[arg-type]
            KeyName=self.key_name,
            SubnetId=subnet,
            SecurityGroupIds=[self.group_id],
            MinCount=1,
            MaxCount=1,
            ClientToken=f"{self.name}-{subnet}",  # one launch per subnet, each idempotent
            MetadataOptions=metadata_options(self.settings),  # type: ignore[arg-type]
            TagSpecifications=self._spec("instance") + self._spec("volume"),
        )["Instances"][0]["InstanceId"]

    def _describe(self) -> dict[str, Any]:
        r = self.ec2.describe_instances(InstanceIds=[self.instance_id])["Reservations"]
        return dict(r[0]["Instances"][0]) if r and r[0]["Instances"] else {}

    def _wait_status_checks(self, deadline_s: float) -> None:
        def state() -> str:
            statuses = self.ec2.describe_instance_status(
                InstanceIds=[self.instance_id], IncludeAllInstances=True
            )["InstanceStatuses"]
            if not statuses:
                return "initializing"
            s = statuses[0]
            states = {s["InstanceStatus"]["Status"], s["SystemStatus"]["Status"]}
            if "impaired" in states:
                return "impaired"
            return "ok" if states == {"ok"} else "initializing"

        try:
            wait_until(
                f"status checks of {self.instance_id}",
                state,
                done="ok",
                failed=("impaired",),
                deadline_s=deadline_s,
            )
        except AwsError as e:
            raise _ImageFault(f"instance {self.instance_id} failed its status checks") from e

    def check(self, target: SshTarget) -> list[dict[str, str]]:
        from fedimg.boot.ssh import run_checks, wait_for_ssh

        t = self.settings.test
        try:
            client = wait_for_ssh(target.host, target.port, t.ssh_user, target.pkey, t.ssh_seconds)
        except TransientError as e:
            raise _ImageFault(f"no SSH on {self.instance_id}: {e}") from e
        try:
            results = run_checks(client, t.checks, t.check_seconds)
        finally:
            client.close()
        return [{"name": r.name, "outcome": r.outcome, "output": r.output} for r in results]

    def console(self) -> str:
        """The end of the console output, for a failure's reason."""
        if not self.instance_id:
            return ""
        try:
            out = self.ec2.get_console_output(InstanceId=self.instance_id, Latest=True)
        except (ClientError, BotoCoreError) as e:
            return f"\n(console output unavailable: {e})"
        text = str(out.get("Output", ""))
        return (
            f"\n--- console output of {self.instance_id} ---\n{text[-CONSOLE_TAIL:]}"
            if text
            else ""
        )

    def clean_up(self) -> None:
        """Instance, then security group (it is in use until the instance is gone), then key;
        each leaves the lease once gone, the others stay leased until then."""
        if self.instance_id:
            self._quietly("terminate", lambda: self._terminate())
            self.lease.drop(self.instance_id)
        if self.group_id:
            self._quietly(
                "delete security group",
                lambda: self.ec2.delete_security_group(GroupId=self.group_id),
            )
            self.lease.drop(self.group_id)
        if self.key_name:
            self._quietly(
                "delete key pair", lambda: self.ec2.delete_key_pair(KeyName=self.key_name)
            )
            self.lease.drop(self.key_pair_id)

    def _terminate(self) -> None:
        self.ec2.terminate_instances(InstanceIds=[self.instance_id])
        wait_until(
            f"termination of {self.instance_id}",
            lambda: self._describe().get("State", {}).get("Name", "terminated"),
            done="terminated",
            failed=(),
            deadline_s=self.settings.test.boot_seconds,
            good_reads=1,
        )

    def _quietly(self, what: str, action: Callable[[], Any]) -> None:
        """A clean-up failure is logged, never raised over the test's own outcome."""
        try:
            action()
        except Exception as e:
            log.warning("boot test %s: could not %s (fedimg gc will): %s", self.run_id, what, e)
