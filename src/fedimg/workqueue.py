"""Image work on the broker: the compose consumer's one message per image, and how it is sent.

A work message names the compose (id, location, release), its image (identity key and name) and
every image of the compose, so that whichever worker finishes last can tell from AWS's records
that the compose is complete (see ``fedimg.completion``).

Sent with plain pika rather than fedora-messaging's publish: straight to the work queue through
the default exchange, never on the public bus; ``mandatory``, so that a missing queue is an error
instead of a silently dropped message; persistent; and with publisher confirms, so that the
compose message is acknowledged only once the broker holds every image's work.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from fedimg.errors import InputError, TransientError

# The schema header fedora-messaging's consumer reads: the base schema, the body is checked here.
SCHEMA_HEADERS = {"fedora_messaging_schema": "base.message", "fedora_messaging_severity": 20}
# A compose holds a handful of EC2 images; a message listing more is not ours.
MAX_IMAGES = 64
MAX_BODY_BYTES = 64 * 1024
_KEY = re.compile(r"^[0-9a-f]{32}$")
# Connecting to the broker, and each socket read or write.
CONNECT_TIMEOUT_S = 10.0
# Every work message of one compose confirmed by the broker (a quorum queue confirms once a
# majority of its replicas hold it) within this, or the compose message is requeued.
PUBLISH_DEADLINE_S = 60.0


@dataclass(frozen=True)
class ImageWork:
    """One image of one compose, to be run through the per-image stages by a worker."""

    compose_id: str
    location: str
    release: str
    image_key: str
    image_name: str
    # (identity key, image name) of every image of the compose, this one included.
    images: tuple[tuple[str, str], ...]

    def body(self) -> dict[str, Any]:
        return {
            "compose_id": self.compose_id,
            "location": self.location,
            "release": self.release,
            "image_key": self.image_key,
            "image_name": self.image_name,
            "images": [{"key": k, "image_name": n} for k, n in self.images],
        }


def work_for(
    compose_id: str, location: str, release: str, images: Sequence[tuple[str, str]]
) -> list[ImageWork]:
    """One work item per image; ``images``: (identity key, image name) in the compose's order."""
    listed = tuple(images)
    return [ImageWork(compose_id, location, release, k, n, listed) for k, n in listed]


def parse_work_message(body: Any) -> ImageWork:
    """The work a message asks for, or InputError naming what is wrong with it."""
    if not isinstance(body, Mapping):
        raise InputError(f"work message body is a {type(body).__name__}, not an object")
    if len(json.dumps(body, default=str)) > MAX_BODY_BYTES:
        raise InputError("work message body is far larger than fedimg's")
    fields = {}
    for field in ("compose_id", "location", "release", "image_key", "image_name"):
        value = body.get(field)
        if not isinstance(value, str) or (not value and field != "release"):
            raise InputError(f"work message field {field!r} is missing or not a non-empty string")
        fields[field] = value
    if not fields["location"].startswith(("http://", "https://", "file://", "/")):
        raise InputError(f"work message location {fields['location']!r} is not a URL or a path")
    images = body.get("images")
    if not isinstance(images, list) or not 0 < len(images) <= MAX_IMAGES:
        raise InputError(f"work message 'images' is not a list of 1 to {MAX_IMAGES} images")
    listed = []
    for entry in images:
        key = entry.get("key") if isinstance(entry, Mapping) else None
        name = entry.get("image_name") if isinstance(entry, Mapping) else None
        if not isinstance(key, str) or not _KEY.match(key) or not isinstance(name, str):
            raise InputError(f"work message 'images' entry {entry!r} is not {{key, image_name}}")
        listed.append((key, name))
    if (fields["image_key"], fields["image_name"]) not in listed:
        raise InputError("work message: its image is not among the compose's 'images'")
    return ImageWork(images=tuple(listed), **fields)


def work_queue_arguments(max_redeliveries: int, queue: str) -> dict[str, Any]:
    """The work queue's arguments when the compose consumer is the first to declare it: a quorum
    queue with fedimg's delivery limit, dead-lettering to ``<queue>.dead``. (An existing queue is
    used as it is: whichever of consumer and workers declares it first decides.)"""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": max_redeliveries,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{queue}.dead",
    }


class WorkPublisher:
    """Puts image work on the queue ``queue`` of the broker at ``amqp_url``.

    ``tls``: fedora-messaging's ``[tls]`` table (``ca_cert``, ``keyfile``, ``certfile``), used
    for ``amqps://`` URLs the way fedora-messaging uses it.
    """

    def __init__(
        self,
        amqp_url: str,
        queue: str,
        arguments: Mapping[str, Any],
        tls: Mapping[str, Any] | None = None,
        *,
        deadline_s: float = PUBLISH_DEADLINE_S,
    ) -> None:
        self.queue, self.arguments = queue, dict(arguments)
        self._params = _parameters(amqp_url, tls or {})
        self._deadline = deadline_s

    def publish(self, work: Sequence[ImageWork]) -> None:
        """Returns once the broker confirmed every message; TransientError otherwise.

        pika's blocking publish has no deadline of its own, so it runs in a thread this one waits
        for; one that overruns is abandoned (its messages may still arrive: work is idempotent).
        """
        errors: list[BaseException] = []

        def send() -> None:
            try:
                self._send(work)
            except BaseException as e:  # handed to the waiting thread
                errors.append(e)

        thread = threading.Thread(target=send, name="work-publish", daemon=True)
        thread.start()
        thread.join(self._deadline)
        if thread.is_alive():
            raise TransientError(
                f"work queue {self.queue}: the broker did not confirm within {self._deadline} s"
            )
        if errors:
            e = errors[0]
            if isinstance(e, pika.exceptions.AMQPError | OSError):
                raise TransientError(f"work queue {self.queue}: {type(e).__name__}: {e}") from e
            raise e

    def _send(self, work: Sequence[ImageWork]) -> None:
        connection = pika.BlockingConnection(self._params)
        try:
            channel = connection.channel()
            try:
                channel.queue_declare(self.queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code != 404:
                    raise
                channel = connection.channel()
                channel.queue_declare(self.queue, durable=True, arguments=self.arguments)
            channel.confirm_delivery()
            for item in work:
                # Raises UnroutableError (no such queue) or NackError (the broker refused it).
                channel.basic_publish(
                    "",
                    self.queue,
                    json.dumps(item.body()).encode(),
                    pika.BasicProperties(
                        content_type="application/json",
                        content_encoding="utf-8",
                        delivery_mode=pika.DeliveryMode.Persistent,
                        message_id=str(uuid.uuid4()),
                        headers=dict(SCHEMA_HEADERS),
                    ),
                    mandatory=True,
                )
        finally:
            if connection.is_open:
                connection.close()


def _parameters(amqp_url: str, tls: Mapping[str, Any]) -> pika.URLParameters:
    params = pika.URLParameters(amqp_url)
    params.socket_timeout = CONNECT_TIMEOUT_S
    params.stack_timeout = CONNECT_TIMEOUT_S * 2
    params.blocked_connection_timeout = PUBLISH_DEADLINE_S
    params.connection_attempts = 1
    if amqp_url.startswith("amqps://"):
        context = ssl.create_default_context(cafile=tls.get("ca_cert") or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        cert, key = tls.get("certfile"), tls.get("keyfile")
        if cert and key:
            context.load_cert_chain(cert, key)
            params.credentials = pika.credentials.ExternalCredentials()
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    return params
