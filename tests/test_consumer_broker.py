"""The consumer through a real RabbitMQ broker and real `fedora-messaging consume` processes, with
the queue arguments of fedimg-messaging.example.toml (a quorum queue with a delivery limit and a
dead-letter queue): end to end, two consumers, the broker's count across a SIGKILL, a lost
connection in the middle of a compose."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import boto3
import pika
import pytest

from fedimg.samplecompose import SAMPLE_COMPOSE_ID, compose_message
from fedimg.standins.moto import free_port
from tests.helpers import ec2, served_compose
from tests.services import (
    amqp_port,
    collect_messages,
    consume_process,
    declare_exchange,
    declare_queue,
    delete_queues,
    fedora_messaging_config,
    publish,
    queue_counts,
    take_message,
    tcp_proxy,
    wait_for_log,
)

TOPIC = "org.fedoraproject.prod.pungi.compose.status.change"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
EXAMPLE = Path(__file__).resolve().parent.parent / "fedimg-messaging.example.toml"
COMPLETE = "org.fedoraproject.prod.fedimg.compose.complete"


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_compose(tmp_path_factory.mktemp("compose"), 12, 0.25) as (url, _):
        yield url


def example_queue_arguments() -> dict[str, Any]:
    arguments: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())["queues"]["fedimg"]["arguments"]
    return arguments


class Bus:
    """One test's exchange, quorum queue and dead-letter queue (example arguments), and the
    fedimg settings and fedora-messaging config of its consumer processes."""

    def __init__(self, amqp_url: str, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.amqp_url, self.tmp = amqp_url, tmp_path
        self.exchange, self.queue, self.dead = f"fedimg-{tag}", f"fedimg-{tag}-in", f"dead-{tag}"
        self.arguments = example_queue_arguments() | {"x-dead-letter-routing-key": self.dead}
        self.fedimg_toml = tmp_path / "fedimg.toml"
        # No AWS unless a test brings it: an endpoint that refuses connections.
        self.use_aws(f"http://127.0.0.1:{free_port()}")
        declare_exchange(amqp_url, self.exchange)
        declare_queue(amqp_url, self.dead, {"x-queue-type": "quorum"})

    def use_aws(self, endpoint: str, *trusted: str) -> None:
        """AWS at ``endpoint``; ``trusted``: the loopback compose locations messages point at."""
        self.fedimg_toml.write_text(
            f'[aws]\nendpoint_url = "{endpoint}"\nregions = {json.dumps(list(REGIONS))}\n'
            "max_attempts = 2\nwait_seconds = 60\n[test]\nenabled = false\n"
            f"[compose]\ntrusted_locations = {json.dumps(list(trusted))}\n"
            f"[messaging]\nmax_redeliveries = {self.arguments['x-delivery-limit']}\n"
        )

    def conf(self, broker_url: str | None = None, requeue_pause: float = 15.0) -> Path:
        folder = self.tmp / f"conf-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        return fedora_messaging_config(
            broker_url or self.amqp_url,
            folder,
            self.queue,
            [TOPIC],
            callback="fedimg.consumer:Consumer",
            consumer_config={
                "fedimg_config": str(self.fedimg_toml),
                "requeue_pause_seconds": requeue_pause,
            },
            exchange=self.exchange,
            topic_prefix="org.fedoraproject.prod",
            queue_arguments=self.arguments,
        )

    @contextmanager
    def consumer(self, conf: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
        """One `fedora-messaging consume` process, logging to ``name``.log."""
        with consume_process(conf, self.tmp / f"{name}.log") as p:
            yield p

    @contextmanager
    def consumers(self, conf: Path, count: int) -> Iterator[None]:
        """``count`` consumer processes on the queue, logging to consumer-N.log."""
        with ExitStack() as stack:
            for n in range(count):
                stack.enter_context(consume_process(conf, self.tmp / f"consumer-{n}.log"))
            yield

    def publish(self, body: dict[str, Any]) -> None:
        publish(self.amqp_url, self.exchange, TOPIC, body)

    def close(self) -> None:
        delete_queues(self.amqp_url, self.queue, self.dead)


@pytest.fixture
def bus(amqp_url: str, tmp_path: Path) -> Iterator[Bus]:
    s = Bus(amqp_url, tmp_path)
    yield s
    s.close()


@pytest.fixture
def aws_bus(bus: Bus, aws: str, compose: str) -> Bus:
    """``bus`` with the moto server as AWS, trusting the sample compose."""
    bus.use_aws(aws, compose)
    return bus


def assert_one_ami_per_image_per_region(aws: str) -> None:
    for region in REGIONS:
        images = ec2(aws, region).describe_images(Owners=["self"])["Images"]
        assert sorted(i["Name"].rsplit(".", 1)[1][:7] for i in images) == ["aarch64", "x86_64-"]


def test_broker_end_to_end(aws_bus: Bus, compose: str, aws: str) -> None:
    """A FINISHED message on a real broker → `fedora-messaging consume` runs fedimg's consumer →
    public AMIs in every region, SSM parameters, and fedimg's messages back on the broker."""
    keys = ["org.fedoraproject.prod.fedimg.#", "#.published.v1.aws"]
    with (
        collect_messages(aws_bus.amqp_url, keys, exchange=aws_bus.exchange) as inbox,
        aws_bus.consumer(aws_bus.conf(), "consumer"),
    ):
        aws_bus.publish(compose_message(SAMPLE_COMPOSE_ID, compose))
        # per image: upload started+completed, 2 copies, publish, uploader's; then the summary
        inbox.wait(2 * 6 + 1, timeout=90)
        received = inbox.wait_quiet(1.0)  # and nothing more
    topics = [m.topic for m in received]
    assert len(topics) == 13
    assert topics.count(COMPLETE) == 1
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


def test_same_compose_twice_at_once(aws_bus: Bus, compose: str, aws: str) -> None:
    """Two consumer processes on one single-active-consumer queue, the same FINISHED message twice
    (as a redelivery or a duplicate would bring it): both are handled, one AMI per region."""
    with (
        collect_messages(aws_bus.amqp_url, [COMPLETE], exchange=aws_bus.exchange) as inbox,
        aws_bus.consumers(aws_bus.conf(), 2),
    ):
        body = compose_message(SAMPLE_COMPOSE_ID, compose)
        aws_bus.publish(body)
        aws_bus.publish(body)
        summaries = inbox.wait(2, timeout=120)
    assert all({i["outcome"] for i in m.body["images"]} == {"published"} for m in summaries)
    assert_one_ami_per_image_per_region(aws)


def test_example_queue_arguments_park_a_message_after_the_delivery_limit(bus: Bus) -> None:
    """The broker alone (a consumer that dies on every delivery): after x-delivery-limit
    redeliveries the message goes to the dead-letter queue, not away."""
    limit = bus.arguments["x-delivery-limit"]
    params = pika.URLParameters(bus.amqp_url)
    connection = pika.BlockingConnection(params)
    try:
        ch = connection.channel()
        ch.queue_declare(bus.queue, durable=True, arguments=bus.arguments)
        ch.basic_publish("", bus.queue, b'{"compose_id": "c"}')
        counts = []
        # basic.get is refused on a single-active-consumer quorum queue: consume.
        for method, props, _body in ch.consume(bus.queue, inactivity_timeout=0.5):
            if method is None or len(counts) > limit:
                break
            counts.append((props.headers or {}).get("x-delivery-count", 0))
            ch.basic_nack(method.delivery_tag, requeue=True)
        ch.cancel()
    finally:
        connection.close()
    assert counts == list(range(limit + 1))
    parked = take_message(bus.amqp_url, bus.dead)
    assert parked is not None
    headers, body = parked
    assert body == {"compose_id": "c"}
    assert headers["x-first-death-reason"] == "delivery_limit"


def test_killed_consumer_goes_on_from_the_brokers_count(bus: Bus) -> None:
    """A compose that fails transiently (its location refuses connections): the consumer is
    SIGKILLed while it pauses before its first requeue; the restarted consumer starts from the
    broker's count (1), not from 0, gives up at messaging.max_redeliveries (3) with the count in its
    log, and the message is parked in the dead-letter queue."""
    limit = bus.arguments["x-delivery-limit"]
    location = f"http://127.0.0.1:{free_port()}/compose"
    bus.use_aws(f"http://127.0.0.1:{free_port()}", location)
    # The first consumer pauses 30 s before its Nack: SIGKILL lands in the pause, so the message
    # comes back through the lost connection, never through a Nack.
    with bus.consumer(bus.conf(requeue_pause=30.0), "first") as first:
        bus.publish(compose_message(SAMPLE_COMPOSE_ID, location))
        wait_for_log(bus.tmp / "first.log", "requeueing for redelivery 1 of")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    with bus.consumer(bus.conf(requeue_pause=0.2), "second"):
        log = wait_for_log(bus.tmp / "second.log", "delivery limit reached", timeout=30)
        # Parked by the consumer's Drop; then nothing is left in the queue.
        parked = _wait_for_message(bus.amqp_url, bus.dead)
    # The restarted consumer's first delivery is the broker's redelivery 1, not a fresh start.
    runs = re.findall(r"publishing, redelivery (\d+) of", log)
    assert runs == [str(n) for n in range(1, limit + 1)]
    assert f"delivery limit reached (delivery count {limit} of {limit})" in log
    headers, body = parked
    assert body["location"] == location
    assert headers["x-first-death-reason"] == "rejected"
    assert queue_counts(bus.amqp_url, bus.queue)[0] == 0


def test_connection_lost_mid_compose_completes_once(aws_bus: Bus, compose: str, aws: str) -> None:
    """The consumer's broker connection (through a proxy on loopback) is cut just after a compose
    message arrived: the first run goes on, the broker redelivers the unacknowledged message after
    the reconnect, the redelivery waits for the first run and then finds its work done. AWS holds
    exactly one AMI per image per region; the bus gets the summary once per run (at least once)."""
    bus = aws_bus
    log_path = bus.tmp / "consumer.log"
    with (
        tcp_proxy(amqp_port(bus.amqp_url)) as proxy,
        collect_messages(bus.amqp_url, [COMPLETE], exchange=bus.exchange) as inbox,
        bus.consumer(bus.conf(proxy.url(bus.amqp_url)), "consumer"),
    ):
        bus.publish(compose_message(SAMPLE_COMPOSE_ID, compose))
        wait_for_log(log_path, "is FINISHED: publishing")
        assert proxy.cut() > 0
        summaries = inbox.wait(2, timeout=90)
        log = wait_for_log(log_path, "Successfully consumed message", count=2)
    assert "publishing, redelivery 1 of" in log
    for summary in summaries:
        assert {i["outcome"] for i in summary.body["images"]} == {"published"}
    assert_one_ami_per_image_per_region(aws)
    assert queue_counts(bus.amqp_url, bus.queue)[0] == 0


def _wait_for_message(amqp_url: str, queue: str) -> tuple[dict[str, Any], dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (got := take_message(amqp_url, queue)) is not None:
            return got
        time.sleep(0.1)
    raise AssertionError(f"nothing in {queue} after 10 s")
