"""fedimg prune and quota awareness, on small AMIs registered straight on the strict stand-in (real
snapshots, no uploads): the policy, the report, the removal order, a crash and its resumption."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from rich.console import Console

from fedimg.aws.clients import Clients
from fedimg.aws.prune import TAG_PRUNED_AMI, prune_after_compose, prune_command, ssm_prefix
from fedimg.aws.prune_policy import Action, AmiRecord, decide
from fedimg.aws.prune_quota import ensure_public_capacity
from fedimg.cli import main
from fedimg.completion import record_outcome
from fedimg.composekind import Kind, kind_tags
from fedimg.config import RetentionSettings, Settings
from fedimg.errors import AwsError
from fedimg.identity import tag_list
from fedimg.pipeline import ImageOutcome
from fedimg.standins.aws import options
from tests.helpers import ec2

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
# moto stamps everything "now"; prune looks from 40 days later: nightlies (30 days) are old.
LATER = datetime.now(UTC) + timedelta(days=40, hours=1)
RETENTION = RetentionSettings(keep_newest=1, nightly_days=30, prerelease_days_after_ga=30)


# ---------------------------------------------------------------------------------------------
# The policy, as a pure function


def record(compose_id: str, kind: Kind, age_days: int, **changes: Any) -> AmiRecord:
    base = AmiRecord(
        region=REGION,
        ami=f"ami-{compose_id}",
        name=compose_id,
        compose_id=compose_id,
        kind=kind,
        release=compose_id.split("-")[1],
        group=(compose_id.split("-")[1], "Cloud_Base", "x86_64"),
        created=LATER - timedelta(days=age_days),
        public=True,
        disabled=False,
        protection="disabled",
        snapshots=(),
        pinned=False,
    )
    return dataclasses.replace(base, **changes)


def test_the_policy_decides_by_kind_age_newest_and_pins() -> None:
    records = [
        record("Fedora-41-20241024.0", Kind.GA, 100),
        record("Fedora-41-20241025.0", Kind.GA, 99, protection="enabled"),
        record("Fedora-41-20240917.0", Kind.PRERELEASE, 140),  # GA 100 days ago: > 30
        record("Fedora-42-20250301.0", Kind.PRERELEASE, 140),  # no GA of 42
        record("Fedora-Rawhide-20250101.n.0", Kind.NIGHTLY, 31),
        record("Fedora-Rawhide-20250102.n.0", Kind.NIGHTLY, 35, pinned=True),
        record("Fedora-Rawhide-20250103.n.0", Kind.NIGHTLY, 31),  # the newest of its group
        record("Fedora-Rawhide-20241231.n.0", Kind.NIGHTLY, 20, group=("x", "y", "z")),
        record("Fedora-Rawhide-20241230.n.0", Kind.NIGHTLY, 50, protection="enabled"),
        record("Fedora-41-20240101.0", Kind.UNKNOWN, 400),
    ]
    actions = [d.action for d in decide(records, RETENTION, LATER)]
    K, P, R = Action.KEEP, Action.PROTECT, Action.REMOVE
    assert actions == [P, K, R, K, R, K, K, K, K, K]


def test_the_ssm_prefix_is_the_templates_fixed_path() -> None:
    assert ssm_prefix("/fedimg/{release}/{subvariant}/{arch}/latest") == "/fedimg/"
    assert ssm_prefix("/a/b-{release}/latest") == "/a/"
    assert ssm_prefix("{release}/latest") == "/"


# ---------------------------------------------------------------------------------------------
# Against the stand-in


def register(aws: str, name: str, tags: dict[str, str], *, public: bool = True) -> str:
    client = ec2(aws, REGION)
    volume = client.create_volume(Size=1, AvailabilityZone=f"{REGION}a")["VolumeId"]
    specs = [{"ResourceType": "snapshot", "Tags": tag_list(tags)}] if tags else []
    snap = client.create_snapshot(VolumeId=volume, TagSpecifications=specs)["SnapshotId"]
    ami = client.register_image(
        Name=name,
        Architecture="x86_64",
        VirtualizationType="hvm",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap}}],
        TagSpecifications=[{"ResourceType": "image", "Tags": tag_list(tags)}] if tags else [],
    )["ImageId"]
    if public:
        client.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]})
    return str(ami)


def fedimg_tags(compose_id: str, kind: Kind) -> dict[str, str]:
    release = compose_id.split("-")[1]
    return {
        "fedimg:managed": "true",
        "fedimg:compose-id": compose_id,
        **kind_tags(kind, release, "Cloud_Base"),
    }


@pytest.fixture
def world(aws: str) -> dict[str, str]:
    """GA, an old and the newest nightly, an old nightly SSM names, an old AMI fedimg cannot
    classify, and an AMI fedimg did not make."""
    amis = {
        "ga": register(aws, "ga-ami", fedimg_tags("Fedora-41-20241024.0", Kind.GA)),
        "old": register(aws, "old-ami", fedimg_tags("Fedora-Rawhide-20250101.n.0", Kind.NIGHTLY)),
        "pinned": register(
            aws,
            "pinned-ami",
            fedimg_tags("Fedora-Rawhide-20250102.n.0", Kind.NIGHTLY),
            public=False,
        ),
        "new": register(aws, "new-ami", fedimg_tags("Fedora-Rawhide-20250103.n.0", Kind.NIGHTLY)),
        "unknown": register(aws, "unknown-ami", {"fedimg:managed": "true"}, public=False),
        "foreign": register(aws, "foreign-ami", {}, public=False),
    }
    ec2(aws, REGION).create_tags(
        Resources=[amis["foreign"]],
        Tags=tag_list(kind_tags(Kind.NIGHTLY, "Rawhide", "Cloud_Base")),
    )
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=aws)
    ssm.put_parameter(
        Name="/fedimg/Rawhide/Cloud_Base/x86_64/latest",
        Value=amis["pinned"],
        Type="String",
        DataType="aws:ec2:image",
    )
    return amis


@pytest.fixture
def pruning(settings: Settings) -> Settings:
    return dataclasses.replace(settings.with_aws(regions=(REGION,)), retention=RETENTION)


def run_prune(s: Settings, *, act: bool) -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    status = prune_command(
        s, act=act, as_json=True, console=Console(file=out, width=200), now=LATER
    )
    return status, json.loads(out.getvalue())


def held(aws: str) -> dict[str, dict[str, Any]]:
    images = ec2(aws, REGION).describe_images(Owners=["self"], IncludeDisabled=True)["Images"]
    return {i["ImageId"]: i for i in images}


def snapshots(aws: str) -> set[str]:
    return {
        s["SnapshotId"] for s in ec2(aws, REGION).describe_snapshots(OwnerIds=["self"])["Snapshots"]
    }


def test_prune_reports_by_default_and_changes_nothing(
    aws: str, world: dict[str, str], pruning: Settings
) -> None:
    before = held(aws)
    status, rows = run_prune(pruning, act=False)
    assert status == 0
    actions = {r["ami"]: r["action"] for r in rows}
    assert actions == {
        world["ga"]: "protect",
        world["old"]: "remove",
        world["pinned"]: "keep",
        world["new"]: "keep",
        world["unknown"]: "keep",
    }
    old = next(r for r in rows if r["ami"] == world["old"])
    assert {k: old[k] for k in ("region", "name", "compose_id", "kind", "age_days")} == {
        "region": REGION,
        "name": "old-ami",
        "compose_id": "Fedora-Rawhide-20250101.n.0",
        "kind": "nightly",
        "age_days": 40,
    }
    assert held(aws) == before


def test_prune_yes_removes_per_policy_and_protects_ga(
    aws: str, world: dict[str, str], pruning: Settings
) -> None:
    old_snapshot = held(aws)[world["old"]]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    status, rows = run_prune(pruning, act=True)
    assert status == 0 and all(r["done"] for r in rows)
    after = held(aws)
    assert world["old"] not in after and old_snapshot not in snapshots(aws)
    assert after[world["ga"]]["DeregistrationProtection"] == "enabled"
    assert {world["pinned"], world["new"], world["unknown"], world["foreign"]} <= set(after)
    assert {r["action"] for r in run_prune(pruning, act=False)[1]} == {"keep"}  # converged


def outcome_records(aws: str) -> list[str]:
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=aws)
    found = ssm.get_parameters_by_path(Path="/fedimg-outcomes", Recursive=True)["Parameters"]
    return sorted(p["Name"] for p in found)


def test_prune_deletes_the_outcome_records_of_a_compose_whose_amis_it_all_removes(
    aws: str, world: dict[str, str], pruning: Settings
) -> None:
    """The removed nightly's records go (twelve: more than one DeleteParameters takes); those
    of a compose prune keeps stay; a report-only run deletes nothing."""
    clients = Clients(pruning.aws)
    outcome = ImageOutcome("Fedora-Cloud-Base", "x86_64", "Cloud_Base", status="published")
    for key in range(12):
        record_outcome(clients, REGION, "Fedora-Rawhide-20250101.n.0", f"k{key:02}", outcome)
    record_outcome(clients, REGION, "Fedora-Rawhide-20250103.n.0", "k00", outcome)
    before = outcome_records(aws)
    run_prune(pruning, act=False)
    assert outcome_records(aws) == before
    status, _ = run_prune(pruning, act=True)
    assert status == 0 and world["old"] not in held(aws)
    assert outcome_records(aws) == ["/fedimg-outcomes/Fedora-Rawhide-20250103.n.0/k00"]


CRASHING_PRUNE = """
import os, signal, sys
from datetime import datetime, timedelta, UTC
import boto3
from fedimg import config
from fedimg.aws.clients import Clients
from fedimg.aws.prune import prune_command
settings = config.load(sys.argv[1])
session = boto3.session.Session()
session.events.register(
    "after-call.ec2.DeregisterImage", lambda **_: os.kill(os.getpid(), signal.SIGKILL)
)
prune_command(settings, Clients(settings.aws, session=session), act=True, as_json=True,
              now=datetime.now(UTC) + timedelta(days=40))
"""


def test_a_prune_killed_after_deregistering_is_finished_by_the_next_run(
    aws: str, world: dict[str, str], pruning: Settings, tmp_path: Path
) -> None:
    """SIGKILL right after DeregisterImage: the AMI is gone, its snapshot still there (tagged
    with the AMI); the next prune deletes it and changes nothing else."""
    old_snapshot = held(aws)[world["old"]]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    cfg = tmp_path / "fedimg.toml"
    cfg.write_text(
        f'[aws]\nendpoint_url = "{aws}"\nregions = ["{REGION}"]\nmax_attempts = 2\n'
        "[retention]\nkeep_newest = 1\nnightly_days = 30\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_PRUNE, str(cfg)],
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert world["old"] not in held(aws) and old_snapshot in snapshots(aws)
    status, rows = run_prune(pruning, act=True)
    assert status == 0
    (resumed,) = [r for r in rows if r["action"] == "delete-snapshots"]
    assert resumed["ami"] == world["old"] and resumed["done"]
    assert old_snapshot not in snapshots(aws)
    assert {world["ga"], world["pinned"], world["new"], world["unknown"]} <= set(held(aws))
    tagged = ec2(aws, REGION).describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_PRUNED_AMI]}]
    )["Snapshots"]
    assert tagged == []


# ---------------------------------------------------------------------------------------------
# Quota awareness


def test_a_full_quota_is_pruned_per_policy_before_publishing(
    aws: str, world: dict[str, str], pruning: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three public AMIs (GA, old and newest nightly) under a quota of 3: the old nightly goes."""
    monkeypatch.setenv(options.PUBLIC_AMI_QUOTA, "3")
    ensure_public_capacity(pruning, Clients(pruning.aws), REGION, now=LATER)
    assert world["old"] not in held(aws)
    assert {world["ga"], world["new"]} <= set(held(aws))


def test_a_full_quota_the_policy_cannot_free_fails_naming_quota_count_and_remedy(
    aws: str, world: dict[str, str], pruning: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(options.PUBLIC_AMI_QUOTA, "3")
    off = dataclasses.replace(
        pruning, retention=dataclasses.replace(RETENTION, prune_for_quota=False)
    )
    with pytest.raises(AwsError) as e:
        ensure_public_capacity(off, Clients(off.aws), REGION, now=LATER)
    message = str(e.value)
    assert "3 public AMIs" in message and "L-0E3CBAB9" in message and "is 3" in message
    assert "request-service-quota-increase" in message and "fedimg prune --yes" in message
    assert not e.value.retryable
    assert world["old"] in held(aws)


def test_the_cli_reports_as_json_and_acts_only_with_yes(
    aws: str, world: dict[str, str], tmp_path: Path
) -> None:
    cfg = tmp_path / "fedimg.toml"
    cfg.write_text(f'[aws]\nendpoint_url = "{aws}"\nregions = ["{REGION}"]\nmax_attempts = 2\n')
    result = CliRunner().invoke(main, ["prune", "--json", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {"ami", "region", "name", "compose_id", "kind", "age_days", "action"} <= set(rows[0])
    assert world["ga"] in held(aws) and held(aws)[world["ga"]]["DeregistrationProtection"] == (
        "disabled"
    )
    assert CliRunner().invoke(main, ["prune", "--yes", "--config", str(cfg)]).exit_code == 0
    assert held(aws)[world["ga"]]["DeregistrationProtection"] == "enabled"


def test_the_consumers_prune_acts_and_never_raises(
    aws: str,
    world: dict[str, str],
    pruning: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(options.DENY, "ec2:DescribeImages")
    prune_after_compose(pruning, Clients(pruning.aws), "Fedora-Rawhide-20250103.n.0")
    monkeypatch.delenv(options.DENY)
    assert "prune failed" in caplog.text and world["old"] in held(aws)
    prune_after_compose(pruning, Clients(pruning.aws), "Fedora-Rawhide-20250103.n.0", now=LATER)
    assert world["old"] not in held(aws)
