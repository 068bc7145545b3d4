"""The consumer: message dispositions in-process, and end to end through a real RabbitMQ broker."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pika
import pytest
from fedora_messaging.exceptions import Drop, Nack
from fedora_messaging.message import Message

from fedimg.aws.clients import Clients
from fedimg.config import Settings
from fedimg.consumer import Consumer, parse_compose_message, settings_from_consumer_config
from fedimg.errors import ConfigError, InputError
from fedimg.pipeline import Pipeline
from fedimg.samplecompose import (
    SAMPLE_COMPOSE_ID,
    compose_message,
)
from fedimg.standins.moto import free_port
from tests.helpers import ec2, served_compose
from tests.services import collect_messages, fedora_messaging_config

TOPIC = "org.fedoraproject.prod.pungi.compose.status.change"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_compose(tmp_path_factory.mktemp("compose"), 12, 0.25) as (url, _):
        yield url


def untested(settings: Settings) -> Settings:
    """The boot test is exercised in tests/aws/test_boottest.py; here it is switched off."""
    return dataclasses.replace(
        settings.with_aws(regions=REGIONS),
        test=dataclasses.replace(settings.test, enabled=False),
        messaging=dataclasses.replace(settings.messaging, publish=False, max_redeliveries=2),
    )


def consumer(settings: Settings) -> Consumer:
    s = untested(settings)
    return Consumer(s, Pipeline(s, Clients(s.aws)), requeue_delay=lambda n: 0.0)


def message(body: Any) -> Message:
    return Message(topic=TOPIC, body=body)


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
    c = consumer(settings)
    c(message(compose_message(SAMPLE_COMPOSE_ID, compose, status)))
    (outcome,) = c.outcomes
    assert outcome.ok and len(outcome.images) == 2
    for region in REGIONS:
        assert len(ec2(aws, region).describe_images(Owners=["self"])["Images"]) == 2


def test_unreadable_compose_is_dropped(settings: Settings, compose: str, aws: str) -> None:
    missing = compose.replace(SAMPLE_COMPOSE_ID, "Fedora-Cloud-99-20000101.0")
    with pytest.raises(Drop):
        consumer(settings)(message(compose_message(SAMPLE_COMPOSE_ID, missing)))


def test_transient_failure_is_requeued_a_bounded_number_of_times(settings: Settings) -> None:
    c = consumer(settings)
    m = message(compose_message(SAMPLE_COMPOSE_ID, f"http://127.0.0.1:{free_port()}/compose"))
    for _ in range(2):  # messaging.max_redeliveries = 2
        with pytest.raises(Nack):
            c(m)
    with pytest.raises(Drop):
        c(m)


def test_consumer_config_names_a_file_or_holds_tables(tmp_path: Path) -> None:
    f = tmp_path / "fedimg.toml"
    f.write_text('[aws]\nbase_region = "eu-west-1"\nregions = ["eu-west-1"]\n')
    assert settings_from_consumer_config({"fedimg_config": str(f)}).aws.base_region == "eu-west-1"
    inline = {"aws": {"base_region": "us-west-2", "regions": ["us-west-2"]}}
    assert settings_from_consumer_config(inline).aws.base_region == "us-west-2"
    with pytest.raises(ConfigError, match="not both"):
        settings_from_consumer_config({"fedimg_config": str(f), "aws": {}})


@contextmanager
def consumers(
    amqp_url: str, aws: str, tmp_path: Path, exchange: str, count: int = 1
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` `fedora-messaging consume` processes running fedimg's consumer on one queue.

    The queue is a single-active-consumer queue, as in fedimg-messaging.example.toml: RabbitMQ
    gives its messages to one consumer at a time, so one compose is never processed twice at once.
    """
    cfg = tmp_path / "fedimg.toml"
    cfg.write_text(
        f'[aws]\nendpoint_url = "{aws}"\nregions = {json.dumps(list(REGIONS))}\n'
        "max_attempts = 2\nwait_seconds = 60\n[test]\nenabled = false\n"
    )
    conf = fedora_messaging_config(
        amqp_url,
        tmp_path,
        f"{exchange}-in",
        [TOPIC],
        callback="fedimg.consumer:Consumer",
        consumer_config={"fedimg_config": str(cfg)},
        exchange=exchange,
        topic_prefix="org.fedoraproject.prod",
        queue_arguments={"x-single-active-consumer": True},
    )
    env = os.environ | {"FEDORA_MESSAGING_CONF": str(conf)}
    exe = os.path.join(os.path.dirname(sys.executable), "fedora-messaging")
    procs = []
    try:
        for n in range(count):
            log = open(tmp_path / f"consumer-{n}.log", "wb")  # noqa: SIM115
            procs.append(subprocess.Popen([exe, "consume"], env=env, stdout=log, stderr=log))
            _wait_for_queue(amqp_url, f"{exchange}-in", procs[-1], tmp_path, n + 1)
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def test_broker_end_to_end(amqp_url: str, compose: str, aws: str, tmp_path: Path) -> None:
    """A FINISHED message on a real broker → `fedora-messaging consume` runs fedimg's consumer →
    public AMIs in every region, SSM parameters, and fedimg's messages back on the broker."""
    exchange = f"fedimg-e2e-{uuid.uuid4().hex[:8]}"
    keys = ["org.fedoraproject.prod.fedimg.#", "#.published.v1.aws"]
    with (
        collect_messages(amqp_url, keys, exchange=exchange) as inbox,
        consumers(amqp_url, aws, tmp_path, exchange),
    ):
        _publish(amqp_url, exchange, compose_message(SAMPLE_COMPOSE_ID, compose))
        # per image: upload started+completed, 2 copies, publish, uploader's; then the summary
        inbox.wait(2 * 6 + 1, timeout=90)
        received = inbox.wait_quiet(1.0)  # and nothing more
    topics = [m.topic for m in received]
    assert len(topics) == 13
    assert topics.count("org.fedoraproject.prod.fedimg.compose.complete") == 1
    assert topics.count("org.fedoraproject.prod.fedimg.image.publish") == 2
    uploader = [m for m in received if m.topic.endswith("published.v1.aws")]
    assert len(uploader) == 2
    ssm = {r: boto3.client("ssm", region_name=r, endpoint_url=aws) for r in REGIONS}
    for m in uploader:
        assert sorted(m.body["regions"]) == sorted(REGIONS)
        for region, ami in m.body["regions"].items():
            perms = ec2(aws, region).describe_image_attribute(
                ImageId=ami, Attribute="launchPermission"
            )
            assert {"Group": "all"} in perms["LaunchPermissions"]
            name = f"/fedimg/99/Cloud_Base/{m.body['architecture']}/latest"
            assert ssm[region].get_parameter(Name=name)["Parameter"]["Value"] == ami


def test_same_compose_twice_at_once(amqp_url: str, compose: str, aws: str, tmp_path: Path) -> None:
    """Two consumer processes on one queue, the same FINISHED message twice (as a redelivery or a
    duplicate would bring it): both are handled, and each image has exactly one AMI per region."""
    exchange = f"fedimg-twice-{uuid.uuid4().hex[:8]}"
    done = ["org.fedoraproject.prod.fedimg.compose.complete"]
    with (
        collect_messages(amqp_url, done, exchange=exchange) as inbox,
        consumers(amqp_url, aws, tmp_path, exchange, count=2),
    ):
        body = compose_message(SAMPLE_COMPOSE_ID, compose)
        _publish(amqp_url, exchange, body)
        _publish(amqp_url, exchange, body)
        summaries = inbox.wait(2, timeout=120)
    assert all({i["outcome"] for i in m.body["images"]} == {"published"} for m in summaries)
    for region in REGIONS:
        images = ec2(aws, region).describe_images(Owners=["self"])["Images"]
        assert sorted(i["Name"].rsplit(".", 1)[1][:7] for i in images) == ["aarch64", "x86_64-"]


def _wait_for_queue(
    url: str, queue: str, proc: subprocess.Popen[bytes], tmp: Path, consumers: int = 1
) -> None:
    """Until the queue has ``consumers`` consumers (a consumer declares its queue when ready)."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"consumer exited with {proc.returncode}; see {tmp}")
        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            ch = conn.channel()
            ch.queue_declare(queue, passive=True)
            if ch.queue_declare(queue, passive=True).method.consumer_count >= consumers:
                return
        except pika.exceptions.ChannelClosedByBroker:
            pass
        finally:
            if conn.is_open:
                conn.close()
        time.sleep(0.3)
    raise AssertionError(f"consumer did not start; see the logs in {tmp}")


def _publish(url: str, exchange: str, body: dict[str, Any]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        conn.channel().basic_publish(
            exchange,
            TOPIC,
            json.dumps(body).encode(),
            pika.BasicProperties(
                content_type="application/json", headers={"fedora_messaging_schema": "base.message"}
            ),
        )
    finally:
        conn.close()


def test_example_messaging_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedora_messaging import config as fm_config

    example = Path(__file__).resolve().parent.parent / "fedimg-messaging.example.toml"
    monkeypatch.setenv("FEDORA_MESSAGING_CONF", str(example))
    conf = fm_config.LazyConfig()
    conf.load_config()
    assert conf["callback"] == "fedimg.consumer:Consumer"
    assert conf["queues"]["fedimg"]["arguments"] == {"x-single-active-consumer": True}
    assert conf["qos"]["prefetch_count"] == 1
    assert conf["consumer_config"] == {"fedimg_config": "/etc/fedimg/fedimg.toml"}
