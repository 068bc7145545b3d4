"""The fedora-messaging consumer: a finished compose on the bus becomes published AMIs.

Run as ``fedora-messaging --conf fedimg-messaging.toml consume`` with
``callback = "fedimg.consumer:Consumer"``. Dispositions:

- malformed message (missing or mistyped fields, a location that is not http(s)/file, a body too
  large to be pungi's), or a compose that cannot be read → logged with the reason, dropped;
- a location outside ``compose.trusted_locations`` → dropped with a warning naming it, before
  anything is fetched; a compose whose metadata is not the compose the message names (its
  ``compose_id`` differs from composeinfo.json's or images.json's, or the compose's release and
  date do not make that id) → dropped, the three ids in the log;
- a status other than FINISHED / FINISHED_INCOMPLETE → acknowledged and ignored;
- a transient failure (AWS, network) → requeued after a pause, until the message has been
  redelivered ``messaging.max_redeliveries`` times; then dropped (dead-lettered by the queue);
- anything else → acknowledged; the compose summary says what happened to each image.

Redeliveries are counted by the broker: a quorum queue puts the count in the message's headers, so
it survives a consumer restart and is shared by every consumer of the queue. Without that header
(a classic queue) the consumer falls back to counting in its own memory, which a restart forgets.

No exception but Nack/Drop leaves the callback: fedora-messaging would halt the consumer on one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fedora_messaging.exceptions import Drop, Nack

from fedimg import config as config_mod
from fedimg import logsafety
from fedimg.aws.clients import Clients
from fedimg.compose import verify_identity
from fedimg.config import Settings
from fedimg.errors import ConfigError, FedimgError, InputError, TransientError
from fedimg.events import Sink, fan_out, log_sink
from fedimg.pipeline import ComposeOutcome, Pipeline, Tester
from fedimg.trust import TrustedLocations

log = logging.getLogger(__name__)

ACTIONABLE = ("FINISHED", "FINISHED_INCOMPLETE")
KNOWN_STATUSES = ("STARTED", "FINISHED", "FINISHED_INCOMPLETE", "DOOMED", "TERMINATED")
# pungi's messages are well under 2 KiB; anything this large is not one.
MAX_BODY_BYTES = 64 * 1024
OUTCOMES_KEPT = 32
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
# A redelivery of a compose this process is still working on (its connection was lost) waits for
# that run instead of racing it; a run's own stage deadlines end it well before this.
SAME_COMPOSE_WAIT_SECONDS = 4 * 3600.0


@dataclass(frozen=True)
class ComposeMessage:
    status: str
    compose_id: str
    location: str


def parse_compose_message(body: Any) -> ComposeMessage:
    """The fields fedimg needs from pungi's message, or InputError naming what is wrong."""
    if not isinstance(body, Mapping):
        raise InputError(f"message body is a {type(body).__name__}, not an object")
    size = len(json.dumps(body, default=str))
    if size > MAX_BODY_BYTES:
        raise InputError(f"message body is {size} bytes; a compose message is far smaller")
    for key in ("status", "compose_id", "location"):
        if key not in body:
            raise InputError(f"message has no {key!r}")
        if not isinstance(body[key], str) or not body[key]:
            raise InputError(f"message field {key!r} is not a non-empty string")
    status, location = body["status"], body["location"]
    if status not in KNOWN_STATUSES:
        raise InputError(f"message status {status!r} is not a pungi compose status")
    if not location.startswith(("http://", "https://", "file://", "/")):
        raise InputError(f"message location {location!r} is not an http(s) URL or a file path")
    return ComposeMessage(status, body["compose_id"], location)


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


def settings_from_consumer_config(consumer_config: Mapping[str, Any]) -> Settings:
    """``[consumer_config]`` names fedimg's TOML (``fedimg_config = "…"``) or holds its tables."""
    cc = dict(consumer_config)
    cc.pop("requeue_pause_seconds", None)  # the consumer's own; see requeue_pause_from_config
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


def build_pipeline(settings: Settings, extra_sinks: tuple[Sink, ...] = ()) -> Pipeline:
    """The production pipeline for ``settings``: bus messages, EC2 boot test, ResultsDB."""
    from fedimg.report import ResultsReporter

    sinks: list[Sink] = [log_sink, *extra_sinks]
    if settings.messaging.publish:
        from fedimg.announce import bus_sink

        sinks.append(bus_sink(environment=settings.messaging.environment))
    clients = Clients(settings.aws)
    return Pipeline(
        settings,
        clients,
        sink=fan_out(sinks),
        tester=_default_tester(settings, clients),
        reporter=ResultsReporter(settings.resultsdb),
    )


def _default_tester(settings: Settings, clients: Clients) -> Tester:
    from fedimg.aws.boottest import Ec2BootTester

    if settings.test.enabled and not settings.test.ssh_cidr:
        raise ConfigError(
            "test.ssh_cidr: required when the EC2 boot test runs (test.enabled = true): "
            "the CIDR block fedimg's SSH connections to the test instance come from"
        )

    return Ec2BootTester(settings, clients)


@dataclass
class _ComposeRun:
    """The lock that orders the runs of one compose, and how many runs hold or await it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class Consumer:
    """A fedora-messaging callback object; one instance serves every message."""

    def __init__(
        self,
        settings: Settings | None = None,
        pipeline: Pipeline | None = None,
        *,
        requeue_delay: Callable[[int], float] | None = None,
    ) -> None:
        logsafety.install()
        if settings is None:
            from fedora_messaging.config import conf

            consumer_config = conf.get("consumer_config") or {}
            settings = settings_from_consumer_config(consumer_config)
            requeue_delay = requeue_delay or requeue_pause_from_config(consumer_config)
        self.settings = settings
        self.trusted = TrustedLocations(settings.compose.trusted_locations)
        self.pipeline = pipeline or build_pipeline(settings)
        self._requeue_delay = requeue_delay or backoff
        self._requeues: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._running: dict[str, _ComposeRun] = {}
        # The latest outcomes, for the demo and tests; bounded for a consumer that runs for years.
        self.outcomes: deque[ComposeOutcome] = deque(maxlen=OUTCOMES_KEPT)

    def __call__(self, message: Any) -> None:
        topic = getattr(message, "topic", "")
        try:
            compose = parse_compose_message(message.body)
        except InputError as e:
            log.warning("dropping message %s on %s: %s", message.id, topic, e)
            raise Drop() from e
        if compose.status not in ACTIONABLE:
            log.info("compose %s is %s: nothing to do", compose.compose_id, compose.status)
            return
        try:
            self.trusted.check(compose.location, "location")
        except InputError as e:
            log.warning(
                "dropping compose %s from message %s: %s (compose.trusted_locations)",
                compose.compose_id,
                message.id,
                e,
            )
            raise Drop() from e
        earlier = self._earlier_deliveries(message)
        limit = self.settings.messaging.max_redeliveries
        if earlier > limit:
            # Only when the queue's own delivery limit is higher than fedimg's, or missing.
            log.error(
                "compose %s: delivery count %d is past the limit of %d redeliveries; dropping",
                compose.compose_id,
                earlier,
                limit,
            )
            self._forget(message)
            raise Drop()
        if earlier:
            log.warning(
                "compose %s is %s: publishing, redelivery %d of %d",
                compose.compose_id,
                compose.status,
                earlier,
                limit,
            )
        else:
            log.info("compose %s is %s: publishing", compose.compose_id, compose.status)
        try:
            with self._one_run_at_a_time(compose.compose_id):
                verify_identity(compose.compose_id, compose.location, self.settings.compose)
                outcome = self.pipeline.run_compose(compose.location)
        except FedimgError as e:
            self._requeue_or_drop(message, compose, e, e.retryable, earlier)
            return
        except Exception as e:  # a bug: never let it halt the consumer for every other compose
            log.exception("compose %s: unexpected error; dropping the message", compose.compose_id)
            raise Drop() from e
        self.outcomes.append(outcome)
        self._prune(outcome)
        self._refresh_catalog(outcome)
        if outcome.retryable:
            failed = [i.image_name for i in outcome.images if i.status == "failed"]
            self._requeue_or_drop(message, compose, f"transient failure of {failed}", True, earlier)
        self._forget(message)

    def _prune(self, outcome: ComposeOutcome) -> None:
        """Applies the retention policy when ``retention.prune_after_compose`` (never fails the
        compose); before the catalog, so that it shows what is left."""
        if self.settings.retention.prune_after_compose:
            from fedimg.aws.prune import prune_after_compose

            prune_after_compose(self.settings, self.pipeline.clients, outcome.compose_id)

    def _refresh_catalog(self, outcome: ComposeOutcome) -> None:
        """Rewrites the catalog when ``catalog.output_dir`` is set (never fails the compose)."""
        if self.settings.catalog.output_dir:
            from fedimg.catalog import refresh_after_publish

            refresh_after_publish(
                self.settings, self.pipeline.clients, outcome, self.settings.catalog.output_dir
            )

    def _earlier_deliveries(self, message: Any) -> int:
        """The broker's count, or this process's own when the broker gives none (or less)."""
        with self._lock:
            remembered = self._requeues.get(message.id, 0)
        return max(broker_delivery_count(message) or 0, remembered)

    @contextmanager
    def _one_run_at_a_time(self, compose_id: str) -> Iterator[None]:
        """Runs of one compose in this process one after the other.

        After a lost connection the broker redelivers a message whose first run may still be going
        on in this process; the redelivery waits for it, then finds its work done.
        """
        with self._lock:
            run = self._running.setdefault(compose_id, _ComposeRun())
            run.users += 1
        try:
            if not run.lock.acquire(timeout=SAME_COMPOSE_WAIT_SECONDS):
                raise TransientError(f"compose {compose_id} is still being processed here")
            try:
                yield
            finally:
                run.lock.release()
        finally:
            with self._lock:
                run.users -= 1
                if not run.users:
                    del self._running[compose_id]

    def _requeue_or_drop(
        self,
        message: Any,
        compose: ComposeMessage,
        error: object,
        retryable: bool,
        earlier: int,
    ) -> None:
        if not retryable:
            log.error("compose %s: %s; dropping the message", compose.compose_id, error)
            self._forget(message)
            raise Drop()
        limit = self.settings.messaging.max_redeliveries
        if earlier >= limit:
            log.error(
                "compose %s: %s; delivery limit reached (delivery count %d of %d); "
                "giving up, the message is dropped (dead-lettered if the queue has an exchange)",
                compose.compose_id,
                error,
                earlier,
                limit,
            )
            self._forget(message)
            raise Drop()
        redelivery = earlier + 1
        with self._lock:
            self._requeues[message.id] = redelivery
            self._requeues.move_to_end(message.id)
            while len(self._requeues) > REMEMBERED_MESSAGES:
                self._requeues.popitem(last=False)
        delay = self._requeue_delay(redelivery)
        log.warning(
            "compose %s: %s; requeueing for redelivery %d of %d in %.1f s",
            compose.compose_id,
            error,
            redelivery,
            limit,
            delay,
        )
        time.sleep(delay)
        raise Nack()

    def _forget(self, message: Any) -> None:
        with self._lock:
            self._requeues.pop(message.id, None)
