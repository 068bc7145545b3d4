"""When is a compose finished? Asked of AWS, not of any one process's memory.

Each worker, when its image has ended (published, test-failed, or failed for good), records the
image's outcome in the base region as the SSM parameter ``/fedimg-outcomes/<compose>/<image key>``
(its value the summary's JSON for that image), then lists the compose's records: when every image
the work message names has one, it publishes ``fedimg.compose.complete``, built from the records
alone, so whoever publishes it announces the same content.

Why SSM parameters and not tags on the images' AMIs: an image can end with no AMI or snapshot at
all (its file could not be read; a checksum mismatch deletes the snapshot), and one
GetParametersByPath call reads every image's record. The path is outside the "latest" AMI
parameters' tree (``/fedimg/``), which retention scans for AMI ids, so that scan never pages
through outcome records; iam-policy.json grants SSM on ``parameter/fedimg-outcomes/*`` for them.

Records are not kept for ever: ``fedimg prune`` deletes a compose's records when it removes the
last of the compose's AMIs (``delete_outcome_records``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, translate
from fedimg.errors import InputError
from fedimg.outcomes import IMAGE_OUTCOMES
from fedimg.pipeline import ComposeOutcome, ImageOutcome

log = logging.getLogger(__name__)

ROOT = "/fedimg-outcomes"
# A standard-tier parameter holds 4 KB; an error message is cut to leave room for the regions.
MAX_VALUE_BYTES = 4096
MAX_ERROR_CHARS = 1000
# DeleteParameters takes at most 10 names (API_DeleteParameters.html).
DELETE_BATCH = 10
_NAME_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def record_name(compose_id: str, image_key: str) -> str:
    for part in (compose_id, image_key):
        if not _NAME_PART.match(part):
            raise InputError(f"{part!r} cannot name an outcome record (letters, digits, _.-)")
    return f"{ROOT}/{compose_id}/{image_key}"


def record_outcome(
    clients: Clients, region: str, compose_id: str, image_key: str, outcome: ImageOutcome
) -> None:
    """Stores how the image ended (overwriting an earlier run's record of it)."""
    summary = outcome.summary()
    summary["error"] = summary["error"][:MAX_ERROR_CHARS]
    value = json.dumps(summary, separators=(",", ":"))
    if len(value.encode()) > MAX_VALUE_BYTES:
        summary["error"] = ""
        value = json.dumps(summary, separators=(",", ":"))
    name = record_name(compose_id, image_key)
    try:
        clients.ssm(region).put_parameter(Name=name, Value=value, Type="String", Overwrite=True)
    except (ClientError, BotoCoreError) as e:
        raise translate(e, f"outcome record {name}") from e


def _records(clients: Clients, region: str, compose_id: str) -> list[Any]:
    path = f"{ROOT}/{compose_id}"
    try:
        pages = clients.ssm(region).get_paginator("get_parameters_by_path").paginate(Path=path)
        return [p for page in pages for p in page["Parameters"]]
    except (ClientError, BotoCoreError) as e:
        raise translate(e, f"outcome records under {path}") from e


def recorded_outcomes(clients: Clients, region: str, compose_id: str) -> dict[str, ImageOutcome]:
    """Image key → outcome, for every image of the compose that has a record."""
    parameters = _records(clients, region, compose_id)
    found = {}
    for p in parameters:
        key = p.get("Name", "").rsplit("/", 1)[-1]
        outcome = _outcome(p.get("Value", ""))
        if outcome is None:
            log.warning("outcome record %s is not fedimg's; ignored", p.get("Name"))
            continue
        found[key] = outcome
    return found


def delete_outcome_records(clients: Clients, region: str, compose_id: str) -> int:
    """Deletes every outcome record of the compose; returns how many there were. Safe to repeat:
    DeleteParameters reports names already gone as invalid rather than failing."""
    if not _NAME_PART.match(compose_id):
        return 0  # no record can be named by it
    names = [str(p["Name"]) for p in _records(clients, region, compose_id) if p.get("Name")]
    ssm = clients.ssm(region)
    for start in range(0, len(names), DELETE_BATCH):
        batch = names[start : start + DELETE_BATCH]
        try:
            ssm.delete_parameters(Names=batch)
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"deleting outcome records of {compose_id}") from e
    if names:
        log.info("compose %s: deleted %d outcome records", compose_id, len(names))
    return len(names)


def finished_compose(
    clients: Clients,
    region: str,
    compose_id: str,
    release: str,
    images: Sequence[tuple[str, str]],
) -> ComposeOutcome | None:
    """The compose's outcome if every image in ``images`` (key, name) has ended; else None."""
    recorded = recorded_outcomes(clients, region, compose_id)
    missing = [name for key, name in images if key not in recorded]
    if missing:
        log.info("compose %s: %d of %d images still running", compose_id, len(missing), len(images))
        return None
    return ComposeOutcome(compose_id, release, [recorded[key] for key, _ in images])


def _outcome(value: str) -> ImageOutcome | None:
    try:
        d: Any = json.loads(value)
        outcome = ImageOutcome(
            image_name=str(d["image_name"]),
            arch=str(d["arch"]),
            subvariant=str(d["subvariant"]),
            status=str(d["outcome"]),
            regions={str(r): str(a) for r, a in dict(d["regions"]).items()},
            error=str(d.get("error", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return outcome if outcome.status in IMAGE_OUTCOMES else None
