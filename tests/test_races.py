"""Two runs of one compose at once, as real processes: both succeed, AWS holds one of everything.

The first run is a pipeline process paused at a point (tests/racedriver.py); the second, a
`fedimg compose` or a manual `fedimg upload` of the same image, starts while it is paused, and
the first goes on a second later. No broker is involved: what keeps them apart is AWS's rules
(StartSnapshot and CopyImage tokens, unique AMI names) and fedimg's snapshot leases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedimg.compose import discover
from fedimg.config import Settings
from fedimg.standins.aws.options import VISIBILITY_DELAY
from tests.helpers import ec2, served_compose

REGIONS = ("us-east-1", "us-west-2")
ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 120


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_compose(tmp_path_factory.mktemp("compose"), 12, 0.5) as (url, _):
        yield url


def write_config(tmp_path: Path, aws: str) -> Path:
    cfg = tmp_path / "fedimg.toml"
    cfg.write_text(
        f'[aws]\nendpoint_url = "{aws}"\nregions = {json.dumps(list(REGIONS))}\n'
        "max_attempts = 2\nwait_seconds = 60\nupload_workers = 4\n"
        "[publish]\ndeprecate_after_days = 0\n[test]\nenabled = false\n"
        "[messaging]\npublish = false\n"
    )
    return cfg


def start(cfg: Path, *args: str) -> subprocess.Popen[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT), "FEDIMG_CONFIG": str(cfg)}
    return subprocess.Popen(
        [sys.executable, "-m", *args], env=env, cwd=ROOT, text=True, stderr=subprocess.PIPE
    )


def second_run(kind: str, cfg: Path, compose: str) -> subprocess.Popen[str]:
    if kind == "compose":
        return start(cfg, "fedimg.cli", "compose", compose, "--json")
    image = next(i for i in discover(compose, Settings().compose)[1] if i.arch == "x86_64")
    return start(cfg, "fedimg.cli", "upload", image.url, "--sha256", image.sha256, "--json")


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=DEADLINE_S)
    return proc.returncode, err[-2000:]


def held_by_aws(aws: str) -> dict[str, Any]:
    """Per region: the AMI names, and the snapshots no AMI is made from (strays)."""
    state: dict[str, Any] = {}
    for region in REGIONS:
        client = ec2(aws, region)
        images = client.describe_images(Owners=["self"])["Images"]
        mapped = {m["Ebs"]["SnapshotId"] for i in images for m in i.get("BlockDeviceMappings", [])}
        snaps = {s["SnapshotId"] for s in client.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
        state[region] = (sorted(i["Name"].split("-hvm-")[0][-7:] for i in images), snaps - mapped)
    return state


EXPECTED = {region: ([".x86_64", "aarch64"], set()) for region in REGIONS}

# (where the first run is when the second starts, the second run, stand-in visibility delay, s)
RACES = [
    ("at-once", "compose", 0.0),
    ("at-once", "compose", 0.0),
    ("at-once", "compose", 1.0),
    ("mid-upload", "compose", 0.0),
    ("mid-upload", "compose", 0.0),
    ("after-complete-snapshot", "compose", 0.0),
    ("after-complete-snapshot", "compose", 0.0),
    ("after-register", "compose", 0.0),
    ("after-register", "compose", 0.0),
    ("at-once", "upload", 0.0),
    ("mid-upload", "upload", 0.0),
]


@pytest.mark.parametrize(("point", "second", "delay"), RACES)
def test_two_runs_of_one_compose_both_succeed_with_one_of_everything(
    point: str,
    second: str,
    delay: float,
    aws: str,
    compose: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(VISIBILITY_DELAY, str(delay))  # read by the stand-in at each request
    cfg = write_config(tmp_path, aws)
    first = start(cfg, "tests.racedriver", str(cfg), compose, point, str(tmp_path))
    if point != "at-once":
        end = time.monotonic() + DEADLINE_S
        while not (tmp_path / "reached").exists():
            assert first.poll() is None and time.monotonic() < end, finish(first)
            time.sleep(0.05)
    other = second_run(second, cfg, compose)
    if point != "at-once":
        time.sleep(1.0)  # the second run is now at work, or waiting for the first
        (tmp_path / "go").touch()
    assert finish(first)[0] == 0, finish(first)
    assert finish(other)[0] == 0, finish(other)
    time.sleep(delay)  # what was made last becomes visible
    assert held_by_aws(aws) == EXPECTED
