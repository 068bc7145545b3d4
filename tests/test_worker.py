"""The image worker in-process: work messages, the outcome records in AWS, and the compose
summary published by whichever worker ends the last image — and again after a failed attempt.

Through a real broker and real `fedora-messaging consume` processes: test_consumer_broker.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from fedora_messaging.exceptions import Drop, Nack, PublishTimeout
from fedora_messaging.message import Message

from fedimg.aws.clients import Clients
from fedimg.completion import recorded_outcomes
from fedimg.compose import discover
from fedimg.config import Settings
from fedimg.errors import InputError
from fedimg.pipeline import Pipeline, identity_of
from fedimg.standins.samplecompose import SAMPLE_COMPOSE_ID
from fedimg.worker import Worker
from fedimg.workqueue import ImageWork, parse_work_message, work_for
from tests.helpers import served_compose, trusting

REGIONS = ("us-east-1", "us-west-2")


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_compose(tmp_path_factory.mktemp("compose"), 8, 0.25) as (url, _):
        yield url


@pytest.fixture
def worker_settings(settings: Settings, compose: str) -> Settings:
    s = trusting(settings, compose).with_aws(regions=REGIONS)
    return dataclasses.replace(
        s,
        test=dataclasses.replace(s.test, enabled=False),
        messaging=dataclasses.replace(s.messaging, max_redeliveries=1),
    )


def compose_work(settings: Settings, location: str) -> list[ImageWork]:
    """The work messages the compose consumer would queue for ``location``."""
    info, images = discover(location, settings.compose)
    listed = [(identity_of(i, info).key, i.image_name) for i in images]
    return work_for(info.compose_id, location, info.release_version, listed)


class Announced:
    """Stands in for fedora-messaging's publish; ``fail`` times it raises PublishTimeout."""

    def __init__(self, fail: int = 0) -> None:
        self.messages: list[Message] = []
        self.fail = fail

    def __call__(self, message: Message) -> None:
        if self.fail:
            self.fail -= 1
            raise PublishTimeout("broker away")
        self.messages.append(message)


def worker(settings: Settings, announced: Announced) -> Worker:
    return Worker(
        settings,
        Pipeline(settings, Clients(settings.aws)),
        requeue_delay=lambda n: 0.0,
        announce=announced,
        after_compose=lambda outcome: None,
    )


def delivered(work: ImageWork, count: int = 0) -> Message:
    return Message(topic="fedimg.work", body=work.body(), headers={"x-delivery-count": count})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"image_key": "x" * 32}, "its image is not among"),
        ({"images": []}, "'images' is not a list"),
        ({"location": "ftp://h/c"}, "not a URL"),
        ({"compose_id": ""}, "'compose_id'"),
        ({"images": [{"key": "0" * 31, "image_name": "a"}]}, "entry"),
    ],
)
def test_malformed_work_messages_are_refused_with_a_reason(
    change: dict[str, Any], reason: str
) -> None:
    work = work_for("C-1", "http://h/compose", "41", [("a" * 32, "a.raw.xz")])[0]
    assert parse_work_message(work.body()) == work
    with pytest.raises(InputError, match=reason):
        parse_work_message(work.body() | change)


def test_the_worker_ending_the_last_image_announces_the_compose_once(
    worker_settings: Settings, compose: str
) -> None:
    """Two workers, one image each: the first records its image and stays quiet; the second
    finds both records in AWS and publishes the summary, built from the records."""
    first_work, second_work = compose_work(worker_settings, compose)
    first, second = Announced(), Announced()
    worker(worker_settings, first)(delivered(first_work))
    assert first.messages == []
    worker(worker_settings, second)(delivered(second_work))
    (summary,) = second.messages
    assert summary.topic.endswith("fedimg.compose.complete")
    assert summary.body["compose_id"] == SAMPLE_COMPOSE_ID
    images = summary.body["images"]
    assert [i["image_name"] for i in images] == [first_work.image_name, second_work.image_name]
    assert {i["outcome"] for i in images} == {"published"}
    assert all(sorted(i["regions"]) == sorted(REGIONS) for i in images)
    clients = Clients(worker_settings.aws)
    records = recorded_outcomes(clients, "us-east-1", SAMPLE_COMPOSE_ID)
    assert set(records) == {first_work.image_key, second_work.image_key}


def test_a_summary_that_cannot_be_published_is_retried_by_the_redelivery(
    worker_settings: Settings, compose: str
) -> None:
    """The broker refuses the summary: the message is requeued (not acknowledged), and its
    redelivery re-runs the image, finds it done and publishes the summary."""
    works = compose_work(worker_settings, compose)
    announced = Announced(fail=1)
    w = worker(worker_settings, announced)
    w(delivered(works[0]))
    with pytest.raises(Nack):
        w(delivered(works[1]))
    assert announced.messages == []
    w(delivered(works[1], count=1))
    assert [m.topic.rsplit(".", 2)[-2:] for m in announced.messages] == [["compose", "complete"]]


def test_an_image_the_compose_does_not_hold_ends_failed_and_counts_as_ended(
    worker_settings: Settings, compose: str
) -> None:
    """Work naming an image the compose's metadata does not list cannot be run: it is recorded
    as failed, and the compose is still announced when the other image ends."""
    real, _ = compose_work(worker_settings, compose)
    bogus_key = "f" * 32
    listed = ((real.image_key, real.image_name), (bogus_key, "gone.raw.xz"))
    real = dataclasses.replace(real, images=listed)
    bogus = dataclasses.replace(real, image_key=bogus_key, image_name="gone.raw.xz")
    announced = Announced()
    w = worker(worker_settings, announced)
    w(delivered(bogus))  # a permanent failure: acknowledged, the summary says what happened
    w(delivered(real))
    (summary,) = announced.messages
    outcomes = {i["image_name"]: i["outcome"] for i in summary.body["images"]}
    assert outcomes == {real.image_name: "published", "gone.raw.xz": "failed"}
    assert "has no image gone.raw.xz" in summary.body["images"][1]["error"]


def test_a_transient_failure_on_the_last_delivery_is_recorded_and_dead_lettered(
    worker_settings: Settings, compose: str
) -> None:
    """A compose location that refuses connections: requeued while redeliveries are left; on
    the last one the image is recorded as failed and the message dropped (dead-lettered)."""
    refusing = "http://127.0.0.1:9/compose"
    s = trusting(worker_settings, refusing)
    (work, _) = compose_work(s, compose)
    work = dataclasses.replace(work, location=refusing)
    w = worker(s, Announced())
    with pytest.raises(Nack):
        w(delivered(work, count=0))
    assert recorded_outcomes(Clients(s.aws), "us-east-1", SAMPLE_COMPOSE_ID) == {}
    with pytest.raises(Drop):
        w(delivered(work, count=1))
    (record,) = recorded_outcomes(Clients(s.aws), "us-east-1", SAMPLE_COMPOSE_ID).values()
    assert record.status == "failed"
