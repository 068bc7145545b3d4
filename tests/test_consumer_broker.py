"""The consumer through a real RabbitMQ broker and real `fedora-messaging consume` processes, with
the queue arguments of fedimg-messaging.example.toml (a quorum queue with a delivery limit and a
dead-letter queue): end to end, two consumers, the broker's count across a SIGKILL, a lost
connection in the middle of a compose. And the split deployment (a compose consumer and image
workers on fedimg-worker-messaging.example.toml's work queue): the same end state as one process,
a worker killed mid-image, the last worker killed right after its image."""

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

from fedimg.aws.clients import Clients
from fedimg.completion import recorded_outcomes
from fedimg.config import Settings
from fedimg.standins.moto import free_port, reset
from fedimg.standins.samplecompose import SAMPLE_COMPOSE_ID, compose_message
from tests.helpers import ec2, served_compose
from tests.services import (
    HttpGate,
    amqp_port,
    collect_messages,
    consume_process,
    declare_exchange,
    declare_queue,
    delete_queues,
    fedora_messaging_config,
    http_gate,
    publish,
    queue_counts,
    take_message,
    tcp_proxy,
    wait_for_log,
)

TOPIC = "org.fedoraproject.prod.pungi.compose.status.change"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
EXAMPLE = Path(__file__).resolve().parent.parent / "fedimg-messaging.example.toml"
WORKER_EXAMPLE = EXAMPLE.with_name("fedimg-worker-messaging.example.toml")
COMPLETE = "org.fedoraproject.prod.fedimg.compose.complete"


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_compose(tmp_path_factory.mktemp("compose"), 12, 0.25) as (url, _):
        yield url


def example_queue_arguments() -> dict[str, Any]:
    arguments: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())["queues"]["fedimg"]["arguments"]
    return arguments


def example_work_queue_arguments() -> dict[str, Any]:
    queues = tomllib.loads(WORKER_EXAMPLE.read_text())["queues"]
    arguments: dict[str, Any] = queues["fedimg.work"]["arguments"]
    return arguments


class Bus:
    """One test's exchange, quorum queue and dead-letter queue (example arguments), and the
    fedimg settings and fedora-messaging config of its consumer processes."""

    def __init__(self, amqp_url: str, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.amqp_url, self.tmp = amqp_url, tmp_path
        self.exchange, self.queue, self.dead = f"fedimg-{tag}", f"fedimg-{tag}-in", f"dead-{tag}"
        self.arguments = example_queue_arguments() | {"x-dead-letter-routing-key": self.dead}
        self.work = f"fedimg-{tag}-work"
        self.work_arguments = example_work_queue_arguments() | {
            "x-dead-letter-routing-key": f"{self.work}.dead"
        }
        self.fedimg_toml = tmp_path / "fedimg.toml"
        # No AWS unless a test brings it: an endpoint that refuses connections.
        self.use_aws(f"http://127.0.0.1:{free_port()}")
        declare_exchange(amqp_url, self.exchange)
        declare_queue(amqp_url, self.dead, {"x-queue-type": "quorum"})

    def use_aws(self, endpoint: str, *trusted: str, toml: Path | None = None) -> Path:
        """AWS at ``endpoint``; ``trusted``: the loopback compose locations messages point at.
        Written to ``toml`` (default: the settings every process of the test uses)."""
        toml = toml or self.fedimg_toml
        toml.write_text(
            f'[aws]\nendpoint_url = "{endpoint}"\nregions = {json.dumps(list(REGIONS))}\n'
            "max_attempts = 2\nwait_seconds = 60\n[test]\nenabled = false\n"
            f"[compose]\ntrusted_locations = {json.dumps(list(trusted))}\n"
            f"[messaging]\nmax_redeliveries = {self.arguments['x-delivery-limit']}\n"
        )
        return toml

    def conf(
        self,
        broker_url: str | None = None,
        requeue_pause: float = 15.0,
        *,
        role: str = "all",
        fedimg_toml: Path | None = None,
    ) -> Path:
        """fedora-messaging config of one process. ``role``: "all" (the consumer runs every
        image), "compose" (it queues the images for the workers) or "worker"."""
        folder = self.tmp / f"conf-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        own: dict[str, Any] = {
            "fedimg_config": str(fedimg_toml or self.fedimg_toml),
            "requeue_pause_seconds": requeue_pause,
        }
        if role == "compose":
            own |= {"work_queue": self.work, "work_amqp_url": self.amqp_url}
        worker = role == "worker"
        return fedora_messaging_config(
            broker_url or self.amqp_url,
            folder,
            self.work if worker else self.queue,
            [] if worker else [TOPIC],
            callback="fedimg.worker:Worker" if worker else "fedimg.consumer:Consumer",
            consumer_config=own,
            exchange=self.exchange,
            topic_prefix="org.fedoraproject.prod",
            queue_arguments=self.work_arguments if worker else self.arguments,
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
        delete_queues(self.amqp_url, self.queue, self.dead, self.work, f"{self.work}.dead")


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
        # per image: upload started+completed, 2 copies started+completed (they start while the
        # image is tested), publish started+completed, uploader's; then the summary
        inbox.wait(2 * 9 + 1, timeout=90)
        received = inbox.wait_quiet(1.0)  # and nothing more
    topics = [m.topic for m in received]
    assert len(topics) == 19
    assert topics.count(COMPLETE) == 1
    assert topics.count("org.fedoraproject.prod.fedimg.image.copy") == 8
    assert topics.count("org.fedoraproject.prod.fedimg.image.publish") == 4
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


@pytest.mark.parametrize("single_active", [True, False], ids=["single-active", "plain"])
def test_same_compose_twice_at_once(
    aws_bus: Bus, compose: str, aws: str, single_active: bool
) -> None:
    """Two consumer processes on one queue, the same FINISHED message twice (as a redelivery or a
    duplicate would bring it): both are handled, one AMI per region. On a plain queue both
    consumers run the compose at the same time; AWS's rules and fedimg's leases keep them apart."""
    if not single_active:
        aws_bus.arguments.pop("x-single-active-consumer", None)
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


def aws_end_state(aws: str) -> dict[str, list[tuple[str, str, bool]]]:
    """Region → (AMI name, state, public) of every AMI, as AWS holds it."""
    state = {}
    for region in REGIONS:
        images = ec2(aws, region).describe_images(Owners=["self"])["Images"]
        state[region] = sorted((i["Name"], i["State"], bool(i.get("Public"))) for i in images)
    return state


def summary_as_named(aws: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's images with each AMI id replaced by the name AWS holds for it (ids differ
    from run to run, names do not)."""
    named = []
    for image in body["images"]:
        regions = {
            region: ec2(aws, region).describe_images(ImageIds=[ami])["Images"][0]["Name"]
            for region, ami in image["regions"].items()
        }
        named.append(image | {"regions": regions})
    return named


def test_both_deployment_shapes_publish_the_same_end_state(
    aws_bus: Bus, compose: str, aws: str
) -> None:
    """One process doing everything, then (on an emptied AWS) a compose consumer and 2 workers:
    the same AMIs, public, in every region, and the same compose summary."""
    bus, ends = aws_bus, []
    shapes = {"one process": ["all"], "consumer + 2 workers": ["compose", "worker", "worker"]}
    for shape, roles in shapes.items():
        reset(aws)
        with (
            collect_messages(bus.amqp_url, [COMPLETE], exchange=bus.exchange) as inbox,
            ExitStack() as processes,
        ):
            for n, role in enumerate(roles):
                processes.enter_context(bus.consumer(bus.conf(role=role), f"{shape}-{n}"))
            bus.publish(compose_message(SAMPLE_COMPOSE_ID, compose))
            summary = inbox.wait(1, timeout=90)[0]
            summaries = inbox.wait_quiet(1.0)
        # At least once; twice when the last two images end together, then with the same content.
        assert 1 <= len(summaries) <= 2, shape
        assert all(m.body == summary.body for m in summaries), shape
        ends.append((aws_end_state(aws), summary_as_named(aws, summary.body)))
    assert ends[0] == ends[1]
    state, images = ends[0]
    assert all(len(amis) == 2 and all(public for *_, public in amis) for amis in state.values())
    assert [i["outcome"] for i in images] == ["published", "published"]


def holding(target: str, nth: int = 1) -> Any:
    """A gate predicate: holds the ``nth`` and later AWS requests for ``target`` (an EC2 query
    action or an SSM JSON operation)."""
    seen = [0]

    def hold(headers: dict[str, str], body: bytes) -> bool:
        amz_target = {k.lower(): v for k, v in headers.items()}.get("x-amz-target", "")
        if f"Action={target}&".encode() in body + b"&" or amz_target.endswith(f".{target}"):
            seen[0] += 1
            return seen[0] >= nth
        return False

    return hold


def worker_behind(bus: Bus, gate: HttpGate, compose: str) -> Path:
    """A worker config whose AWS is reached through ``gate``."""
    toml = bus.use_aws(gate.url, compose, toml=bus.tmp / f"gated-{uuid.uuid4().hex[:6]}.toml")
    return bus.conf(role="worker", requeue_pause=0.2, fedimg_toml=toml)


def test_worker_killed_mid_image_another_worker_finishes_it(
    aws_bus: Bus, compose: str, aws: str
) -> None:
    """The first worker takes an image and is SIGKILLed while its CopyImage is held; a second
    worker, started then, runs the other image, gets the killed one's message redelivered and
    finishes it: one AMI per image per region, and the compose announced, all published."""
    bus = aws_bus
    with (
        http_gate(aws, holding("CopyImage")) as gate,
        collect_messages(bus.amqp_url, [COMPLETE], exchange=bus.exchange) as inbox,
        bus.consumer(bus.conf(role="compose"), "compose"),
        bus.consumer(worker_behind(bus, gate, compose), "doomed") as doomed,
    ):
        bus.publish(compose_message(SAMPLE_COMPOSE_ID, compose))
        assert gate.held.wait(60)
        with bus.consumer(bus.conf(role="worker", requeue_pause=0.2), "survivor"):
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
            (summary,) = inbox.wait(1, timeout=90)
            log = wait_for_log(bus.tmp / "survivor.log", "Successfully consumed message", 2)
    assert "redelivery 1 of" in log
    assert [i["outcome"] for i in summary.body["images"]] == ["published", "published"]
    assert_one_ami_per_image_per_region(aws)


def test_last_worker_killed_right_after_its_image_the_summary_still_comes(
    aws_bus: Bus, compose: str, aws: str, settings: Settings
) -> None:
    """One worker runs both images; killed after recording the last one's outcome, before
    announcing the compose (its second look at the records is held). The work message comes
    back to the next worker, which finds the image done and publishes the summary."""
    bus = aws_bus
    with (
        http_gate(aws, holding("GetParametersByPath", nth=2)) as gate,
        collect_messages(bus.amqp_url, [COMPLETE], exchange=bus.exchange) as inbox,
        bus.consumer(bus.conf(role="compose"), "compose"),
        bus.consumer(worker_behind(bus, gate, compose), "last") as last,
    ):
        bus.publish(compose_message(SAMPLE_COMPOSE_ID, compose))
        assert gate.held.wait(60)
        last.send_signal(signal.SIGKILL)
        last.wait(10)
        # Both images ended and recorded in AWS, and nobody said so yet.
        assert len(recorded_outcomes(Clients(settings.aws), "us-east-1", SAMPLE_COMPOSE_ID)) == 2
        assert inbox.wait_quiet(0.5) == []
        with bus.consumer(bus.conf(role="worker", requeue_pause=0.2), "next"):
            (summary,) = inbox.wait(1, timeout=60)
            log = wait_for_log(bus.tmp / "next.log", "Successfully consumed message")
    assert "redelivery 1 of" in log
    assert [i["outcome"] for i in summary.body["images"]] == ["published", "published"]
    assert_one_ami_per_image_per_region(aws)
