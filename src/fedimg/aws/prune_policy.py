"""The retention policy as a pure function: fedimg's AMIs as AWS holds them → what to do with each.

In this order, the first rule that applies decides:

1. kind ``unknown`` → keep (and report: someone should look);
2. kind ``ga`` → keep for ever; ``protect`` when ``retention.protect_ga`` and the AMI has no
   deregistration protection yet;
3. an SSM "latest" parameter names the AMI → keep;
4. its compose is among the newest ``retention.keep_newest`` composes of its release, subvariant
   and architecture in its region → keep;
5. it has deregistration protection (someone set it) → keep;
6. ``prerelease`` → remove once ``prerelease_days_after_ga`` days have passed since the first GA
   AMI of its release (any region); kept while its release has no GA;
7. ``nightly`` → remove once older than ``nightly_days``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from fedimg import composeid
from fedimg.composekind import Kind
from fedimg.config import RetentionSettings

UNPROTECTED = "disabled"  # DescribeImages' DeregistrationProtection when off


class Action(enum.StrEnum):
    KEEP = "keep"
    PROTECT = "protect"
    REMOVE = "remove"


@dataclass(frozen=True)
class AmiRecord:
    """One of fedimg's AMIs in one region, as prune reads it."""

    region: str
    ami: str
    name: str
    compose_id: str  # "" when untagged
    kind: Kind
    release: str  # "41", "Rawhide"; "" when unknown
    group: tuple[str, str, str]  # release, subvariant (or image family), architecture
    created: datetime
    public: bool
    disabled: bool
    protection: str  # DescribeImages' DeregistrationProtection
    snapshots: tuple[str, ...]
    pinned: bool  # an SSM "latest" parameter names it

    def age_days(self, now: datetime) -> int:
        return max(0, (now - self.created).days)


@dataclass(frozen=True)
class Decision:
    record: AmiRecord
    action: Action
    reason: str


def decide(
    records: Sequence[AmiRecord], retention: RetentionSettings, now: datetime
) -> list[Decision]:
    """One decision per record, in the order given."""
    newest = _newest_composes(records, retention.keep_newest)
    first_ga = _first_ga(records)
    return [_decide(r, retention, now, newest, first_ga) for r in records]


def _decide(
    r: AmiRecord,
    retention: RetentionSettings,
    now: datetime,
    newest: dict[tuple[str, tuple[str, str, str]], set[str]],
    first_ga: dict[str, datetime],
) -> Decision:
    if r.kind is Kind.UNKNOWN:
        return Decision(r, Action.KEEP, "kind unknown: kept; classify or remove it by hand")
    if r.kind is Kind.GA:
        if retention.protect_ga and r.protection == UNPROTECTED:
            return Decision(r, Action.PROTECT, "GA: kept for ever, protected from deregistration")
        return Decision(r, Action.KEEP, "GA: kept for ever")
    if r.pinned:
        return Decision(r, Action.KEEP, 'an SSM "latest" parameter names it')
    if _compose_key(r) in newest[(r.region, r.group)]:
        return Decision(r, Action.KEEP, f"among the newest {retention.keep_newest} composes")
    if r.protection != UNPROTECTED:
        return Decision(r, Action.KEEP, f"deregistration protection is {r.protection}")
    if r.kind is Kind.PRERELEASE:
        return _prerelease(r, retention.prerelease_days_after_ga, now, first_ga)
    age, limit = r.age_days(now), retention.nightly_days
    if age > limit:
        return Decision(r, Action.REMOVE, f"nightly, {age} days old (kept {limit})")
    return Decision(r, Action.KEEP, f"nightly, {age} days old (kept {limit})")


def _prerelease(r: AmiRecord, days: int, now: datetime, first_ga: dict[str, datetime]) -> Decision:
    ga = first_ga.get(r.release) if r.release else None
    if ga is None:
        return Decision(r, Action.KEEP, f"pre-release; release {r.release or '?'} has no GA yet")
    since = max(0, (now - ga).days)
    verdict = Action.REMOVE if since > days else Action.KEEP
    return Decision(r, verdict, f"pre-release, {since} days after its GA (kept {days})")


def _compose_key(r: AmiRecord) -> str:
    return r.compose_id or r.ami


def _order(r: AmiRecord) -> tuple[tuple[str, int, int], datetime]:
    parsed = composeid.parse(r.compose_id)
    return (parsed.order if parsed else ("", 0, 0), r.created)


def _newest_composes(
    records: Iterable[AmiRecord], keep: int
) -> dict[tuple[str, tuple[str, str, str]], set[str]]:
    """Per region and group: the compose keys of its ``keep`` newest composes."""
    by_group: dict[tuple[str, tuple[str, str, str]], list[AmiRecord]] = {}
    for r in records:
        by_group.setdefault((r.region, r.group), []).append(r)
    newest = {}
    for key, members in by_group.items():
        composes: list[str] = []
        for r in sorted(members, key=_order, reverse=True):
            if _compose_key(r) not in composes:
                composes.append(_compose_key(r))
        newest[key] = set(composes[:keep])
    return newest


def _first_ga(records: Iterable[AmiRecord]) -> dict[str, datetime]:
    """Per release: when its first GA AMI was made (any region)."""
    first: dict[str, datetime] = {}
    for r in records:
        if r.kind is Kind.GA and r.release:
            first[r.release] = min(first.get(r.release, r.created), r.created)
    return first
