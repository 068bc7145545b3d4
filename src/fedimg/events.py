"""How stages report: one small interface, so the core never imports the CLI, the bus or ResultsDB.

A stage calls ``sink(Event(...))``; sinks fan out to log lines, progress bars, bus messages and
ResultsDB. A sink that fails must not break the pipeline: ``fan_out`` logs and carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    # "upload", "test", "copy", "publish", "compose"
    stage: str
    # "started", "completed", "failed", "progress"
    status: str
    image: str = ""
    region: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


Sink = Callable[[Event], None]


def null_sink(event: Event) -> None:
    """Discards events."""


def log_sink(event: Event) -> None:
    if event.status == "progress":
        return
    where = f" in {event.region}" if event.region else ""
    extra = " ".join(f"{k}={v}" for k, v in event.detail.items() if _short(v))
    log.info("%s %s %s%s %s", event.stage, event.status, event.image, where, extra)


def fan_out(sinks: Iterable[Sink]) -> Sink:
    sinks = list(sinks)

    def emit(event: Event) -> None:
        for sink in sinks:
            try:
                sink(event)
            except Exception:
                log.exception("event sink %r failed on %s %s", sink, event.stage, event.status)

    return emit


def _short(value: Any) -> bool:
    return isinstance(value, str | int | float) and len(str(value)) <= 120
