"""Fault soak: 20 full pipeline runs (upload, boot test, copies, publish) through a proxy that
answers a seeded 10% of AWS requests with 500, 503 throttling, a reset connection or a slow
response. Every run must end in the correct state, and no request may take more attempts than
the one documented retry budget (``aws.max_attempts``): no nested retry storms.

A slow fault holds a request for longer than the soak's read timeout (``READ_TIMEOUT``), so it
really trips it: the proxy counts each one whose client hung up, and the soak demands all did.

As the consumer would, a run whose outcome is retryable is run again (at most
``messaging.max_redeliveries`` times); the figures are printed for the README.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from fedimg.aws.boottest import Ec2BootTester, SshTarget
from fedimg.aws.clients import Clients
from fedimg.boot.qemu import Guest, running_guest
from fedimg.boot.sample import SAMPLE_CHECKS, sample_image
from fedimg.config import Settings
from fedimg.pipeline import Pipeline
from fedimg.standins.moto import reset
from tests.faultproxy import fault_proxy
from tests.helpers import ec2, served_compose

RUNS = 20
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
MAX_ATTEMPTS = 6
# A slow fault costs the client this long, so it sets the soak's pace. moto's own answers took
# up to 0.65-0.94 s on this project's shared 2-core machines under load: one that outlasts the
# timeout is a real timeout, retried within the same budget like any other fault.
READ_TIMEOUT = 1.0
# Every slow fault outlasts the read timeout by at least half of it.
SLOW_DELAY = (1.5 * READ_TIMEOUT, 2.2 * READ_TIMEOUT)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_compose(tmp_path_factory.mktemp("soak"), 24, 0.5) as (url, _):
        yield url


@pytest.fixture(scope="module")
def guest(build_dir: Path) -> Iterator[Guest]:
    with running_guest(sample_image(build_dir), "bios", "root") as g:
        yield g


def soak_settings(settings: Settings, proxy_url: str) -> Settings:
    return dataclasses.replace(
        settings,
        aws=dataclasses.replace(
            settings.aws,
            endpoint_url=proxy_url,
            regions=REGIONS,
            max_attempts=MAX_ATTEMPTS,
            read_timeout=READ_TIMEOUT,
            wait_seconds=60,
        ),
        publish=dataclasses.replace(settings.publish, deprecate_after_days=0),
        test=dataclasses.replace(settings.test, ssh_user="root", checks=SAMPLE_CHECKS),
    )


def correct_state(url: str) -> list[str]:
    """What is wrong with the end state (empty when right)."""
    problems = []
    for region in REGIONS:
        client = ec2(url, region)
        images = client.describe_images(Owners=["self"])["Images"]
        if len(images) != 2:
            problems.append(f"{region}: {len(images)} AMIs")
        for i in images:
            perms = client.describe_image_attribute(
                ImageId=i["ImageId"], Attribute="launchPermission"
            )
            if {"Group": "all"} not in perms["LaunchPermissions"]:
                problems.append(f"{region}: {i['ImageId']} not public")
    base = ec2(url)
    snaps = base.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["fedimg:state"]}]
    )["Snapshots"]
    if len(snaps) != 2:
        problems.append(f"{len(snaps)} fedimg snapshots")
    live = [
        i
        for r in base.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    problems += [f"instance {i['InstanceId']} left" for i in live]
    problems += [f"key pair {k['KeyName']} left" for k in base.describe_key_pairs()["KeyPairs"]]
    problems += [
        f"security group {g['GroupName']} left"
        for g in base.describe_security_groups()["SecurityGroups"]
        if g["GroupName"] != "default"
    ]
    return problems


@pytest.mark.slow
def test_twenty_runs_under_ten_percent_faults(
    settings: Settings, compose: str, guest: Guest, aws: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def to_guest(instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
        return SshTarget(guest.host, guest.port, guest.pkey)

    faults: Counter[str] = Counter()
    requests = reruns = worst = tripped = 0
    slowest = 0.0
    started = time.monotonic()
    for seed in range(1, RUNS + 1):
        reset(aws)
        with fault_proxy(
            aws, rate=0.1, seed=seed, spare_last_attempt=False, slow_delay=SLOW_DELAY
        ) as proxy:
            s = soak_settings(settings, proxy.url)
            clients = Clients(s.aws)
            pipeline = Pipeline(s, clients, tester=Ec2BootTester(s, clients, resolve=to_guest))
            outcome = pipeline.run_compose(compose)
            for _ in range(s.messaging.max_redeliveries):
                if not outcome.retryable:
                    break
                reruns += 1
                outcome = pipeline.run_compose(compose)
            stats = proxy.stats()
            worst = max(worst, proxy.max_attempts_per_invocation())
        assert outcome.ok, (seed, [i.error for i in outcome.images])
        assert correct_state(aws) == [], seed
        assert proxy.max_attempts_per_invocation() <= MAX_ATTEMPTS
        requests += stats["requests"]
        faults.update(stats["faults"])
        tripped += stats["slow_tripped"]
        slowest = max(slowest, stats["slowest_upstream_seconds"])
    assert all(faults[k] > 0 for k in ("500", "503", "reset", "slow")), faults
    with capsys.disabled():
        print(
            f"\nfault soak: {RUNS} runs in {time.monotonic() - started:.0f} s, {requests} "
            f"requests, faults {dict(faults)}, {tripped} of {faults['slow']} slow faults tripped "
            f"the {READ_TIMEOUT} s read timeout, {reruns} re-runs, at most {worst} attempts "
            f"per request, slowest moto answer {slowest:.2f} s"
        )
    assert tripped == faults["slow"]
