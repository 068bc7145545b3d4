"""``fedimg preflight``: can this account, these regions and these services run fedimg?

Asked before the first compose, it creates nothing: EC2's dry runs answer whether each action is
allowed, the rest are reads. Every finding is one row (check, region, status, detail, what to do):

- ``ok``: nothing to do;
- ``warning``: fedimg runs, but something will need attention (a nearly used-up quota …);
- ``unchecked``: preflight could not tell (a permission it may not use); a warning;
- ``blocker``: a compose would fail here; the exit status is 1.

The AWS checks are in ``preflight_aws``, the other services' in ``preflight_services``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from rich.table import Table

from fedimg.config import Settings

OK = "ok"
WARNING = "warning"
UNCHECKED = "unchecked"
BLOCKER = "blocker"
STATUSES = (OK, WARNING, UNCHECKED, BLOCKER)
# The region of a row about the whole account (IAM, STS) or about a service outside AWS.
GLOBAL = "global"
NO_REGION = "-"
# How long preflight waits for a service outside AWS; AWS calls use the clients' timeouts.
SERVICE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Row:
    check: str
    region: str
    status: str
    detail: str
    action: str = ""  # what to do about it; empty when nothing

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def run_preflight(
    settings: Settings, *, compose_url: str | None = None, amqp_url: str | None = None
) -> list[Row]:
    """Every check for ``settings``: the AWS account and regions, then the other services."""
    from fedimg.preflight_aws import aws_rows
    from fedimg.preflight_services import service_rows

    return aws_rows(settings) + service_rows(settings, compose_url=compose_url, amqp_url=amqp_url)


def blocked(rows: list[Row]) -> bool:
    return any(r.status == BLOCKER for r in rows)


def to_json(rows: list[Row]) -> str:
    return json.dumps([r.to_json() for r in rows], indent=2)


STYLE = {OK: "green", WARNING: "yellow", UNCHECKED: "yellow", BLOCKER: "bold red"}


def table(rows: list[Row]) -> Table:
    """The rows as a rich table (one row per check and region)."""
    verdict = "blocked: fix the blockers first" if blocked(rows) else "ready"
    t = Table(title=f"fedimg preflight: {verdict}", show_lines=False)
    for column in ("check", "region", "status", "detail", "what to do"):
        t.add_column(column, overflow="fold")
    for r in rows:
        t.add_row(r.check, r.region, f"[{STYLE[r.status]}]{r.status}[/]", r.detail, r.action)
    return t


def preflight_command(
    settings: Settings, *, compose_url: str | None, amqp_url: str | None, as_json: bool
) -> int:
    """Prints the rows (a table, or JSON); returns the exit status: 1 when anything blocks."""
    from rich.console import Console

    rows = run_preflight(settings, compose_url=compose_url, amqp_url=amqp_url)
    console = Console()
    if as_json:
        console.out(to_json(rows), highlight=False)
    else:
        console.print(table(rows))
    return 1 if blocked(rows) else 0
