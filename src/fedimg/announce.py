"""Tell the bus what the pipeline did: pipeline events become fedora-messaging messages.

``bus_sink`` is an events sink (see ``fedimg.events``). It maps each event to one of fedimg's
schema classes (package ``fedimg-messages``), and a published image also to the
``fedora_image_uploader.published.v1.aws`` message that Fedora's website tooling reads.
Publishing never breaks the pipeline: transient broker failures are retried a bounded number of
times, everything else is logged. Delivery is at least once (a timed-out publish may have
reached the broker), so consumers deduplicate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fedimg_messages import (
    ComposeCompleteV1,
    ImageCopyV1,
    ImagePublishV1,
    ImageTestV1,
    ImageUploadV1,
)
from fedora_messaging import api, exceptions
from fedora_messaging import config as fm_config
from fedora_messaging.message import DEBUG, INFO, WARNING, Message, dumps, get_class

from fedimg.errors import ConfigError
from fedimg.events import Event, Sink

log = logging.getLogger(__name__)

Publish = Callable[[Message], None]

ENVIRONMENTS = ("prod", "stg")
# fedora-image-uploader's schema (package fedora-image-uploader-messages), looked up by its entry
# point name: the name that goes into the message's headers.
UPLOADER_AWS_SCHEMA = "fedora_image_uploader.published.v1.aws"
# Attempts per message while the broker answers; one publish waits up to 30 s (fedora-messaging's
# default), so 3 attempts with 2 s and 4 s pauses bound a message at ~100 s.
ATTEMPTS = 3
BACKOFF_SECONDS = 2.0
# Check output is for humans skimming a message; the full output goes to logs and ResultsDB.
MAX_CHECK_OUTPUT = 2000
_SEVERITY = {"started": DEBUG, "completed": INFO, "failed": WARNING}


def bus_sink(
    publish: Publish = api.publish,
    environment: str = "prod",
    *,
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF_SECONDS,
) -> Sink:
    """A sink publishing each event's messages with ``publish``; it never raises.

    ``environment`` (prod/stg) must agree with fedora-messaging's ``topic_prefix``, which puts
    ``org.fedoraproject.<env>.`` in front of every topic on the wire.
    """
    if environment not in ENVIRONMENTS:
        raise ConfigError(
            f"messaging.environment must be one of {', '.join(ENVIRONMENTS)}: {environment!r}"
        )
    if publish is api.publish:
        _check_topic_prefix(environment)
    sender = _Sender(publish, attempts, backoff)

    def sink(event: Event) -> None:
        try:
            messages = messages_for(event)
        except (LookupError, TypeError, ValueError):
            log.exception("bus: cannot build a message for %s %s %s", *_what(event))
            return
        for message in messages:
            sender.send(message)

    return sink


def messages_for(event: Event) -> list[Message]:
    """The messages announcing ``event`` (none for progress or unknown events)."""
    if event.status == "progress":
        return []
    build = _BUILDERS.get(event.stage)
    if build is None or event.status not in _SEVERITY:
        log.warning("bus: no message for %s %s %s", *_what(event))
        return []
    messages = [build(event)]
    if event.stage == "publish" and event.status == "completed":
        messages += _uploader_message(event)
    return messages


def uploader_published_message(
    compose_id: str,
    release: int,
    subvariant: str,
    arch: str,
    image_name: str,
    regions: dict[str, str],
) -> Message:
    """fedora-image-uploader's "AMIs published" message, which Fedora's website reads.

    Raises LookupError if the package fedora-image-uploader-messages is not installed.
    """
    cls = get_class(UPLOADER_AWS_SCHEMA)
    if cls is Message:
        raise LookupError(f"schema {UPLOADER_AWS_SCHEMA} not installed")
    body = {
        "architecture": arch,
        "compose_id": compose_id,
        "image_name": image_name,
        "regions": dict(regions),
        "release": release,
        "subvariant": subvariant,
    }
    message: Message = cls(body=body)
    return message


class _Sender:
    """Publishes with bounded retries; after giving up once, tries each message only once until
    the broker answers again, so that an outage does not stall every stage for minutes."""

    def __init__(self, publish: Publish, attempts: int, backoff: float) -> None:
        self.publish = publish
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.broker_down = False

    def send(self, message: Message) -> bool:
        try:
            # Validates and serializes as publish will, so that a fake publish catches it too.
            dumps(message)
        except (exceptions.ValidationError, TypeError) as e:
            log.error("bus: bug: %s cannot be sent: %s", message.topic, e)
            return False
        attempts = 1 if self.broker_down else self.attempts
        for attempt in range(1, attempts + 1):
            try:
                self.publish(message)
            except (exceptions.PublishTimeout, exceptions.ConnectionException) as e:
                if attempt == attempts:
                    self.broker_down = True
                    log.error(
                        "bus: gave up on %s after %d attempts: %s", _name(message), attempt, e
                    )
                    return False
                pause = self.backoff * 2 ** (attempt - 1)
                log.warning(
                    "bus: %s not published (%s); retrying in %.0f s", _name(message), e, pause
                )
                time.sleep(pause)
            except exceptions.ValidationError as e:
                log.error("bus: bug: %s rejected by its schema: %s", _name(message), e)
                return False
            except exceptions.PublishException as e:
                # Returned or forbidden: the broker refuses this message; retrying cannot help.
                log.error("bus: broker refused %s: %s", _name(message), e)
                return False
            except Exception:
                log.exception("bus: publishing %s failed", _name(message))
                return False
            else:
                self.broker_down = False
                log.debug("bus: published %s", _name(message))
                return True
        return False  # pragma: no cover - the loop always returns


def _upload(event: Event) -> Message:
    body = _regional(event)
    _put(body, "ami", event.detail.get("ami"))
    _put(body, "snapshot", event.detail.get("snapshot"))
    return _message(ImageUploadV1, event, body)


def _test(event: Event) -> Message:
    d = event.detail
    body = _regional(event)
    body["kind"] = d.get("kind", "ec2")
    _put(body, "ami", d.get("ami"))
    _put(body, "outcome", d.get("outcome"))
    if "firmware" in d:
        body["firmware"] = d["firmware"]
    if "checks" in d:
        body["checks"] = [
            {
                "name": str(c["name"]),
                "outcome": str(c["outcome"]),
                "output": str(c.get("output", ""))[-MAX_CHECK_OUTPUT:],
            }
            for c in d["checks"]
        ]
    return _message(ImageTestV1, event, body)


def _copy(event: Event) -> Message:
    d = event.detail
    body = _regional(event)
    _put(body, "ami", d.get("ami"))
    body["source_ami"] = d["source_ami"]
    body["source_region"] = d["source_region"]
    body["extra"]["source_image_id"] = d["source_ami"]
    return _message(ImageCopyV1, event, body)


def _publish(event: Event) -> Message:
    body = _image(event)
    body["regions"] = dict(event.detail.get("regions", {}))
    body["public"] = bool(event.detail.get("public", False))
    return _message(ImagePublishV1, event, body)


def _compose(event: Event) -> Message:
    d = event.detail
    images = []
    for i in d.get("images", []):
        image = {
            "image_name": i["image_name"],
            "arch": i.get("arch", ""),
            "subvariant": i.get("subvariant", ""),
            "outcome": i["outcome"],
            "regions": dict(i.get("regions", {})),
        }
        _put(image, "error", i.get("error"))
        images.append(image)
    body = {"compose_id": d["compose_id"], "release": str(d.get("release", "")), "images": images}
    failed = any(i["outcome"] != "published" for i in images)
    message: Message = ComposeCompleteV1(body=body, severity=WARNING if failed else INFO)
    return message


_BUILDERS: dict[str, Callable[[Event], Message]] = {
    "upload": _upload,
    "test": _test,
    "copy": _copy,
    "publish": _publish,
    "compose": _compose,
}


def _image(event: Event) -> dict[str, Any]:
    """The fields of every image message, the original fedimg ones included."""
    d = event.detail
    compose_id = str(d.get("compose_id", ""))
    extra: dict[str, Any] = {"virt_type": "hvm"}
    _put(extra, "vol_type", d.get("volume_type"))
    _put(extra, "id", d.get("ami"))
    body: dict[str, Any] = {
        "image_name": event.image or d["image_name"],
        "image_url": str(d.get("image_url", "")),
        "compose_id": compose_id,
        "compose": compose_id,
        "arch": str(d.get("arch", "")),
        "subvariant": str(d.get("subvariant", "")),
        "release": str(d.get("release", "")),
        "status": event.status,
        "service": "EC2",
        "extra": extra,
    }
    if event.status == "failed":
        _put(body, "error", str(d.get("error", "")))
    return body


def _regional(event: Event) -> dict[str, Any]:
    body = _image(event)
    body["region"] = body["destination"] = event.region
    return body


def _message(cls: type[Message], event: Event, body: dict[str, Any]) -> Message:
    message: Message = cls(body=body, severity=_SEVERITY[event.status])
    return message


def _uploader_message(event: Event) -> list[Message]:
    d = event.detail
    try:
        release = int(d.get("release", ""))
    except (TypeError, ValueError):
        log.warning(
            "bus: %s: release %r is not a number; not sending %s",
            event.image,
            d.get("release"),
            UPLOADER_AWS_SCHEMA,
        )
        return []
    message = uploader_published_message(
        compose_id=str(d.get("compose_id", "")),
        release=release,
        subvariant=str(d.get("subvariant", "")),
        arch=str(d.get("arch", "")),
        image_name=event.image or d["image_name"],
        regions=dict(d.get("regions", {})),
    )
    return [message]


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    """Sets ``key`` only to a real value: the schemas reject empty ids."""
    if value not in (None, ""):
        target[key] = value


def _check_topic_prefix(environment: str) -> None:
    expected = f"org.fedoraproject.{environment}"
    prefix = fm_config.conf["topic_prefix"].rstrip(".")
    if prefix not in ("", expected):
        log.warning(
            "fedora-messaging topic_prefix %r does not match messaging.environment %r (%s)",
            prefix,
            environment,
            expected,
        )


def _name(message: Message) -> str:
    body = message.body
    parts = [message.topic, body.get("status", ""), body.get("image_name", "")]
    parts += [body.get("region", "") or body.get("compose_id", "")]
    return " ".join(p for p in parts if p)


def _what(event: Event) -> tuple[str, str, str]:
    return event.stage, event.status, event.image or event.detail.get("compose_id", "")
