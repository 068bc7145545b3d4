"""The consumer in-process: message dispositions, the delivery count and the requeue pause.

Through a real broker and real `fedora-messaging consume` processes: test_consumer_broker.py.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fedora_messaging.exceptions import Drop, Nack
from fedora_messaging.message import Message

from fedimg.aws.clients import Clients
from fedimg.config import Settings
from fedimg.consumer import Consumer, parse_compose_message
from fedimg.delivery import backoff, requeue_pause_from_config, settings_from_consumer_config
from fedimg.errors import ConfigError, InputError, TransientError
from fedimg.pipeline import Pipeline
from fedimg.standins.moto import free_port
from fedimg.standins.samplecompose import (
    SAMPLE_COMPOSE_ID,
    compose_message,
)
from fedimg.wiring import build_pipeline
from tests.helpers import ec2, served_compose, trusting

TOPIC = "org.fedoraproject.prod.pungi.compose.status.change"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_compose(tmp_path_factory.mktemp("compose"), 12, 0.25) as (url, _):
        yield url


def untested(settings: Settings, *trusted: str) -> Settings:
    """The boot test is exercised in tests/aws/test_boottest.py; here it is switched off.
    ``trusted``: the loopback compose locations the test's messages point at."""
    settings = trusting(settings, *trusted)
    return dataclasses.replace(
        settings.with_aws(regions=REGIONS),
        test=dataclasses.replace(settings.test, enabled=False),
        messaging=dataclasses.replace(settings.messaging, publish=False, max_redeliveries=2),
    )


def consumer(settings: Settings, *trusted: str) -> Consumer:
    s = untested(settings, *trusted)
    return Consumer(s, Pipeline(s, Clients(s.aws)), requeue_delay=lambda n: 0.0)


def message(body: Any, headers: dict[str, Any] | None = None) -> Message:
    """A message as fedora-messaging hands it over; ``headers`` as the broker set them."""
    return Message(topic=TOPIC, body=body, headers=headers)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("FINISHED", "not an object"),
        ({"compose_id": "x", "location": "http://h/c"}, "no 'status'"),
        ({"status": "FINISHED", "location": "http://h/c"}, "no 'compose_id'"),
        ({"status": "FINISHED", "compose_id": "x"}, "no 'location'"),
        ({"status": 1, "compose_id": "x", "location": "http://h/c"}, "'status' is not"),
        ({"status": "FINISHED", "compose_id": ["x"], "location": "http://h/c"}, "'compose_id'"),
        ({"status": "DONE", "compose_id": "x", "location": "http://h/c"}, "not a pungi"),
        ({"status": "FINISHED", "compose_id": "x", "location": "ftp://h/c"}, "not an http"),
        ({"status": "FINISHED", "compose_id": "x", "location": "c/relative"}, "not an http"),
        (
            {"status": "FINISHED", "compose_id": "x", "location": "http://h/c", "pad": "x" * 70000},
            "far smaller",
        ),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(body: Any, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        parse_compose_message(body)


def test_malformed_message_is_dropped_and_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(Drop):
        consumer(settings)(message({"status": "FINISHED"}))
    assert "no 'compose_id'" in caplog.text


@pytest.mark.parametrize("status", ["STARTED", "DOOMED", "TERMINATED"])
def test_other_statuses_are_acknowledged_and_ignored(
    settings: Settings, status: str, aws: str
) -> None:
    c = consumer(settings)
    assert c(message(compose_message(SAMPLE_COMPOSE_ID, "http://127.0.0.1:1/c", status))) is None
    assert not c.outcomes


@pytest.mark.parametrize("status", ["FINISHED", "FINISHED_INCOMPLETE"])
def test_finished_compose_is_published(
    settings: Settings, compose: str, aws: str, status: str
) -> None:
    c = consumer(settings, compose)
    c(message(compose_message(SAMPLE_COMPOSE_ID, compose, status)))
    (outcome,) = c.outcomes
    assert outcome.ok and len(outcome.images) == 2
    for region in REGIONS:
        assert len(ec2(aws, region).describe_images(Owners=["self"])["Images"]) == 2


def test_unreadable_compose_is_dropped(settings: Settings, compose: str, aws: str) -> None:
    missing = compose.replace(SAMPLE_COMPOSE_ID, "Fedora-Cloud-99-20000101.0")
    with pytest.raises(Drop):
        consumer(settings, compose)(message(compose_message(SAMPLE_COMPOSE_ID, missing)))


REFUSING = f"http://127.0.0.1:{free_port()}/"


def refused_compose() -> dict[str, Any]:
    """A compose location that refuses connections (trusted where the tests use it): a cheap,
    certain transient failure."""
    return compose_message(SAMPLE_COMPOSE_ID, f"{REFUSING}compose")


def test_without_a_broker_count_the_consumer_counts_requeues_itself(settings: Settings) -> None:
    """A classic queue gives no delivery count: the consumer's own memory bounds the requeues."""
    c = consumer(settings, REFUSING)
    m = message(refused_compose())
    for _ in range(2):  # messaging.max_redeliveries = 2
        with pytest.raises(Nack):
            c(m)
    with pytest.raises(Drop):
        c(m)


@pytest.mark.parametrize("header", ["x-delivery-count", "x-acquired-count"])
def test_a_fresh_consumer_goes_on_from_the_brokers_count(
    settings: Settings, header: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As after a restart: a new consumer, a message the broker delivered twice before."""
    with pytest.raises(Drop):
        consumer(settings, REFUSING)(message(refused_compose(), {header: 2}))
    assert "delivery limit reached (delivery count 2 of 2)" in caplog.text


def test_requeue_pause_grows_with_the_brokers_count(settings: Settings) -> None:
    pauses: list[int] = []

    def pause(redelivery: int) -> float:
        pauses.append(redelivery)
        return 0.0

    s = untested(settings, REFUSING)
    c = Consumer(s, Pipeline(s, Clients(s.aws)), requeue_delay=pause)
    with pytest.raises(Nack):
        c(message(refused_compose(), {"x-delivery-count": 1}))
    assert pauses == [2]
    assert [backoff(n, 15.0) for n in (1, 2, 3, 6, 20)] == [15.0, 30.0, 60.0, 300.0, 300.0]


def test_count_past_the_limit_is_dropped_without_running(
    settings: Settings, compose: str, aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A queue whose own limit is higher than fedimg's (or missing): fedimg's limit holds."""
    c = consumer(settings, compose)
    with pytest.raises(Drop):
        c(message(compose_message(SAMPLE_COMPOSE_ID, compose), {"x-delivery-count": 3}))
    assert "delivery count 3 is past the limit of 2" in caplog.text
    assert not c.outcomes
    assert ec2(aws).describe_images(Owners=["self"])["Images"] == []


@pytest.mark.parametrize("value", [-1, "15", True])
def test_requeue_pause_must_be_seconds(value: Any) -> None:
    with pytest.raises(ConfigError, match="requeue_pause_seconds"):
        requeue_pause_from_config({"requeue_pause_seconds": value})


def test_runs_of_one_compose_in_one_process_do_not_overlap(
    settings: Settings, compose: str
) -> None:
    """A redelivery after a lost connection arrives while the first run still goes on: it waits."""
    running, overlaps = [0], []
    s = untested(settings, compose)

    class Recording(Pipeline):
        def run_compose(self, location: str) -> Any:
            running[0] += 1
            overlaps.append(running[0])
            time.sleep(0.2)
            running[0] -= 1
            raise TransientError("boom")

    c = Consumer(s, Recording(s, Clients(s.aws)), requeue_delay=lambda n: 0.0)
    body = compose_message(SAMPLE_COMPOSE_ID, compose)

    def deliver(count: int) -> None:
        with pytest.raises(Nack):
            c(message(body, {"x-delivery-count": count}))

    threads = [threading.Thread(target=deliver, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert overlaps == [1, 1]


def test_the_ec2_boot_test_needs_an_ssh_cidr_and_a_world_open_one_needs_saying_so(
    settings: Settings,
) -> None:
    unset = dataclasses.replace(settings, test=dataclasses.replace(settings.test, ssh_cidr=""))
    with pytest.raises(ConfigError, match=r"^test\.ssh_cidr: required when the EC2 boot test"):
        build_pipeline(unset)
    for cidr in ("0.0.0.0/0", "::/0"):
        with pytest.raises(ConfigError, match=r"^test\.ssh_cidr: .* whole internet"):
            settings_from_consumer_config({"test": {"ssh_cidr": cidr}})
        allowed = {"test": {"ssh_cidr": cidr, "allow_ssh_from_anywhere": True}}
        assert settings_from_consumer_config(allowed).test.ssh_cidr == cidr


def test_untrusted_location_in_a_config_is_refused_naming_the_key() -> None:
    bad = {"compose": {"trusted_locations": ["https://x.example/", "http://x.example/"]}}
    with pytest.raises(ConfigError, match=r"^compose\.trusted_locations\[1\]: .*loopback"):
        settings_from_consumer_config(bad)


def test_consumer_config_names_a_file_or_holds_tables(tmp_path: Path) -> None:
    f = tmp_path / "fedimg.toml"
    f.write_text('[aws]\nbase_region = "eu-west-1"\nregions = ["eu-west-1"]\n')
    assert settings_from_consumer_config({"fedimg_config": str(f)}).aws.base_region == "eu-west-1"
    inline = {"aws": {"base_region": "us-west-2", "regions": ["us-west-2"]}}
    assert settings_from_consumer_config(inline).aws.base_region == "us-west-2"
    with pytest.raises(ConfigError, match="not both"):
        settings_from_consumer_config({"fedimg_config": str(f), "aws": {}})


def test_example_messaging_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedora_messaging import config as fm_config

    example = Path(__file__).resolve().parent.parent / "fedimg-messaging.example.toml"
    monkeypatch.setenv("FEDORA_MESSAGING_CONF", str(example))
    conf = fm_config.LazyConfig()
    conf.load_config()
    assert conf["callback"] == "fedimg.consumer:Consumer"
    queue = conf["queues"]["fedimg"]
    # RabbitMQ refuses a quorum queue that is not durable, or is auto-deleted or exclusive.
    assert (queue["durable"], queue["auto_delete"], queue["exclusive"]) == (True, False, False)
    assert queue["arguments"]["x-queue-type"] == "quorum"
    # The broker's limit is fedimg's default, so neither gives up before the other.
    assert queue["arguments"]["x-delivery-limit"] == Settings().messaging.max_redeliveries
    assert "fedimg.dead" not in conf["queues"]  # consume would consume the parked messages
    assert conf["qos"]["prefetch_count"] == 1
    assert conf["consumer_config"]["fedimg_config"] == "/etc/fedimg/fedimg.toml"
    assert requeue_pause_from_config(conf["consumer_config"])(1) == 15.0


def test_example_worker_config_loads_with_the_arguments_the_consumer_would_declare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whichever of compose consumer and workers declares the work queue first, it is the same
    queue: fedimg-worker-messaging.example.toml holds work_queue_arguments' values."""
    from fedora_messaging import config as fm_config

    from fedimg.workqueue import work_queue_arguments

    example = Path(__file__).resolve().parent.parent / "fedimg-worker-messaging.example.toml"
    monkeypatch.setenv("FEDORA_MESSAGING_CONF", str(example))
    conf = fm_config.LazyConfig()
    conf.load_config()
    assert conf["callback"] == "fedimg.worker:Worker"
    assert conf["bindings"] == []  # fed through the default exchange only
    assert conf["qos"]["prefetch_count"] == 1
    expected = work_queue_arguments(Settings().messaging.max_redeliveries, "fedimg.work")
    assert conf["queues"]["fedimg.work"]["arguments"] == expected
