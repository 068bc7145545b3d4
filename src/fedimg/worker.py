"""The image worker: the per-image stages for one work message at a time.

Run as ``fedora-messaging --conf fedimg-worker.toml consume`` with
``callback = "fedimg.worker:Worker"`` on the work queue the compose consumer fills (see
``fedimg-worker-messaging.example.toml``); any number of them, on any number of machines. For each
message (one image of one compose) a worker:

1. checks the message and the compose as the compose consumer does (trusted location, the
   compose is the one named) and finds its image in the compose's metadata;
2. runs the image through every stage (idempotent: a redelivered image finds its work done);
3. a transient failure with redeliveries left: requeued after a pause, nothing recorded;
4. otherwise the image has ended: its outcome is recorded in AWS (``fedimg.completion``), and if
   every image of the compose now has a record, ``fedimg.compose.complete`` is published;
5. only then is the message acknowledged (dropped, so dead-lettered, when the image failed).

A worker that dies anywhere before the acknowledgement leaves its message to be redelivered; the
run that gets it re-runs the image (finding everything done), records and checks again. So the
summary is published at least once, possibly twice (two last images ending together).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fedora_messaging import api
from fedora_messaging import exceptions as fm_exceptions
from fedora_messaging.exceptions import Drop, Nack
from fedora_messaging.message import Message

from fedimg import logsafety
from fedimg.announce import messages_for
from fedimg.completion import finished_compose, record_outcome
from fedimg.compose import ComposeImage, ComposeInfo, discover, verify_identity
from fedimg.config import Settings
from fedimg.delivery import (
    OneRunAtATime,
    Redeliveries,
    backoff,
    requeue_pause_from_config,
    settings_from_consumer_config,
)
from fedimg.errors import FedimgError, InputError, TransientError
from fedimg.events import log_sink
from fedimg.outcomes import IMAGE_FAILED
from fedimg.pipeline import (
    ComposeOutcome,
    ImageOutcome,
    Pipeline,
    compose_summary_event,
    identity_of,
)
from fedimg.trust import TrustedLocations
from fedimg.wiring import after_compose as after_compose_default
from fedimg.wiring import build_pipeline
from fedimg.workqueue import ImageWork, parse_work_message

log = logging.getLogger(__name__)


class Worker:
    """A fedora-messaging callback object for the work queue; one instance serves every message.

    ``announce`` publishes the compose summary's messages and raises on failure (default:
    fedora-messaging's publish); ``after_compose`` runs once this worker published a summary
    (default: production's pruning and catalog, ``fedimg.wiring.after_compose``).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        pipeline: Pipeline | None = None,
        *,
        requeue_delay: Callable[[int], float] | None = None,
        announce: Callable[[Message], None] | None = None,
        after_compose: Callable[[ComposeOutcome], None] | None = None,
    ) -> None:
        logsafety.install()
        if settings is None:
            from fedora_messaging.config import conf

            consumer_config = conf.get("consumer_config") or {}
            settings = settings_from_consumer_config(consumer_config)
            requeue_delay = requeue_delay or requeue_pause_from_config(consumer_config)
        if pipeline is None:
            pipeline = build_pipeline(settings)
        self.settings, self.pipeline = settings, pipeline
        self.trusted = TrustedLocations(settings.compose.trusted_locations)
        self.deliveries = Redeliveries(
            settings.messaging.max_redeliveries, requeue_delay or backoff
        )
        self._one_run_at_a_time = OneRunAtATime()
        self._announce = announce or api.publish
        self._after_compose = after_compose or (
            lambda outcome: after_compose_default(settings, pipeline.clients, outcome)
        )

    def __call__(self, message: Any) -> None:
        try:
            work = parse_work_message(message.body)
            self.trusted.check(work.location, "location")
        except InputError as e:
            log.warning("dropping work message %s: %s", message.id, e)
            raise Drop() from e
        what = f"compose {work.compose_id} image {work.image_name}"
        earlier = self.deliveries.earlier(message)
        if earlier:
            log.warning("%s: redelivery %d of %d", what, earlier, self.deliveries.limit)
        else:
            log.info("%s: starting", what)
        try:
            with self._one_run_at_a_time(f"{work.compose_id}/{work.image_key}"):
                outcome = self._run_to_the_end(message, work, what, earlier)
        except (Drop, Nack):
            raise
        except FedimgError as e:  # recording the end, or announcing the compose, failed
            self.deliveries.requeue_or_drop(message, what, e, e.retryable, earlier)
        except Exception as e:  # a bug: never let it halt the worker for every other image
            log.exception("%s: unexpected error; dropping the message", what)
            raise Drop() from e
        self.deliveries.forget(message)
        if outcome.status == IMAGE_FAILED and outcome.retryable:
            log.error("%s: gave up: %s; the message is dead-lettered", what, outcome.error)
            raise Drop()

    def _run_to_the_end(
        self, message: Any, work: ImageWork, what: str, earlier: int
    ) -> ImageOutcome:
        """The image's outcome once it has ended and is recorded; Nack while a transient failure
        has redeliveries left (then nothing is recorded: the image has not ended)."""
        last_chance = earlier >= self.deliveries.limit
        try:
            outcome = self._run(work)
        except FedimgError as e:  # the compose or its image could not be read
            outcome = _failed(work, str(e), e.retryable)
        if outcome.status == IMAGE_FAILED and outcome.retryable and not last_chance:
            self.deliveries.requeue_or_drop(message, what, outcome.error, True, earlier)
        self._finish(work, outcome)
        return outcome

    def _run(self, work: ImageWork) -> ImageOutcome:
        verify_identity(work.compose_id, work.location, self.settings.compose)
        info, images = discover(work.location, self.settings.compose)
        image = _image_of(work, info, images)
        return self.pipeline.run_image(image, info)

    def _finish(self, work: ImageWork, outcome: ImageOutcome) -> None:
        """Records the image's end in AWS; publishes the compose summary if it was the last."""
        clients, region = self.pipeline.clients, self.settings.aws.base_region
        record_outcome(clients, region, work.compose_id, work.image_key, outcome)
        log.info("compose %s image %s: ended %s", work.compose_id, work.image_name, outcome.status)
        compose = finished_compose(clients, region, work.compose_id, work.release, work.images)
        if compose is not None:
            self._publish_summary(compose)

    def _publish_summary(self, compose: ComposeOutcome) -> None:
        event = compose_summary_event(compose)
        log_sink(event)
        if self.settings.messaging.publish:
            for m in messages_for(event):
                try:
                    self._announce(m)
                except fm_exceptions.BaseException as e:
                    raise TransientError(f"compose {compose.compose_id}: summary: {e}") from e
        log.info("compose %s: every image has ended; summary published", compose.compose_id)
        self._after_compose(compose)


def _image_of(work: ImageWork, info: ComposeInfo, images: list[ComposeImage]) -> ComposeImage:
    for image in images:
        if identity_of(image, info).key == work.image_key:
            return image
    raise InputError(
        f"compose {work.compose_id} has no image {work.image_name} of key {work.image_key}"
    )


def _failed(work: ImageWork, error: str, retryable: bool) -> ImageOutcome:
    """The outcome of an image that could not be run (its arch and subvariant not known)."""
    return ImageOutcome(work.image_name, "", "", IMAGE_FAILED, error=error, retryable=retryable)
