"""What the strict EC2 stand-in remembers beyond moto's own models.

Per-region state lives on moto's EC2 backend object, so ``moto-api/reset`` (which rebuilds every
backend) forgets it with everything else. Per-AMI state lives on moto's ``Ami`` objects.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from fedimg.standins.aws import options

UNBLOCKED = "unblocked"
_create_lock = threading.Lock()


@dataclass
class RegionState:
    """One region's block-public-access states and the ClientTokens it has seen."""

    image_block_public_access: str = UNBLOCKED
    snapshot_block_public_access: str = UNBLOCKED
    # ClientToken -> (fingerprint of the request's other parameters, resulting id).
    copy_tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    run_tokens: dict[str, str] = field(default_factory=dict)
    # Serializes the check-then-create steps (unique names, tokens): moto's server is threaded.
    lock: threading.RLock = field(default_factory=threading.RLock)


def region_state(backend: Any) -> RegionState:
    """The stand-in's state for the region of ``backend`` (created on first use)."""
    state = backend.__dict__.get("_fedimg_state")
    if state is None:
        with _create_lock:
            state = backend.__dict__.setdefault("_fedimg_state", RegionState())
    return cast(RegionState, state)


def fingerprint(params: Any, *, ignore: tuple[str, ...] = ("ClientToken", "DryRun")) -> str:
    """A digest of a request's parameters (except ``ignore``), to compare retried requests."""
    kept = {k: v for k, v in dict(params).items() if k not in ignore}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def mark_new(ami: Any) -> None:
    """Starts ``ami``'s eventual-consistency window (``options.visibility_delay()`` seconds)."""
    ami.visible_at = time.monotonic() + options.visibility_delay()


def is_visible(ami: Any) -> bool:
    """False while ``ami`` is inside its window; AMIs moto made itself are always visible."""
    return time.monotonic() >= float(getattr(ami, "visible_at", 0.0))
