"""``fedimg gc``: find, and on request remove, what crashed runs of fedimg left behind.

Only resources tagged ``fedimg:managed=true`` are ever considered, and never AMIs (they are the
product). An orphan is:

- a snapshot still tagged ``fedimg:state=uploading`` after its upload timeout (unfinished);
- any other fedimg snapshot that no AMI uses and that is older than the grace period;
- a test instance (``fedimg:role=test``) not yet terminated and older than the grace period;
- a test key pair or security group that no live, young test instance uses and whose test run is
  not still starting.

With the S3 + ImportSnapshot upload method (``upload.bucket`` set), also the staging bucket's
objects and multipart uploads, and VM Import tasks, that killed runs left (gc_import.py).

"No AMI uses" means: no image of the account in that region lists the snapshot in its block device
mappings, and (for snapshots not mid-upload) no image there carries the snapshot's
``fedimg:image-key``: while an image key has an AMI, gc keeps that key's snapshots rather than
guess which of them backs it. Security groups have no creation time in the API; one counts as
still starting while its ``fedimg:test-run`` has a key pair younger than the grace period (the
boot test creates the key pair first).

Safe to re-run: removal treats "already gone" as success, so two gc runs, or a gc racing a test
run's own clean-up, converge.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.table import Table

from fedimg.aws import gc_import
from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.snapshot import TAG_LEASE_UNTIL
from fedimg.aws.wait import wait_until
from fedimg.config import Settings
from fedimg.errors import FedimgError
from fedimg.identity import TAG_KEY, TAG_MANAGED, TAG_ROLE, TAG_STATE, TAG_TEST_RUN, tags_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import FilterTypeDef

log = logging.getLogger(__name__)

# Longer than a boot test lives (test.boot_seconds + ssh + checks: 20 min by default) and than the
# gap between a snapshot's completion and the RegisterImage that uses it.
GRACE = timedelta(hours=1)
# EC2 terminates an instance in well under a minute; a slow region gets ten.
TERMINATE_DEADLINE_S = 600.0
# Set by the boot test on its key pair, security group and instance (boottest.py).
STATE_UPLOADING = "uploading"
ROLE_TEST = "test"

SNAPSHOT, INSTANCE, KEY_PAIR, SECURITY_GROUP, IMAGE = (
    "snapshot",
    "instance",
    "key-pair",
    "security-group",
    "image",
)
# Removal order: an instance holds its security group and key pair until it is terminated.
REMOVAL_ORDER = (INSTANCE, SECURITY_GROUP, KEY_PAIR, SNAPSHOT)
GONE_STATES = frozenset({"terminated", "shutting-down"})


@dataclass(frozen=True)
class Orphan:
    region: str
    kind: str  # snapshot | instance | key-pair | security-group | image
    resource_id: str  # key pairs: the key name (unique per region; what DeleteKeyPair takes)
    reason: str
    created: str  # ISO 8601 UTC; "" when AWS does not say (security groups)


@dataclass(frozen=True)
class Removal:
    orphan: Orphan
    ok: bool
    error: str = ""


# ---------------------------------------------------------------------------------------------
# Finding


def find_orphans(
    settings: Settings,
    clients: Clients,
    *,
    now: datetime | None = None,
    grace: timedelta = GRACE,
) -> list[Orphan]:
    """Every orphan in the configured regions (and the base region), regions scanned at once.

    Read-only. Raises AwsError (translated) if a region cannot be read.
    """
    now = now or datetime.now(UTC)
    timeout = timedelta(minutes=settings.aws.snapshot_timeout_minutes)

    def scan(region: str) -> list[Orphan]:
        try:
            return _RegionScan(clients.ec2(region), region, now, grace, timeout).orphans()
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"gc: reading {region}") from e

    found = _each_region(_regions(settings), scan)
    if settings.upload.bucket:
        found.append(_import_leftovers(settings, clients, now, grace))
    kind_rank = {k: n for n, k in enumerate((*gc_import.KINDS, *REMOVAL_ORDER))}
    return sorted(
        (o for orphans in found for o in orphans),
        key=lambda o: (o.region, kind_rank.get(o.kind, 99), o.resource_id),
    )


def _import_leftovers(
    settings: Settings, clients: Clients, now: datetime, grace: timedelta
) -> list[Orphan]:
    region = settings.aws.base_region
    try:
        found = gc_import.ImportScan(settings, clients, now, grace).leftovers()
    except (ClientError, BotoCoreError) as e:
        raise translate(e, f"gc: reading import leftovers in {region}") from e
    return [Orphan(region, kind, rid, why, _iso(since)) for kind, rid, why, since in found]


def _regions(settings: Settings) -> list[str]:
    return list(dict.fromkeys((settings.aws.base_region, *settings.aws.regions)))


T = TypeVar("T")


def _each_region(regions: Sequence[str], fn: Callable[[str], T]) -> list[T]:
    with ThreadPoolExecutor(max_workers=max(1, len(regions)), thread_name_prefix="gc") as pool:
        return list(pool.map(fn, regions))


def _iso(ts: datetime | None) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds") if ts else ""


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


class _RegionScan:
    """One region's resources, read once, judged against each other."""

    def __init__(
        self, ec2: EC2Client, region: str, now: datetime, grace: timedelta, timeout: timedelta
    ) -> None:
        self.ec2 = ec2
        self.region = region
        self.now = now
        self.grace = grace
        self.timeout = timeout

    def orphans(self) -> list[Orphan]:
        managed: list[FilterTypeDef] = [{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}]
        test: list[FilterTypeDef] = [*managed, {"Name": f"tag:{TAG_ROLE}", "Values": [ROLE_TEST]}]
        live = [
            i
            for page in self.ec2.get_paginator("describe_instances").paginate()
            for r in page["Reservations"]
            for i in r.get("Instances", [])
            if i.get("State", {}).get("Name") != "terminated"
        ]
        instances = self._instances(live)
        doomed = {o.resource_id for o in instances}
        keeping = [i for i in live if i.get("InstanceId") not in doomed]
        key_pairs = self.ec2.describe_key_pairs(Filters=test)["KeyPairs"]
        groups = [
            g
            for page in self.ec2.get_paginator("describe_security_groups").paginate(Filters=test)
            for g in page["SecurityGroups"]
        ]
        snapshots = [
            s
            for page in self.ec2.get_paginator("describe_snapshots").paginate(
                OwnerIds=["self"],
                Filters=managed,
            )
            for s in page["Snapshots"]
        ]
        return [
            *instances,
            *self._security_groups(groups, keeping, key_pairs),
            *self._key_pairs(key_pairs, keeping),
            *self._snapshots(snapshots),
        ]

    def _orphan(self, kind: str, rid: str, reason: str, created: datetime | None) -> Orphan:
        return Orphan(self.region, kind, rid, reason, _iso(created))

    def _instances(self, live: Iterable[Any]) -> list[Orphan]:
        out = []
        for i in live:
            tags = tags_of(i)
            if tags.get(TAG_MANAGED) != "true" or tags.get(TAG_ROLE) != ROLE_TEST:
                continue
            state = i.get("State", {}).get("Name", "")
            launched = i.get("LaunchTime")
            if state in GONE_STATES or launched is None:
                continue
            age = self.now - launched
            if age > self.grace and not self._leased(tags):
                reason = f"test instance {state} for {_hours(age)}"
                out.append(self._orphan(INSTANCE, i["InstanceId"], reason, launched))
        return out

    def _leased(self, tags: dict[str, str]) -> bool:
        """A live run renews its test's lease (testlease.py): its instance is no orphan, however
        long its waits have made it live."""
        try:
            return float(tags.get(TAG_LEASE_UNTIL, 0)) > self.now.timestamp()
        except ValueError:
            return False

    def _starting_runs(self, keeping: Iterable[Any], key_pairs: Iterable[Any]) -> set[str]:
        """Test runs still under way: a young key pair, or an instance gc keeps."""
        runs = {tags_of(i).get(TAG_TEST_RUN, "") for i in keeping}
        for k in key_pairs:
            created = k.get("CreateTime")
            if created is None or self.now - created <= self.grace:
                runs.add(tags_of(k).get(TAG_TEST_RUN, ""))
        runs.discard("")
        return runs

    def _security_groups(
        self, groups: Iterable[Any], keeping: Iterable[Any], key_pairs: Iterable[Any]
    ) -> list[Orphan]:
        keeping = list(keeping)
        in_use = {g.get("GroupId") for i in keeping for g in i.get("SecurityGroups", [])}
        starting = self._starting_runs(keeping, key_pairs)
        out = []
        for g in groups:
            if g["GroupId"] in in_use or tags_of(g).get(TAG_TEST_RUN) in starting:
                continue
            reason = "test security group no live test uses"
            out.append(self._orphan(SECURITY_GROUP, g["GroupId"], reason, None))
        return out

    def _key_pairs(self, key_pairs: Iterable[Any], keeping: Iterable[Any]) -> list[Orphan]:
        in_use = {i.get("KeyName") for i in keeping}
        out = []
        for k in key_pairs:
            created = k.get("CreateTime")
            if k["KeyName"] in in_use or created is None or self.now - created <= self.grace:
                continue
            reason = f"test key pair unused for {_hours(self.now - created)}"
            out.append(self._orphan(KEY_PAIR, k["KeyName"], reason, created))
        return out

    def _snapshots(self, snapshots: list[Any]) -> list[Orphan]:
        if not snapshots:
            return []
        images = [
            img
            for page in self.ec2.get_paginator("describe_images").paginate(
                Owners=["self"], IncludeDisabled=True
            )
            for img in page["Images"]
            if img.get("State") != "deregistered"
        ]
        mapped = {
            m["Ebs"]["SnapshotId"]
            for img in images
            for m in img.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        }
        keys_with_ami = {tags_of(img).get(TAG_KEY) for img in images} - {None}
        out = []
        for s in snapshots:
            sid, started, tags = s["SnapshotId"], s.get("StartTime"), tags_of(s)
            if sid in mapped or started is None:
                continue
            age = self.now - started
            if tags.get(TAG_STATE) == STATE_UPLOADING:
                if age > self.timeout:
                    reason = f"upload unfinished after {_hours(age)}"
                    out.append(self._orphan(SNAPSHOT, sid, reason, started))
            elif tags.get(TAG_KEY) not in keys_with_ami and age > self.grace:
                reason = f"no AMI uses it ({_hours(age)} old)"
                out.append(self._orphan(SNAPSHOT, sid, reason, started))
        return out


# ---------------------------------------------------------------------------------------------
# Removing


def remove_orphans(
    settings: Settings, clients: Clients, orphans: Sequence[Orphan]
) -> list[Removal]:
    """Removes ``orphans``, regions at once; per region instances (waited for until terminated),
    then security groups, key pairs, snapshots. A failure is logged and reported, never fatal.

    Returns one Removal per orphan, in the order given.
    """
    by_region: dict[str, list[Orphan]] = {}
    done: dict[Orphan, Removal] = {}
    for o in orphans:
        if o.kind in gc_import.KINDS:  # in KINDS order: a task goes before its object
            done[o] = _attempt(o, partial(gc_import.remove_leftover, settings, clients, o.kind))
        else:
            by_region.setdefault(o.region, []).append(o)

    deadline_s = min(TERMINATE_DEADLINE_S, settings.aws.wait_seconds)

    def run(region: str) -> dict[Orphan, Removal]:
        return _remove_in_region(clients.ec2(region), by_region[region], deadline_s)

    for results in _each_region(list(by_region), run):
        done.update(results)
    return [done[o] for o in orphans]


def _remove_in_region(
    ec2: EC2Client, orphans: list[Orphan], deadline_s: float
) -> dict[Orphan, Removal]:
    results: dict[Orphan, Removal] = {}
    of_kind = {k: [o for o in orphans if o.kind == k] for k in REMOVAL_ORDER}
    for o in orphans:
        if o.kind not in of_kind:
            results[o] = Removal(o, False, f"gc never removes a {o.kind} ({o.resource_id})")

    def terminate(rid: str) -> object:
        return ec2.terminate_instances(InstanceIds=[rid])

    for o in of_kind[INSTANCE]:
        results[o] = _attempt(o, terminate)
    terminating = [o for o in of_kind[INSTANCE] if results[o].ok]
    error = _wait_terminated(ec2, [o.resource_id for o in terminating], deadline_s)
    for o in terminating:
        if error:
            results[o] = Removal(o, False, error)

    actions: dict[str, Callable[[str], object]] = {
        SECURITY_GROUP: lambda rid: ec2.delete_security_group(GroupId=rid),
        KEY_PAIR: lambda rid: ec2.delete_key_pair(KeyName=rid),
        SNAPSHOT: lambda rid: ec2.delete_snapshot(SnapshotId=rid),
    }
    for kind, action in actions.items():
        for o in of_kind[kind]:
            results[o] = _attempt(o, action)
    return results


def _attempt(orphan: Orphan, action: Callable[[str], object]) -> Removal:
    """Runs ``action(resource_id)``; "already gone" counts as removed."""
    what = f"{orphan.kind} {orphan.resource_id} in {orphan.region}"
    try:
        action(orphan.resource_id)
    except ClientError as e:
        if error_code(e).endswith(".NotFound"):
            log.info("gc: %s was already gone", what)
            return Removal(orphan, True)
        return _failed(orphan, str(translate(e, f"removing {what}")))
    except BotoCoreError as e:
        return _failed(orphan, str(translate(e, f"removing {what}")))
    except FedimgError as e:  # gc_import translates its own
        return _failed(orphan, str(e))
    log.info("gc: removed %s", what)
    return Removal(orphan, True)


def _failed(orphan: Orphan, error: str) -> Removal:
    log.warning("gc: %s", error)
    return Removal(orphan, False, error)


def _wait_terminated(ec2: EC2Client, instance_ids: list[str], deadline_s: float) -> str:
    """ "" once every instance is terminated (or gone); else why not."""
    if not instance_ids:
        return ""

    def state() -> str:
        try:
            reservations = ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]
        except ClientError as e:
            if error_code(e).endswith(".NotFound"):
                return "terminated"
            raise
        states = {i.get("State", {}).get("Name") for r in reservations for i in r["Instances"]}
        return "terminated" if states <= {"terminated"} else "terminating"

    what = f"termination of {', '.join(instance_ids)}"
    try:
        wait_until(what, state, done="terminated", failed=(), deadline_s=deadline_s)
    except (ClientError, BotoCoreError) as e:
        return _logged(str(translate(e, what)))
    except FedimgError as e:
        return _logged(str(e))
    return ""


def _logged(error: str) -> str:
    log.warning("gc: %s", error)
    return error


# ---------------------------------------------------------------------------------------------
# The command


def gc_command(
    settings: Settings,
    clients: Clients | None = None,
    *,
    act: bool,
    as_json: bool,
    console: Console | None = None,
    now: datetime | None = None,
) -> int:
    """``fedimg gc [--yes] [--json]``: reports orphans; with ``act`` removes them too.

    Returns 0 when nothing failed (also when nothing was found), 1 when some removal failed.
    ``now`` (default: the current time) is for tests, whose stand-in stamps everything "now".
    """
    clients = clients or Clients(settings.aws)
    console = console or Console()
    orphans = find_orphans(settings, clients, now=now)
    removals = remove_orphans(settings, clients, orphans) if act and orphans else []
    removed = {r.orphan: r for r in removals}
    if as_json:
        rows = [
            {
                "region": o.region,
                "kind": o.kind,
                "id": o.resource_id,
                "reason": o.reason,
                "removed": o in removed and removed[o].ok,
            }
            for o in orphans
        ]
        console.out(json.dumps(rows, indent=2), highlight=False)
    elif not orphans:
        console.print(f"fedimg gc: no orphans in {', '.join(_regions(settings))}")
    else:
        console.print(_table(orphans, removed, act))
    return 1 if any(not r.ok for r in removals) else 0


def _table(orphans: Sequence[Orphan], removed: dict[Orphan, Removal], act: bool) -> Table:
    title = f"fedimg gc: {len(orphans)} orphan{'s' if len(orphans) != 1 else ''}"
    if not act:
        title += " (dry run: nothing removed; --yes removes them)"
    table = Table(title=title)
    for column in ("region", "kind", "id", "created", "reason"):
        table.add_column(column)
    if act:
        table.add_column("removed")
    for o in orphans:
        row = [o.region, o.kind, o.resource_id, o.created, o.reason]
        if act:
            r = removed.get(o)
            row.append("yes" if r and r.ok else f"[red]no: {r.error if r else ''}[/]")
        table.add_row(*row)
    return table


__all__ = [
    "GRACE",
    "Orphan",
    "Removal",
    "find_orphans",
    "gc_command",
    "remove_orphans",
]
