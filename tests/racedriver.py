"""Runs fedimg's pipeline on a compose, pausing at a named point until told to go on (races).

    python -m tests.racedriver CONFIG LOCATION POINT FOLDER

At the POINT's botocore event the process creates FOLDER/reached and waits (at most 60 s) for
FOLDER/go; POINT "none" runs straight through. Exit status 0 when every image was published.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3

from fedimg import config
from fedimg.aws.clients import Clients
from fedimg.pipeline import Pipeline

# point → (botocore event, occurrence at which the process pauses)
POINTS: dict[str, tuple[str, int]] = {
    "mid-upload": ("after-call.ebs.PutSnapshotBlock", 3),
    "after-complete-snapshot": ("after-call.ebs.CompleteSnapshot", 1),
    "after-register": ("after-call.ec2.RegisterImage", 1),
}
PAUSE_DEADLINE_S = 60.0


def main(cfg: str, location: str, point: str, folder: str) -> int:
    settings = config.load(cfg)
    session = boto3.session.Session()
    seen: Counter[str] = Counter()
    event, nth = POINTS.get(point, ("", 0))
    reached, go = Path(folder) / "reached", Path(folder) / "go"

    def pause(event_name: str, **_: Any) -> None:
        seen[event_name] += 1
        if seen[event_name] == nth:
            reached.touch()
            end = time.monotonic() + PAUSE_DEADLINE_S
            while not go.exists() and time.monotonic() < end:
                time.sleep(0.05)

    if event:
        session.events.register(event, pause)
    outcome = Pipeline(settings, Clients(settings.aws, session=session)).run_compose(location)
    for image in outcome.images:
        if image.error:
            print(f"{image.image_name}: {image.error}", file=sys.stderr)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
