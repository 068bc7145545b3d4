"""``fedimg prune``: the retention policy (prune_policy.py) applied to what AWS holds.

Only AMIs the account owns and tagged ``fedimg:managed=true`` are read, in every configured
region (disabled ones included, so a crashed prune is found again); never an AMI an SSM "latest"
parameter names (every parameter under the ``publish.ssm_parameter`` template's fixed prefix).

Removing an AMI, each step safe to repeat:

1. its snapshots are tagged ``fedimg:pruned-ami=<ami>``, so that they are found again after a
   crash between deregistering the AMI and deleting them;
2. DisableImage: every launch permission goes, nobody can launch it any more;
3. DeregisterImage ("already gone" counts as done);
4. DeleteSnapshot of each ("already gone" counts as done).

A later run deletes the snapshots tagged in step 1 whose AMI no longer exists.

When the plan removes every AMI of a compose (in every region), the compose's outcome records
(completion.py, SSM ``/fedimg-outcomes/<compose>/…``) are deleted first: they only served to
announce the compose, and deleted before the AMIs, a crash never leaves records of a compose
nobody will prune again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.table import Table

from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.prune_policy import Action, AmiRecord, Decision, decide
from fedimg.composekind import TAG_RELEASE, TAG_SUBVARIANT, classify_tags, release_of
from fedimg.config import Settings
from fedimg.errors import FedimgError
from fedimg.identity import TAG_COMPOSE, TAG_MANAGED, TAG_NAME, tag_list, tags_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ssm import SSMClient

log = logging.getLogger(__name__)

TAG_PRUNED_AMI = "fedimg:pruned-ami"
DELETE_SNAPSHOTS = "delete-snapshots"  # the action for a crashed removal's snapshots
GONE = frozenset({"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidSnapshot.NotFound"})


@dataclass(frozen=True)
class Leftover:
    """Snapshots of an AMI a crashed prune deregistered."""

    region: str
    ami: str
    snapshots: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    decisions: list[Decision]
    leftovers: list[Leftover]

    def removals_in(self, region: str) -> list[Decision]:
        return [
            d for d in self.decisions if d.record.region == region and d.action is Action.REMOVE
        ]


@dataclass(frozen=True)
class Done:
    ok: bool
    error: str = ""


# ---------------------------------------------------------------------------------------------
# Reading


def regions_of(settings: Settings) -> list[str]:
    return list(dict.fromkeys((settings.aws.base_region, *settings.aws.regions)))


def plan(
    settings: Settings,
    clients: Clients,
    *,
    regions: Sequence[str] | None = None,
    now: datetime | None = None,
) -> Plan:
    """What the policy says for each of fedimg's AMIs (``regions``: default every configured
    one). Read-only. Raises AwsError if a region cannot be read."""
    now = now or datetime.now(UTC)
    scanned = _each_region(regions or regions_of(settings), lambda r: _scan(settings, clients, r))
    records = [r for found, _ in scanned for r in found]
    leftovers = [left for _, lefts in scanned for left in lefts]
    decisions = decide(records, settings.retention, now)
    order = {Action.REMOVE: 0, Action.PROTECT: 1, Action.KEEP: 2}
    decisions.sort(key=lambda d: (d.record.region, order[d.action], d.record.created))
    return Plan(decisions, leftovers)


def _scan(
    settings: Settings, clients: Clients, region: str
) -> tuple[list[AmiRecord], list[Leftover]]:
    ec2 = clients.ec2(region)
    try:
        pinned = _pinned(clients.ssm(region), settings.publish.ssm_parameter)
        images = [
            i
            for page in ec2.get_paginator("describe_images").paginate(
                Owners=["self"],
                IncludeDisabled=True,
                Filters=[{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}],
            )
            for i in page["Images"]
        ]
        records = [_record(region, i, pinned) for i in images if i.get("State") != "deregistered"]
        tagged = [
            s
            for page in ec2.get_paginator("describe_snapshots").paginate(
                OwnerIds=["self"],
                Filters=[
                    {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
                    {"Name": "tag-key", "Values": [TAG_PRUNED_AMI]},
                ],
            )
            for s in page["Snapshots"]
        ]
    except (ClientError, BotoCoreError) as e:
        raise translate(e, f"prune: reading {region}") from e
    live = {r.ami for r in records}
    by_ami: dict[str, list[str]] = {}
    for s in tagged:
        ami = tags_of(s).get(TAG_PRUNED_AMI, "")
        if ami and ami not in live:
            by_ami.setdefault(ami, []).append(s["SnapshotId"])
    leftovers = [Leftover(region, ami, tuple(sorted(s))) for ami, s in sorted(by_ami.items())]
    return records, leftovers


def ssm_prefix(template: str) -> str:
    """The fixed part of the "latest" parameter template, as a path: ``/fedimg/`` of
    ``/fedimg/{release}/…``."""
    fixed = template.split("{", 1)[0]
    return fixed[: fixed.rfind("/") + 1] or "/"


def _pinned(ssm: SSMClient, template: str) -> set[str]:
    """AMI ids named by any parameter under the template's prefix ("" template: none)."""
    if not template:
        return set()
    pages = ssm.get_paginator("get_parameters_by_path").paginate(
        Path=ssm_prefix(template).rstrip("/") or "/", Recursive=True
    )
    return {
        p.get("Value", "")
        for page in pages
        for p in page["Parameters"]
        if p.get("Value", "").startswith("ami-")
    }


def _record(region: str, image: Any, pinned: set[str]) -> AmiRecord:
    tags = tags_of(image)
    name = image.get("Name", "")
    compose_id = tags.get(TAG_COMPOSE, "")
    release = tags.get(TAG_RELEASE) or release_of(compose_id)
    image_name = tags.get(TAG_NAME, "") or name
    family = image_name.split(f"-{release}", 1)[0] if release else image_name
    return AmiRecord(
        region=region,
        ami=image["ImageId"],
        name=name,
        compose_id=compose_id,
        kind=classify_tags(tags, name),
        release=release,
        group=(release, tags.get(TAG_SUBVARIANT) or family, image.get("Architecture", "")),
        created=_aws_time(image.get("CreationDate", "")),
        public=bool(image.get("Public")),
        disabled=image.get("State") == "disabled",
        protection=str(image.get("DeregistrationProtection") or "disabled"),
        snapshots=tuple(
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        ),
        pinned=image["ImageId"] in pinned,
    )


def _aws_time(text: str) -> datetime:
    if not text:
        return datetime.now(UTC)
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _each_region(regions: Sequence[str], fn: Callable[[str], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, len(regions)), thread_name_prefix="prune") as pool:
        return list(pool.map(fn, regions))


# ---------------------------------------------------------------------------------------------
# Acting


def apply(clients: Clients, plan: Plan) -> tuple[dict[str, Done], dict[Leftover, Done]]:
    """Protects and removes as ``plan`` says, regions at once. Returns per AMI id (of the
    decisions that act) and per leftover whether it was done; a failure is reported, not raised."""
    regions = sorted(
        {d.record.region for d in plan.decisions if d.action is not Action.KEEP}
        | {left.region for left in plan.leftovers}
    )

    def run(region: str) -> tuple[dict[str, Done], dict[Leftover, Done]]:
        ec2 = clients.ec2(region)
        done = {
            d.record.ami: _act(ec2, d)
            for d in plan.decisions
            if d.record.region == region and d.action is not Action.KEEP
        }
        lefts = {
            left: _attempt(
                f"deleting snapshots of {left.ami} in {region}",
                lambda snaps=left.snapshots: _delete_snapshots(ec2, snaps),  # type: ignore[misc]
            )
            for left in plan.leftovers
            if left.region == region
        }
        return done, lefts

    amis: dict[str, Done] = {}
    leftovers: dict[Leftover, Done] = {}
    for done, lefts in _each_region(regions, run):
        amis.update(done)
        leftovers.update(lefts)
    return amis, leftovers


def forget_outcomes(settings: Settings, clients: Clients, the_plan: Plan) -> dict[str, Done]:
    """Deletes the outcome records of every compose whose AMIs the plan all removes (the plan
    must cover every region, as ``plan`` does by default). Returns per compose id whether it
    was done; a failure is reported, not raised."""
    from fedimg.completion import delete_outcome_records  # completion imports the pipeline

    removing = {d.record.compose_id for d in the_plan.decisions if d.action is Action.REMOVE}
    kept = {d.record.compose_id for d in the_plan.decisions if d.action is not Action.REMOVE}
    base = settings.aws.base_region
    return {
        compose_id: _attempt(
            f"deleting the outcome records of {compose_id}",
            lambda c=compose_id: delete_outcome_records(clients, base, c),  # type: ignore[misc]
        )
        for compose_id in sorted(removing - kept - {""})
    }


def _act(ec2: EC2Client, d: Decision) -> Done:
    r = d.record
    if d.action is Action.PROTECT:
        return _attempt(
            f"protecting {r.ami} in {r.region}",
            lambda: ec2.enable_image_deregistration_protection(ImageId=r.ami),
        )
    return _attempt(f"removing {r.ami} in {r.region}", lambda: remove_ami(ec2, r))


def remove_ami(ec2: EC2Client, r: AmiRecord) -> None:
    """The steps of the module docstring; each one repeated by a re-run is harmless."""
    if r.snapshots:
        ec2.create_tags(Resources=list(r.snapshots), Tags=tag_list({TAG_PRUNED_AMI: r.ami}))
    if not r.disabled:
        _unless_gone(lambda: ec2.disable_image(ImageId=r.ami))
    _unless_gone(lambda: ec2.deregister_image(ImageId=r.ami))
    log.info("prune: deregistered %s (%s) in %s", r.ami, r.name, r.region)
    _delete_snapshots(ec2, r.snapshots)


def _delete_snapshots(ec2: EC2Client, snapshots: Sequence[str]) -> None:
    for snapshot in snapshots:
        _unless_gone(lambda s=snapshot: ec2.delete_snapshot(SnapshotId=s))  # type: ignore[misc]


def _unless_gone(call: Callable[[], object]) -> None:
    try:
        call()
    except ClientError as e:
        if error_code(e) not in GONE:
            raise


def _attempt(what: str, call: Callable[[], object]) -> Done:
    try:
        call()
    except (ClientError, BotoCoreError) as e:
        error = str(translate(e, what))
        log.warning("prune: %s", error)
        return Done(False, error)
    return Done(True)


def prune_after_compose(
    settings: Settings, clients: Clients, compose_id: str, *, now: datetime | None = None
) -> None:
    """The consumer's prune after a compose (``retention.prune_after_compose``). A failure is
    logged, never raised: the compose is done either way, and the next prune tries again."""
    try:
        the_plan = plan(settings, clients, now=now)
        forgotten = forget_outcomes(settings, clients, the_plan)
        done, left_done = apply(clients, the_plan)
    except FedimgError as e:
        log.error("compose %s: prune failed: %s", compose_id, e)
        return
    steps = (*forgotten.values(), *done.values(), *left_done.values())
    failed = [d.error for d in steps if not d.ok]
    removed = sum(1 for d in the_plan.decisions if d.action is Action.REMOVE)
    log.info("compose %s: prune acted on %d AMIs (%d to remove)", compose_id, len(done), removed)
    for error in failed:
        log.error("compose %s: prune: %s", compose_id, error)


# ---------------------------------------------------------------------------------------------
# The command


def prune_command(
    settings: Settings,
    clients: Clients | None = None,
    *,
    act: bool,
    as_json: bool,
    console: Console | None = None,
    now: datetime | None = None,
) -> int:
    """``fedimg prune [--yes] [--json]``: reports what the policy would do; with ``act`` does it.

    Returns 0 when nothing failed, 1 when some step failed. ``now`` is for tests."""
    clients = clients or Clients(settings.aws)
    console = console or Console()
    now = now or datetime.now(UTC)
    the_plan = plan(settings, clients, now=now)
    forgotten = forget_outcomes(settings, clients, the_plan) if act else {}
    done, left_done = apply(clients, the_plan) if act else ({}, {})
    rows = rows_of(the_plan, now, done, left_done if act else None)
    if as_json:
        console.out(json.dumps(rows, indent=2), highlight=False)
    else:
        console.print(_table(rows, act))
    failed = [d for d in (*forgotten.values(), *done.values(), *left_done.values()) if not d.ok]
    return 1 if failed else 0


def rows_of(
    the_plan: Plan,
    now: datetime,
    done: dict[str, Done],
    left_done: dict[Leftover, Done] | None,
) -> list[dict[str, Any]]:
    """The ``--json`` rows: ``ami, region, name, compose_id, kind, age_days, action, reason``,
    and with ``--yes`` ``done`` and ``error``."""
    rows: list[dict[str, Any]] = []
    for d in the_plan.decisions:
        r = d.record
        row: dict[str, Any] = {
            "ami": r.ami,
            "region": r.region,
            "name": r.name,
            "compose_id": r.compose_id,
            "kind": r.kind.value,
            "age_days": r.age_days(now),
            "action": d.action.value,
            "reason": d.reason,
        }
        if left_done is not None:
            outcome = done.get(r.ami, Done(True))
            row |= {"done": outcome.ok, "error": outcome.error}
        rows.append(row)
    for left in the_plan.leftovers:
        row = {
            "ami": left.ami,
            "region": left.region,
            "name": "",
            "compose_id": "",
            "kind": "",
            "age_days": 0,
            "action": DELETE_SNAPSHOTS,
            "reason": f"a removal stopped after deregistering: {', '.join(left.snapshots)}",
        }
        if left_done is not None:
            outcome = left_done.get(left, Done(True))
            row |= {"done": outcome.ok, "error": outcome.error}
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]], act: bool) -> Table:
    acting = [r for r in rows if r["action"] != Action.KEEP]
    title = f"fedimg prune: {len(acting)} of {len(rows)} AMIs to act on"
    if not act:
        title += " (report only: --yes acts)"
    table = Table(title=title)
    columns = ["region", "ami", "name", "kind", "age_days", "action", "reason"]
    for column in columns + (["done"] if act else []):
        table.add_column(column.replace("_", " "))
    for row in rows:
        cells = [str(row[c]) for c in columns]
        if act:
            cells.append("yes" if row["done"] else f"[red]no: {row['error']}[/]")
        table.add_row(*cells)
    return table


__all__ = [
    "Done",
    "Leftover",
    "Plan",
    "apply",
    "forget_outcomes",
    "plan",
    "prune_after_compose",
    "prune_command",
    "remove_ami",
    "rows_of",
    "ssm_prefix",
]
