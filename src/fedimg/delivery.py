"""What the compose consumer and the image workers share about messages from the broker: the
settings named in ``[consumer_config]``, the delivery count, and when to requeue or give up.

Redeliveries are counted by the broker: a quorum queue puts the count in the message's headers, so
it survives a restart and is shared by every consumer of the queue. Without that header (a
classic queue) the count falls back to this process's memory, which a restart forgets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fedora_messaging.exceptions import Drop, Nack

from fedimg import config as config_mod
from fedimg.config import Settings
from fedimg.errors import ConfigError, TransientError

log = logging.getLogger(__name__)

# Earlier deliveries as the broker counts them (absent on a first delivery). RabbitMQ's quorum
# queues set x-delivery-count (3.8 to 4.2: every return, Nack included); from 4.3 it counts only
# failed returns and x-acquired-count every return, so fedimg's Nack shows only in the latter.
DELIVERY_COUNT_HEADERS = ("x-delivery-count", "x-acquired-count")
# The fallback count for queues without those headers; bounded for a consumer that runs for years.
REMEMBERED_MESSAGES = 1024
# The pause before a requeue: first pause, doubled per redelivery, at most MAX_REQUEUE_PAUSE. The
# message stays unacknowledged meanwhile, far below RabbitMQ's consumer timeout (30 min).
REQUEUE_PAUSE_SECONDS = 15.0
MAX_REQUEUE_PAUSE_SECONDS = 300.0
# A redelivery of work this process is still doing (its connection was lost) waits for that run
# instead of racing it; a run's own stage deadlines end it well before this.
SAME_WORK_WAIT_SECONDS = 4 * 3600.0
# [consumer_config] keys that configure the consumer or worker itself, not fedimg's settings.
OWN_KEYS = ("requeue_pause_seconds", "work_queue", "work_amqp_url")


def settings_from_consumer_config(consumer_config: Mapping[str, Any]) -> Settings:
    """``[consumer_config]`` names fedimg's TOML (``fedimg_config = "…"``) or holds its tables."""
    cc = {k: v for k, v in consumer_config.items() if k not in OWN_KEYS}
    path = cc.pop("fedimg_config", None)
    if path is not None:
        if cc:
            raise ConfigError(
                f"consumer_config: give fedimg_config or inline tables, not both ({sorted(cc)})"
            )
        return config_mod.load(path)
    return config_mod.from_dict(cc)


def requeue_pause_from_config(consumer_config: Mapping[str, Any]) -> Callable[[int], float]:
    """``requeue_pause_seconds`` (default 15): the pause before the first requeue."""
    first = consumer_config.get("requeue_pause_seconds", REQUEUE_PAUSE_SECONDS)
    if isinstance(first, bool) or not isinstance(first, int | float) or first < 0:
        raise ConfigError(
            f"consumer_config.requeue_pause_seconds: {first!r} is not a number of seconds >= 0"
        )
    return lambda redelivery: backoff(redelivery, float(first))


def backoff(redelivery: int, first: float = REQUEUE_PAUSE_SECONDS) -> float:
    """Seconds to wait before requeueing for redelivery number ``redelivery`` (1, 2, …).

    RabbitMQ redelivers a requeued message at once, so the pace is set here.
    """
    return min(MAX_REQUEUE_PAUSE_SECONDS, first * 2.0 ** max(0, redelivery - 1))


def broker_delivery_count(message: Any) -> int | None:
    """How often the broker delivered ``message`` before, from its headers; None if it does not say.

    fedora-messaging keeps the AMQP headers in ``Message._headers`` (it has no public accessor).
    """
    headers = getattr(message, "_headers", None)
    if not isinstance(headers, Mapping):
        return None
    counts = [
        v
        for v in (headers.get(name) for name in DELIVERY_COUNT_HEADERS)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0
    ]
    return max(counts) if counts else None


class Redeliveries:
    """Counts a message's deliveries and decides: requeue after a pause (Nack) or give up (Drop).

    ``limit``: redeliveries allowed (``messaging.max_redeliveries``); ``pause``: seconds before
    requeueing for redelivery number n.
    """

    def __init__(self, limit: int, pause: Callable[[int], float]) -> None:
        self.limit = limit
        self._pause = pause
        self._lock = threading.Lock()
        self._requeues: OrderedDict[str, int] = OrderedDict()

    def earlier(self, message: Any) -> int:
        """The broker's count, or this process's own when the broker gives none (or less)."""
        with self._lock:
            remembered = self._requeues.get(message.id, 0)
        return max(broker_delivery_count(message) or 0, remembered)

    def requeue_or_drop(
        self, message: Any, what: str, error: object, retryable: bool, earlier: int
    ) -> None:
        """Raises Nack (after the pause) while redeliveries are left and ``retryable``; else Drop
        (the queue dead-letters the message if it has an exchange for that)."""
        if not retryable:
            log.error("%s: %s; dropping the message", what, error)
            self.forget(message)
            raise Drop()
        if earlier >= self.limit:
            log.error(
                "%s: %s; delivery limit reached (delivery count %d of %d); "
                "giving up, the message is dropped (dead-lettered if the queue has an exchange)",
                what,
                error,
                earlier,
                self.limit,
            )
            self.forget(message)
            raise Drop()
        redelivery = earlier + 1
        with self._lock:
            self._requeues[message.id] = redelivery
            self._requeues.move_to_end(message.id)
            while len(self._requeues) > REMEMBERED_MESSAGES:
                self._requeues.popitem(last=False)
        delay = self._pause(redelivery)
        log.warning(
            "%s: %s; requeueing for redelivery %d of %d in %.1f s",
            what,
            error,
            redelivery,
            self.limit,
            delay,
        )
        time.sleep(delay)
        raise Nack()

    def forget(self, message: Any) -> None:
        with self._lock:
            self._requeues.pop(message.id, None)


@dataclass
class _Run:
    """The lock that orders the runs of one piece of work, and how many runs hold or await it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class OneRunAtATime:
    """Runs of one piece of work (a compose, an image) in this process, one after the other.

    After a lost connection the broker redelivers a message whose first run may still be going on
    in this process; the redelivery waits for it, then finds its work done.
    """

    def __init__(self, wait_seconds: float = SAME_WORK_WAIT_SECONDS) -> None:
        self._wait = wait_seconds
        self._lock = threading.Lock()
        self._running: dict[str, _Run] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        with self._lock:
            run = self._running.setdefault(key, _Run())
            run.users += 1
        try:
            if not run.lock.acquire(timeout=self._wait):
                raise TransientError(f"{key} is still being processed here")
            try:
                yield
            finally:
                run.lock.release()
        finally:
            with self._lock:
                run.users -= 1
                if not run.users:
                    del self._running[key]
