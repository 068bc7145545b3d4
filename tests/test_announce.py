"""Pipeline events → bus messages: the right class, topic and body; failures never escape."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from fedimg_messages import (
    ComposeCompleteV1,
    ImageCopyV1,
    ImagePublishV1,
    ImageTestV1,
    ImageUploadV1,
)
from fedora_image_uploader_messages import AwsPublishedV1
from fedora_messaging import exceptions, message, testing

from fedimg import announce
from fedimg.announce import MAX_CHECK_OUTPUT, bus_sink, messages_for, uploader_published_message
from fedimg.errors import ConfigError
from fedimg.events import Event

AMI = "ami-0123456789abcdef0"
AMI2 = "ami-0fedcba9876543210"
SNAP = "snap-0123456789abcdef0"
NAME = "Fedora-Cloud-Base-AmazonEC2-43-20251101.0.x86_64"
COMPOSE = "Fedora-Cloud-43-20251101.0"
URL = f"https://kojipkgs.example/compose/{NAME}.raw.xz"


def detail(**more: Any) -> dict[str, Any]:
    base = {
        "compose_id": COMPOSE,
        "image_name": NAME,
        "image_url": URL,
        "arch": "x86_64",
        "subvariant": "Cloud_Base",
        "release": "43",
    }
    return {**base, **more}


def event(stage: str, status: str, region: str = "us-east-1", **more: Any) -> Event:
    return Event(stage=stage, status=status, image=NAME, region=region, detail=detail(**more))


def sent_for(*events: Event) -> list[message.Message]:
    sent: list[message.Message] = []
    sink = bus_sink(sent.append, backoff=0)
    for e in events:
        sink(e)
    for m in sent:
        m.validate()
    return sent


def test_upload_completed_keeps_the_original_fields() -> None:
    [msg] = sent_for(event("upload", "completed", ami=AMI, snapshot=SNAP, volume_type="gp3"))
    assert type(msg) is ImageUploadV1
    assert msg.topic == "fedimg.image.upload"
    assert msg.severity == message.INFO
    assert msg.body == {
        "image_name": NAME,
        "image_url": URL,
        "compose_id": COMPOSE,
        "compose": COMPOSE,
        "arch": "x86_64",
        "subvariant": "Cloud_Base",
        "release": "43",
        "status": "completed",
        "service": "EC2",
        "region": "us-east-1",
        "destination": "us-east-1",
        "ami": AMI,
        "snapshot": SNAP,
        "extra": {"virt_type": "hvm", "vol_type": "gp3", "id": AMI},
    }


def test_upload_started_and_failed() -> None:
    started, failed = sent_for(
        event("upload", "started"), event("upload", "failed", error="SnapshotLimitExceeded")
    )
    assert started.body["status"] == "started" and "ami" not in started.body
    assert started.severity == message.DEBUG
    assert failed.body["error"] == "SnapshotLimitExceeded"
    assert failed.severity == message.WARNING
    assert failed.summary.endswith(": SnapshotLimitExceeded")


def test_test_completed_carries_checks_and_truncates_long_output() -> None:
    checks = [
        {"name": "true", "outcome": "PASSED", "output": ""},
        {"name": "journal", "outcome": "FAILED", "output": "x" * 5000 + "the end"},
    ]
    e = event(
        "test",
        "completed",
        ami=AMI,
        outcome="FAILED",
        checks=checks,
        kind="ec2",
        firmware="uefi",
    )
    [msg] = sent_for(e)
    assert type(msg) is ImageTestV1
    assert (msg.body["outcome"], msg.body["kind"], msg.body["firmware"]) == (
        "FAILED",
        "ec2",
        "uefi",
    )
    assert [c["name"] for c in msg.body["checks"]] == ["true", "journal"]
    output = msg.body["checks"][1]["output"]
    assert len(output) == MAX_CHECK_OUTPUT and output.endswith("the end")


def test_local_test_without_ami() -> None:
    [msg] = sent_for(event("test", "started", kind="local", firmware=""))
    assert msg.body["kind"] == "local" and "ami" not in msg.body


def test_copy_completed() -> None:
    e = event("copy", "completed", "eu-west-1", ami=AMI2, source_ami=AMI, source_region="us-east-1")
    [msg] = sent_for(e)
    assert type(msg) is ImageCopyV1
    assert msg.topic == "fedimg.image.copy"
    assert (msg.body["region"], msg.body["destination"]) == ("eu-west-1", "eu-west-1")
    assert (msg.body["ami"], msg.body["source_ami"]) == (AMI2, AMI)
    assert msg.body["extra"] == {"virt_type": "hvm", "id": AMI2, "source_image_id": AMI}


def test_publish_completed_also_sends_the_uploader_message() -> None:
    regions = {"us-east-1": AMI, "eu-west-1": AMI2}
    ours, theirs = sent_for(event("publish", "completed", "", regions=regions, public=True))
    assert type(ours) is ImagePublishV1
    assert ours.body["regions"] == regions and ours.body["public"] is True
    assert "region" not in ours.body
    assert type(theirs) is AwsPublishedV1
    assert message.get_name(type(theirs)) == "fedora_image_uploader.published.v1.aws"
    assert theirs.body == {
        "architecture": "x86_64",
        "compose_id": COMPOSE,
        "image_name": NAME,
        "regions": regions,
        "release": 43,
        "subvariant": "Cloud_Base",
    }
    # Validated with the uploader package's own schema.
    AwsPublishedV1(body=theirs.body).validate()


def test_publish_failed_sends_no_uploader_message() -> None:
    [msg] = sent_for(event("publish", "failed", "", regions={}, public=False, error="denied"))
    assert type(msg) is ImagePublishV1 and msg.body["error"] == "denied"


def test_uploader_message_skipped_when_release_is_not_a_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    e = event("publish", "completed", "", regions={"us-east-1": AMI}, public=True, release="")
    [msg] = sent_for(e)
    assert type(msg) is ImagePublishV1
    assert "release '' is not a number" in caplog.text


def test_uploader_published_message() -> None:
    msg = uploader_published_message(COMPOSE, 43, "Cloud_Base", "aarch64", NAME, {"us-east-1": AMI})
    assert type(msg) is AwsPublishedV1
    msg.validate()
    assert msg.topic == "fedora_image_uploader.published.v1.aws"
    assert msg.body["release"] == 43 and msg.body["architecture"] == "aarch64"


def test_compose_complete() -> None:
    images = [
        {
            "image_name": NAME,
            "arch": "x86_64",
            "subvariant": "Cloud_Base",
            "outcome": "published",
            "regions": {"us-east-1": AMI},
            "error": "",
        },
        {
            "image_name": NAME.replace("x86_64", "aarch64"),
            "arch": "aarch64",
            "subvariant": "Cloud_Base",
            "outcome": "failed",
            "regions": {},
            "error": "upload: throttled",
        },
    ]
    e = Event(
        "compose", "completed", detail={"compose_id": COMPOSE, "release": "43", "images": images}
    )
    [msg] = sent_for(e)
    assert type(msg) is ComposeCompleteV1
    assert msg.topic == "fedimg.compose.complete"
    assert msg.severity == message.WARNING
    assert msg.body["compose_id"] == COMPOSE and msg.body["release"] == "43"
    published, failed = msg.body["images"]
    # An empty error is left out.
    assert published == {k: v for k, v in images[0].items() if k != "error"}
    assert failed["outcome"] == "failed" and failed["error"] == "upload: throttled"


def test_progress_and_unknown_events_send_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert sent_for(Event("upload", "progress", NAME, "us-east-1", detail={"done": 1})) == []
    assert sent_for(Event("resultsdb", "completed", NAME)) == []
    assert messages_for(Event("upload", "paused", NAME)) == []
    assert "no message for resultsdb completed" in caplog.text


def test_default_publish_is_fedora_messaging() -> None:
    with testing.mock_sends(ImageUploadV1):
        bus_sink()(event("upload", "started"))


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match="prod, stg"):
        bus_sink(lambda m: None, environment="dev")


class FlakyPublish:
    """Raises the given errors in turn, then records."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.sent: list[message.Message] = []

    def __call__(self, msg: message.Message) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(msg)


def test_transient_failures_are_retried() -> None:
    publish = FlakyPublish(exceptions.PublishTimeout("slow"), exceptions.ConnectionException())
    bus_sink(publish, backoff=0)(event("upload", "started"))
    assert publish.calls == 3 and len(publish.sent) == 1


def test_a_down_broker_never_breaks_the_pipeline(caplog: pytest.LogCaptureFixture) -> None:
    publish = FlakyPublish(*[exceptions.PublishTimeout("down")] * 4)
    sink = bus_sink(publish, attempts=3, backoff=0)
    sink(event("upload", "started"))
    assert publish.calls == 3 and "gave up" in caplog.text
    # While the broker is down each message gets one attempt, not a full retry budget.
    sink(event("upload", "started"))
    assert publish.calls == 4
    # Once it answers, messages go through (and get full retries again).
    sink(event("upload", "started"))
    assert publish.calls == 5 and len(publish.sent) == 1


@pytest.mark.parametrize(
    "error",
    [
        exceptions.ValidationError("bad"),
        exceptions.PublishReturned("no route"),
        exceptions.PublishForbidden("no"),
        RuntimeError("surprise"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_failures_are_logged_not_retried(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    publish = FlakyPublish(error)
    bus_sink(publish, backoff=0)(event("upload", "started"))
    assert publish.calls == 1
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_schema_violations_are_bugs_and_are_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    publish = FlakyPublish()
    bus_sink(publish)(event("upload", "completed", ami="not-an-ami", snapshot=SNAP))
    assert publish.calls == 0
    assert "bug: fedimg.image.upload cannot be sent" in caplog.text


def test_malformed_events_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    publish = FlakyPublish()
    bus_sink(publish)(event("copy", "completed", "eu-west-1", ami=AMI2))  # no source_ami
    assert publish.calls == 0
    assert "cannot build a message for copy completed" in caplog.text


def test_topic_prefix_of_another_environment_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_config = SimpleNamespace(conf={"topic_prefix": "org.fedoraproject.stg"})
    monkeypatch.setattr(announce, "fm_config", fake_config)
    bus_sink(environment="stg")
    assert "does not match" not in caplog.text
    bus_sink(environment="prod")
    assert (
        "topic_prefix 'org.fedoraproject.stg' does not match messaging.environment" in caplog.text
    )
