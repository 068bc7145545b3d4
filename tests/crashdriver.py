"""Runs fedimg's pipeline on a compose and SIGKILLs itself at a named point (crash-resume tests).

    python -m tests.crashdriver CONFIG LOCATION POINT GUEST_PORT KEY_FILE

POINT is one of POINTS or "none". The EC2 boot test's SSH goes to a QEMU guest on GUEST_PORT
(moto cannot boot instances), logging in with the private key in KEY_FILE.

A point names a botocore event and the occurrence at which the process dies; a point in AFTER dies
at the first such occurrence once another event has been seen so many times (copies in flight
while the test runs). The failed-test points need a configuration whose checks fail.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from typing import Any

import boto3
import paramiko

from fedimg import config
from fedimg.aws.boottest import Ec2BootTester, SshTarget
from fedimg.aws.clients import Clients
from fedimg.events import Event
from fedimg.pipeline import Pipeline

# point → (botocore event, occurrence at which the process dies)
POINTS: dict[str, tuple[str, int]] = {
    "after-start-snapshot": ("after-call.ebs.StartSnapshot", 1),
    "mid-upload": ("after-call.ebs.PutSnapshotBlock", 3),
    "after-complete-snapshot": ("after-call.ebs.CompleteSnapshot", 1),
    "after-register": ("after-call.ec2.RegisterImage", 1),
    # Both images' copies to the two other regions requested, their tests waiting for the
    # instance's status checks: with the time model on, the copies are still pending.
    "copies-during-test": ("after-call.ec2.DescribeInstanceStatus", 1),
    # A failed test: the copies are to be removed (the base AMI's copy round already raised) …
    "failed-test-before-removal": ("before-call.ec2.DeregisterImage", 1),
    # … one copy deregistered, its snapshots and the other copies still there.
    "failed-test-mid-removal": ("after-call.ec2.DeregisterImage", 1),
    "during-test-instance": ("after-call.ec2.RunInstances", 1),
    "mid-replication": ("after-call.ec2.CopyImage", 2),
    "before-publish": ("before-call.ec2.ModifyImageAttribute", 1),
    "after-publish": ("after-call.ssm.PutParameter", 2),
    "before-summary": ("compose.completed", 1),
}
AFTER: dict[str, tuple[str, int]] = {"copies-during-test": ("after-call.ec2.CopyImage", 4)}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(cfg: str, location: str, point: str, port: str, key_file: str) -> int:
    settings = config.load(cfg)
    session = boto3.session.Session()
    seen: Counter[str] = Counter()
    event, nth = POINTS.get(point, ("", 0))
    before, before_nth = AFTER.get(point, ("", 0))

    def hook(event_name: str, **_: Any) -> None:
        seen[event_name] += 1
        if event_name == event and seen[event_name] >= nth and seen[before] >= before_nth:
            die()

    if event and not event.startswith("compose."):
        session.events.register(event, hook)
    if before:
        session.events.register(before, hook)

    def sink(e: Event) -> None:
        if e.stage == "compose" and event == "compose.completed":
            die()

    pkey = paramiko.Ed25519Key.from_private_key_file(key_file)

    def to_guest(instance: dict[str, Any], _: paramiko.PKey) -> SshTarget:
        return SshTarget("127.0.0.1", int(port), pkey)

    clients = Clients(settings.aws, session=session)
    tester = Ec2BootTester(settings, clients, resolve=to_guest)
    outcome = Pipeline(settings, clients, sink, tester).run_compose(location)
    for image in outcome.images:
        if image.error:
            print(f"{image.image_name}: {image.error}", file=sys.stderr)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
