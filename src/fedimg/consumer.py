"""The fedora-messaging consumer: a finished compose on the bus becomes published AMIs.

Run as ``fedora-messaging --conf fedimg-messaging.toml consume`` with
``callback = "fedimg.consumer:Consumer"``. Two roles, chosen by ``[consumer_config]``:

- one process does everything (the default): the whole pipeline runs here, image by image;
- with ``work_queue`` set, it is the compose consumer of a split deployment: it discovers the
  images and puts one work message per image on that queue (with publisher confirms, before the
  compose message is acknowledged); ``fedimg.worker`` processes run them and announce the compose.

Dispositions:

- malformed message (missing or mistyped fields, a location that is not http(s)/file, a body too
  large to be pungi's), or a compose that cannot be read → logged with the reason, dropped;
- a location outside ``compose.trusted_locations`` → dropped with a warning naming it, before
  anything is fetched; a compose whose metadata is not the compose the message names (its
  ``compose_id`` differs from composeinfo.json's or images.json's, or the compose's release and
  date do not make that id) → dropped, the three ids in the log;
- a status other than FINISHED / FINISHED_INCOMPLETE → acknowledged and ignored;
- a transient failure (AWS, network, the work queue) → requeued after a pause, until the message
  has been redelivered ``messaging.max_redeliveries`` times; then dropped (dead-lettered by the
  queue); the count is the broker's (``fedimg.delivery``);
- anything else → acknowledged; the compose summary says what happened to each image.

No exception but Nack/Drop leaves the callback: fedora-messaging would halt the consumer on one.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedora_messaging.exceptions import Drop

from fedimg import logsafety
from fedimg.compose import discover, verify_identity
from fedimg.config import Settings
from fedimg.delivery import (
    OneRunAtATime,
    Redeliveries,
    backoff,
    requeue_pause_from_config,
    settings_from_consumer_config,
)
from fedimg.errors import ConfigError, FedimgError, InputError
from fedimg.outcomes import IMAGE_FAILED
from fedimg.pipeline import ComposeOutcome, Pipeline, compose_summary_event, identity_of
from fedimg.trust import TrustedLocations
from fedimg.wiring import after_compose, build_pipeline
from fedimg.workqueue import WorkPublisher, work_for, work_queue_arguments

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


def work_publisher_from_config(
    consumer_config: Mapping[str, Any], settings: Settings
) -> WorkPublisher | None:
    """``work_queue`` (and optionally ``work_amqp_url``, default: fedora-messaging's
    ``amqp_url``, with its ``[tls]``) makes this the compose consumer of a split deployment."""
    queue = consumer_config.get("work_queue")
    if queue is None:
        return None
    if not isinstance(queue, str) or not queue:
        raise ConfigError(f"consumer_config.work_queue: {queue!r} is not a queue name")
    from fedora_messaging.config import conf

    url = consumer_config.get("work_amqp_url") or conf["amqp_url"]
    if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
        raise ConfigError(f"consumer_config.work_amqp_url: {url!r} is not an AMQP URL")
    arguments = work_queue_arguments(settings.messaging.max_redeliveries, queue)
    return WorkPublisher(url, queue, arguments, conf.get("tls") or {})


class Consumer:
    """A fedora-messaging callback object; one instance serves every message.

    ``work``: the work queue of a split deployment (None: this process runs every image).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        pipeline: Pipeline | None = None,
        *,
        requeue_delay: Callable[[int], float] | None = None,
        work: WorkPublisher | None = None,
    ) -> None:
        logsafety.install()
        if settings is None:
            from fedora_messaging.config import conf

            consumer_config = conf.get("consumer_config") or {}
            settings = settings_from_consumer_config(consumer_config)
            requeue_delay = requeue_delay or requeue_pause_from_config(consumer_config)
            work = work or work_publisher_from_config(consumer_config, settings)
        self.settings = settings
        self.trusted = TrustedLocations(settings.compose.trusted_locations)
        self.pipeline = pipeline or build_pipeline(settings)
        self.work = work
        limit = settings.messaging.max_redeliveries
        self.deliveries = Redeliveries(limit, requeue_delay or backoff)
        self._one_run_at_a_time = OneRunAtATime()
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
        what = f"compose {compose.compose_id}"
        earlier = self.deliveries.earlier(message)
        limit = self.deliveries.limit
        if earlier > limit:
            # Only when the queue's own delivery limit is higher than fedimg's, or missing.
            log.error(
                "%s: delivery count %d is past the limit of %d redeliveries; dropping",
                what,
                earlier,
                limit,
            )
            self.deliveries.forget(message)
            raise Drop()
        if earlier:
            log.warning(
                "%s is %s: publishing, redelivery %d of %d", what, compose.status, earlier, limit
            )
        else:
            log.info("%s is %s: publishing", what, compose.status)
        try:
            with self._one_run_at_a_time(compose.compose_id):
                verify_identity(compose.compose_id, compose.location, self.settings.compose)
                if self.work is not None:
                    self._queue_images(compose)
                    self.deliveries.forget(message)
                    return
                outcome = self.pipeline.run_compose(compose.location)
        except FedimgError as e:
            self.deliveries.requeue_or_drop(message, what, e, e.retryable, earlier)
            return
        except Exception as e:  # a bug: never let it halt the consumer for every other compose
            log.exception("%s: unexpected error; dropping the message", what)
            raise Drop() from e
        self.outcomes.append(outcome)
        after_compose(self.settings, self.pipeline.clients, outcome)
        if outcome.retryable:
            failed = [i.image_name for i in outcome.images if i.status == IMAGE_FAILED]
            self.deliveries.requeue_or_drop(
                message, what, f"transient failure of {failed}", True, earlier
            )
        self.deliveries.forget(message)

    def _queue_images(self, compose: ComposeMessage) -> None:
        """One work message per image, confirmed by the broker before this returns."""
        assert self.work is not None
        info, images = discover(compose.location, self.settings.compose)
        if not images:  # no worker will hear of this compose: announce it here
            self.pipeline.sink(
                compose_summary_event(ComposeOutcome(info.compose_id, info.release_version, []))
            )
            return
        listed = [(identity_of(i, info).key, i.image_name) for i in images]
        self.work.publish(work_for(info.compose_id, compose.location, info.release_version, listed))
        log.info(
            "compose %s: %d images queued on %s for the workers",
            info.compose_id,
            len(images),
            self.work.queue,
        )
