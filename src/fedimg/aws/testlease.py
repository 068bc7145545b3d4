"""Leases on the boot test's throwaway resources: runs testing one AMI at the same time (two
consumers, an operator's re-run) never remove each other's live test, and a killed run's
instance, security group and key pair are removed by the next test of the AMI.

Each test resource is created with ``fedimg:lease-until`` (unix seconds, the key snapshot leases
use) and its run renews that on all of them every ``LEASE_SECONDS / 4`` for as long as it lives.
Before its own test, a run looks at the earlier runs' resources of the AMI (grouped by
``fedimg:test-run``):

- a lease that has run out, or none (made before leases): the run is dead;
- a lease still running: it waits until that lease should have been renewed (at most
  ``LEASE_SECONDS``) and looks again. Renewed: the run is alive and keeps everything. Not
  renewed: its process died (killed, host gone) and its resources are removed.

Liveness is judged by renewal seen from one host, so hosts' clocks need not agree; the price is
that a test of an AMI another run is testing starts up to ``LEASE_SECONDS`` later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.snapshot import TAG_LEASE_UNTIL
from fedimg.aws.wait import wait_until
from fedimg.identity import TAG_ROLE, TAG_TEST_RUN, TAG_TESTED_AMI, tags_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

# Renewed four times per lease: a missed renewal or two does not make a live run look dead.
LEASE_SECONDS = 30.0
INSTANCE, GROUP, KEY_PAIR = "instance", "security group", "key pair"


def lease_tag() -> dict[str, str]:
    return {TAG_LEASE_UNTIL: f"{time.time() + LEASE_SECONDS:.0f}"}


class RunLease:
    """One run's lease on the resources it has made so far, renewed while ``renewed()`` lasts."""

    def __init__(self, ec2: EC2Client) -> None:
        self.ec2 = ec2
        self._ids: list[str] = []
        self._lock = threading.Lock()

    def add(self, resource_id: str) -> None:
        with self._lock:
            self._ids.append(resource_id)

    def drop(self, resource_id: str) -> None:
        """Stops renewing a resource that is gone (CreateTags fails for a deleted id)."""
        with self._lock:
            if resource_id in self._ids:
                self._ids.remove(resource_id)

    @contextmanager
    def renewed(self) -> Iterator[None]:
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(stop,), name="test-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(LEASE_SECONDS / 4):
            with self._lock:
                ids = list(self._ids)
            if not ids:
                continue
            tags: Any = [{"Key": k, "Value": v} for k, v in lease_tag().items()]
            try:
                self.ec2.create_tags(Resources=ids, Tags=tags)
            except (ClientError, BotoCoreError) as e:
                log.warning("could not renew the boot test's lease on %s: %s", ids, e)


@dataclass(frozen=True)
class _Leftover:
    kind: str
    resource_id: str  # instance id, group id, key name
    run: str
    until: float  # 0 when there is no readable lease


def clean_up_earlier_tests(ec2: EC2Client, ami: str, deadline_s: float) -> None:
    """Removes what earlier tests of ``ami`` left when their run died (see the module's doc);
    a live run's resources stay. Failures are logged: ``fedimg gc`` finds what is left."""
    try:
        dead = _of_dead_runs(ec2, ami)
        instances = [d.resource_id for d in dead if d.kind == INSTANCE]
        if instances:
            log.info("%s: terminating test instances of a dead run: %s", ami, instances)
            ec2.terminate_instances(InstanceIds=instances)
            for instance_id in instances:
                wait_until(
                    f"termination of {instance_id}",
                    lambda i=instance_id: instance_state(ec2, i),  # type: ignore[misc]
                    done="terminated",
                    failed=(),
                    deadline_s=deadline_s,
                    good_reads=1,
                )
        for d in dead:
            if d.kind == GROUP:
                ec2.delete_security_group(GroupId=d.resource_id)
            elif d.kind == KEY_PAIR:
                ec2.delete_key_pair(KeyName=d.resource_id)
    except (ClientError, BotoCoreError) as e:
        log.warning("%s: could not remove an earlier test's resources (fedimg gc will): %s", ami, e)


def instance_state(ec2: EC2Client, instance_id: str) -> str:
    r = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(r[0]["Instances"][0]["State"]["Name"]) if r and r[0]["Instances"] else "terminated"


def _of_dead_runs(ec2: EC2Client, ami: str) -> list[_Leftover]:
    first = _leftovers(ec2, ami)
    now = time.time()
    held = {run: until for run, until in _leases(first).items() if until > now}
    if not held:
        return first
    time.sleep(min(max(held.values()) - now, LEASE_SECONDS) + 1)
    latest = _leftovers(ec2, ami)
    leases, now = _leases(latest), time.time()

    def alive(run: str) -> bool:
        if run in held:
            return leases[run] > held[run]  # renewed while we watched
        return leases[run] > now  # a run that started meanwhile, or was dead already

    return [d for d in latest if not alive(d.run)]


def _leases(leftovers: list[_Leftover]) -> dict[str, float]:
    """Each run's lease: the latest on any of its resources."""
    leases: dict[str, float] = {}
    for d in leftovers:
        leases[d.run] = max(leases.get(d.run, 0.0), d.until)
    return leases


def _leftovers(ec2: EC2Client, ami: str) -> list[_Leftover]:
    mine: Any = [
        {"Name": f"tag:{TAG_ROLE}", "Values": ["test"]},
        {"Name": f"tag:{TAG_TESTED_AMI}", "Values": [ami]},
    ]
    found = [
        _leftover(INSTANCE, i["InstanceId"], i)
        for r in ec2.describe_instances(Filters=mine)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    found += [
        _leftover(GROUP, g["GroupId"], g)
        for g in ec2.describe_security_groups(Filters=mine)["SecurityGroups"]
    ]
    found += [
        _leftover(KEY_PAIR, k["KeyName"], k)
        for k in ec2.describe_key_pairs(Filters=mine)["KeyPairs"]
    ]
    return found


def _leftover(kind: str, resource_id: str, resource: Any) -> _Leftover:
    tags = tags_of(resource)
    try:
        until = float(tags.get(TAG_LEASE_UNTIL, 0))
    except ValueError:
        until = 0.0
    # A resource without a run id is a run of its own.
    return _Leftover(kind, resource_id, tags.get(TAG_TEST_RUN) or resource_id, until)
