"""The EC2 boot test: launch the new AMI, SSH in, run the configured checks, clean up always.

Throwaway key pair (our own key, imported: the private half never crosses the API) and security
group (SSH from ``test.ssh_cidr`` only); an instance with IMDSv2 required; wait for running and
status checks; checks over SSH; console output kept on failure. The instance, key pair and
security group are removed in ``finally`` — on errors and Ctrl-C too — and all carry
``fedimg:role=test`` so ``fedimg gc`` finds anything a crash left.

**Runs of one AMI at the same time** (two consumers, an operator's re-run) each make their own
resources (named by a random run id) and must never remove another live run's. Every test
resource carries ``fedimg:test-until`` (unix seconds): its run's start plus the longest the run can
live (``run_lifetime_s``: every wait's configured deadline and a margin for AWS requests and
clock skew), written in the same request that creates it. Before a test, the resources of earlier
tests of the AMI whose ``test-until`` has passed are removed: their run is dead. A live run's are
left alone, with no lease to renew: each run bounds its own life by its configured deadlines.

Outcomes: PASSED; FAILED when the image is at fault (instance impaired, no SSH, a check failed);
NEEDS_INSPECTION when the infrastructure failed (AWS errors, deadlines before the instance ran).
"""

from __future__ import annotations

import ipaddress
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paramiko
from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, translate
from fedimg.aws.wait import wait_until
from fedimg.config import Settings, TestSettings
from fedimg.errors import AwsError, ConfigError, FedimgError, TransientError
from fedimg.identity import TAG_ROLE, TAG_TEST_RUN, TAG_TESTED_AMI, tag_list, tags_of
from fedimg.pipeline import FAILED, NEEDS_INSPECTION, PASSED, TestSubject, TestVerdict

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import IpPermissionTypeDef

log = logging.getLogger(__name__)

CONSOLE_TAIL = 4000  # characters of console output kept with a failure
# A configured ``test.instance_types`` table replaces the default one: an arch it leaves out
# still gets an instance type of its own architecture (an arm64 AMI cannot launch on t3).
DEFAULT_INSTANCE_TYPES = TestSettings().instance_types
TAG_TEST_UNTIL = "fedimg:test-until"
# What a test run spends besides its configured waits: AWS requests with their retries, finding
# the SSH target, and the clock difference between two hosts running fedimg.
LIFETIME_MARGIN_S = 600


def run_lifetime_s(t: TestSettings) -> int:
    """The longest one boot test lives: waits for running, status checks and termination (each
    up to ``boot_seconds``), for SSH, for each check, and the margin."""
    return 3 * t.boot_seconds + t.ssh_seconds + len(t.checks) * t.check_seconds + LIFETIME_MARGIN_S


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    pkey: paramiko.PKey


# Where to SSH to for an instance. Production: its public address and our key. Tests (moto cannot
# boot instances): a local QEMU guest running the same image.
TargetResolver = Callable[[dict[str, Any], paramiko.PKey], SshTarget]


def public_address(instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
    host = instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")
    if not host:
        raise TransientError(f"instance {instance['InstanceId']} has no address")
    return SshTarget(str(host), 22, pkey)


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
        self, settings: Settings, clients: Clients, resolve: TargetResolver = public_address
    ) -> None:
        if not settings.test.ssh_cidr:
            raise ConfigError("test.ssh_cidr: required by the EC2 boot test (the address of SSH)")
        self.settings = settings
        self.clients = clients
        self.resolve = resolve

    def __call__(self, subject: TestSubject) -> TestVerdict:
        from fedimg.boot.ssh import throwaway_key

        ec2 = self.clients.ec2(subject.region)
        clean_up_earlier_tests(ec2, subject.ami, self.settings.test.boot_seconds)
        run = _TestRun(self.settings, ec2, subject, uuid.uuid4().hex[:12])
        pkey, public = throwaway_key()
        firmware = ""
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


def clean_up_earlier_tests(
    ec2: EC2Client, ami: str, deadline_s: float, now: float | None = None
) -> None:
    """Removes what earlier tests of this AMI left when their process was killed.

    Only resources past their ``fedimg:test-until`` (or made before that tag existed) are
    removed: another run testing the AMI right now keeps its instance, group and key pair.
    """
    now = time.time() if now is None else now
    mine: list[Any] = [
        {"Name": f"tag:{TAG_ROLE}", "Values": ["test"]},
        {"Name": f"tag:{TAG_TESTED_AMI}", "Values": [ami]},
    ]
    try:
        reservations = ec2.describe_instances(Filters=mine)["Reservations"]
        dead = [
            i["InstanceId"]
            for r in reservations
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated" and _expired(i, now)
        ]
        if dead:
            log.info("%s: terminating test instances of a killed run: %s", ami, dead)
            ec2.terminate_instances(InstanceIds=dead)
            for instance_id in dead:
                wait_until(
                    f"termination of {instance_id}",
                    lambda i=instance_id: _instance_state(ec2, i),  # type: ignore[misc]
                    done="terminated",
                    failed=(),
                    deadline_s=deadline_s,
                    good_reads=1,
                )
        for g in ec2.describe_security_groups(Filters=mine)["SecurityGroups"]:
            if _expired(g, now):
                ec2.delete_security_group(GroupId=g["GroupId"])
        for k in ec2.describe_key_pairs(Filters=mine)["KeyPairs"]:
            if _expired(k, now):
                ec2.delete_key_pair(KeyName=k["KeyName"])
    except (ClientError, BotoCoreError) as e:
        log.warning("%s: could not remove an earlier test's resources (fedimg gc will): %s", ami, e)


def _expired(resource: Any, now: float) -> bool:
    """Whether the run that made ``resource`` is past its life; one without a readable
    ``fedimg:test-until`` was made by a fedimg from before concurrent runs, and is dead."""
    try:
        return float(tags_of(resource)[TAG_TEST_UNTIL]) < now
    except (KeyError, ValueError):
        return True


def _instance_state(ec2: EC2Client, instance_id: str) -> str:
    r = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(r[0]["Instances"][0]["State"]["Name"]) if r and r[0]["Instances"] else "terminated"


class _TestRun:
    """The throwaway resources of one test, and their removal."""

    def __init__(self, settings: Settings, ec2: EC2Client, subject: TestSubject, run_id: str):
        self.settings, self.ec2, self.subject, self.run_id = settings, ec2, subject, run_id
        self.name = f"fedimg-test-{run_id}"
        self.key_name = ""
        self.group_id = ""
        self.instance_id = ""
        self.tags = tag_list(
            subject.identity.tags(settings.image.tags)
            | {
                TAG_ROLE: "test",
                TAG_TEST_RUN: run_id,
                TAG_TESTED_AMI: subject.ami,
                TAG_TEST_UNTIL: str(int(time.time()) + run_lifetime_s(settings.test)),
            }
        )

    def _spec(self, kind: str) -> list[Any]:
        return [{"ResourceType": kind, "Tags": self.tags}]

    def launch(self, public_key: str) -> dict[str, Any]:
        t = self.settings.test
        self.ec2.import_key_pair(
            KeyName=self.name,
            PublicKeyMaterial=public_key.encode(),
            TagSpecifications=self._spec("key-pair"),
        )
        self.key_name = self.name
        self.group_id = self.ec2.create_security_group(
            GroupName=self.name,
            Description="fedimg boot test: SSH only",
            TagSpecifications=self._spec("security-group"),
        )["GroupId"]
        self.ec2.authorize_security_group_ingress(
            GroupId=self.group_id,
            IpPermissions=[ssh_permission(t.ssh_cidr)],
        )
        self.instance_id = self.ec2.run_instances(
            ImageId=self.subject.ami,
            InstanceType=instance_type(self.settings, self.subject.identity.arch),  # type: ignore[arg-type]
            KeyName=self.key_name,
            SecurityGroupIds=[self.group_id],
            MinCount=1,
            MaxCount=1,
            ClientToken=self.name,
            MetadataOptions=metadata_options(self.settings),  # type: ignore[arg-type]
            TagSpecifications=self._spec("instance") + self._spec("volume"),
        )["Instances"][0]["InstanceId"]
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
        """Instance, then security group (it is in use until the instance is gone), then key."""
        if self.instance_id:
            self._quietly("terminate", lambda: self._terminate())
        if self.group_id:
            self._quietly(
                "delete security group",
                lambda: self.ec2.delete_security_group(GroupId=self.group_id),
            )
        if self.key_name:
            self._quietly(
                "delete key pair", lambda: self.ec2.delete_key_pair(KeyName=self.key_name)
            )

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
