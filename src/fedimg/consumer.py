"""The fedora-messaging consumer: a finished compose on the bus becomes published AMIs.

Run as ``fedora-messaging --conf fedimg-messaging.toml consume`` with
``callback = "fedimg.consumer:Consumer"``. Dispositions:

- malformed message (missing or mistyped fields, a location that is not http(s)/file, a body too
  large to be pungi's), or a compose that cannot be read → logged with the reason, dropped;
- a status other than FINISHED / FINISHED_INCOMPLETE → acknowledged and ignored;
- a transient failure (AWS, network) → requeued, at most ``messaging.max_redeliveries`` times;
- anything else → acknowledged; the compose summary says what happened to each image.

No exception but Nack/Drop leaves the callback: fedora-messaging would halt the consumer on one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedora_messaging.exceptions import Drop, Nack

from fedimg import config as config_mod
from fedimg import logsafety
from fedimg.aws.clients import Clients
from fedimg.config import Settings
from fedimg.errors import ConfigError, FedimgError, InputError
from fedimg.events import Sink, fan_out, log_sink
from fedimg.pipeline import ComposeOutcome, Pipeline, Tester

log = logging.getLogger(__name__)

ACTIONABLE = ("FINISHED", "FINISHED_INCOMPLETE")
KNOWN_STATUSES = ("STARTED", "FINISHED", "FINISHED_INCOMPLETE", "DOOMED", "TERMINATED")
# pungi's messages are well under 2 KiB; anything this large is not one.
MAX_BODY_BYTES = 64 * 1024
OUTCOMES_KEPT = 32


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


def settings_from_consumer_config(consumer_config: Mapping[str, Any]) -> Settings:
    """``[consumer_config]`` names fedimg's TOML (``fedimg_config = "…"``) or holds its tables."""
    cc = dict(consumer_config)
    path = cc.pop("fedimg_config", None)
    if path is not None:
        if cc:
            raise ConfigError(
                f"consumer_config: give fedimg_config or inline tables, not both ({sorted(cc)})"
            )
        return config_mod.load(path)
    return config_mod.from_dict(cc)


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

    return Ec2BootTester(settings, clients)


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

            settings = settings_from_consumer_config(conf.get("consumer_config") or {})
        self.settings = settings
        self.pipeline = pipeline or build_pipeline(settings)
        self._requeue_delay = requeue_delay or _backoff
        self._deliveries: dict[str, int] = {}
        self._lock = threading.Lock()
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
        log.info("compose %s is %s: publishing", compose.compose_id, compose.status)
        try:
            outcome = self.pipeline.run_compose(compose.location)
        except FedimgError as e:
            self._requeue_or_drop(message, compose, e, e.retryable)
            return
        except Exception as e:  # a bug: never let it halt the consumer for every other compose
            log.exception("compose %s: unexpected error; dropping the message", compose.compose_id)
            raise Drop() from e
        self.outcomes.append(outcome)
        if outcome.retryable:
            failed = [i.image_name for i in outcome.images if i.status == "failed"]
            self._requeue_or_drop(message, compose, f"transient failure of {failed}", True)
        self._forget(message)

    def _requeue_or_drop(
        self, message: Any, compose: ComposeMessage, error: object, retryable: bool
    ) -> None:
        if not retryable:
            log.error("compose %s: %s; dropping the message", compose.compose_id, error)
            self._forget(message)
            raise Drop()
        with self._lock:
            seen = self._deliveries.get(message.id, 0) + 1
            self._deliveries[message.id] = seen
        if seen > self.settings.messaging.max_redeliveries:
            log.error(
                "compose %s: %s; giving up after %d redeliveries",
                compose.compose_id,
                error,
                seen - 1,
            )
            self._forget(message)
            raise Drop()
        delay = self._requeue_delay(seen)
        log.warning(
            "compose %s: %s; requeueing (attempt %d) in %.0f s",
            compose.compose_id,
            error,
            seen,
            delay,
        )
        time.sleep(delay)
        raise Nack()

    def _forget(self, message: Any) -> None:
        with self._lock:
            self._deliveries.pop(message.id, None)


def _backoff(attempt: int) -> float:
    """Seconds to wait before requeueing: RabbitMQ redelivers at once, so pace it here."""
    return float(min(300, 15 * 2 ** (attempt - 1)))
