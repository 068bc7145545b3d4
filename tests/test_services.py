"""fedimg's messages through a real RabbitMQ: published by the bus sink, received as schema classes.

Publishing runs in a child process: fedora-messaging binds its publisher to the broker of the
config it loaded first, once per process, and runs a Twisted reactor thread we keep out of pytest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pika
from fedimg_messages import ComposeCompleteV1, ImagePublishV1, ImageUploadV1
from fedora_image_uploader_messages import AwsPublishedV1
from fedora_messaging.config import LazyConfig

from fedimg.announce import messages_for
from fedimg.events import Event
from tests.services import collect_messages, fedora_messaging_config

AMI = "ami-0123456789abcdef0"
NAME = "Fedora-Cloud-Base-AmazonEC2-43-20251101.0.x86_64"
COMPOSE = "Fedora-Cloud-43-20251101.0"
DETAIL = {
    "compose_id": COMPOSE,
    "image_name": NAME,
    "image_url": "https://kojipkgs.example/Fedora.raw.xz",
    "arch": "x86_64",
    "subvariant": "Cloud_Base",
    "release": "43",
}
EVENTS = [
    Event(
        "upload",
        "completed",
        NAME,
        "us-east-1",
        {**DETAIL, "ami": AMI, "snapshot": "snap-0123456789abcdef0"},
    ),
    Event("upload", "progress", NAME, "us-east-1", {**DETAIL, "done": 10}),
    Event(
        "publish", "completed", NAME, "", {**DETAIL, "regions": {"us-east-1": AMI}, "public": True}
    ),
    Event(
        "compose",
        "completed",
        detail={
            "compose_id": COMPOSE,
            "release": "43",
            "images": [
                {
                    "image_name": NAME,
                    "arch": "x86_64",
                    "subvariant": "Cloud_Base",
                    "outcome": "published",
                    "regions": {"us-east-1": AMI},
                }
            ],
        },
    ),
]
PUBLISHER = """
import json, logging, sys
from fedimg.announce import bus_sink
from fedimg.events import Event
logging.basicConfig(level=logging.INFO)
sink = bus_sink(attempts=1)
for e in json.loads(sys.argv[1]):
    sink(Event(**e))
"""


def test_throwaway_broker_accepts_connections(amqp_url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        assert connection.is_open
    finally:
        connection.close()


def test_bus_sink_round_trip(amqp_url: str, tmp_path: Path) -> None:
    # A private exchange: nothing else on the broker sees these messages or sends us any.
    exchange = f"fedimg-test-{uuid.uuid4().hex}"
    conf = fedora_messaging_config(
        amqp_url,
        tmp_path,
        queue=f"{exchange}-q",
        routing_keys=["#"],
        exchange=exchange,
        topic_prefix="org.fedoraproject.prod",
    )
    expected = [m for e in EVENTS for m in messages_for(e)]
    with collect_messages(amqp_url, ["#"], exchange=exchange) as inbox:
        child = subprocess.run(
            [sys.executable, "-c", PUBLISHER, json.dumps([dataclasses.asdict(e) for e in EVENTS])],
            env={**os.environ, "FEDORA_MESSAGING_CONF": str(conf)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        try:
            received = inbox.wait(len(expected), timeout=10)
        except AssertionError as e:
            raise AssertionError(f"{e}\npublisher said:\n{child.stdout}{child.stderr}") from e
        received = inbox.wait_quiet(0.3)
    assert child.returncode == 0, child.stderr

    assert [type(m) for m in received] == [
        ImageUploadV1,
        ImagePublishV1,
        AwsPublishedV1,
        ComposeCompleteV1,
    ]
    assert [m.topic for m in received] == [f"org.fedoraproject.prod.{m.topic}" for m in expected]
    assert [m.body for m in received] == [m.body for m in expected]
    upload = received[0]
    assert upload._headers["fedora_messaging_schema"] == "fedimg.image.upload.v1"
    assert upload._headers["fedora_messaging_schema_package"] == "fedimg_messages"
    assert upload.severity == expected[0].severity


def test_fedora_messaging_accepts_the_config(tmp_path: Path) -> None:
    path = fedora_messaging_config(
        "amqp://guest:guest@127.0.0.1:1/%2F",
        tmp_path,
        queue="fedimg-q",
        routing_keys=["org.fedoraproject.*.pungi.compose.status.change"],
        callback="fedimg.consumer:Consumer",
        consumer_config={"settings": "/etc/fedimg.toml", "n": 2, "nested": {"ok": True}},
        exchange="fedimg-x",
    )
    conf = LazyConfig().load_config(str(path))
    assert conf["callback"] == "fedimg.consumer:Consumer"
    assert conf["publish_exchange"] == "fedimg-x"
    assert conf["bindings"] == [
        {
            "queue": "fedimg-q",
            "exchange": "fedimg-x",
            "routing_keys": ["org.fedoraproject.*.pungi.compose.status.change"],
        }
    ]
    assert conf["queues"]["fedimg-q"]["auto_delete"] is True
    assert conf["exchanges"]["fedimg-x"]["type"] == "topic"
    assert conf["consumer_config"] == {
        "settings": "/etc/fedimg.toml",
        "n": 2,
        "nested": {"ok": True},
    }
