"""Compose messages as an attacker would send them, to one in-process consumer.

Two real HTTP servers on loopback: the trusted compose server (the consumer trusts only its
``/composes/`` tree) and an untrusted one serving the very same composes, so that anything
fetched from it would publish. The trusted server also serves a copy under ``/composes-evil/``
(a path-prefix look-alike). Each attack is dropped (or its image fails) with a clear log line,
the untrusted server receives no request, nothing becomes public, and the same consumer then
publishes a good compose.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from fedora_messaging.exceptions import Drop
from fedora_messaging.message import Message

from fedimg.aws.clients import Clients
from fedimg.config import Settings, validate
from fedimg.consumer import Consumer
from fedimg.pipeline import Pipeline
from fedimg.standins.samplecompose import SAMPLE_COMPOSE_ID, build_sample_compose, compose_message
from tests.helpers import ec2, synthetic_xz, trusting

TOPIC = "org.fedoraproject.prod.pungi.compose.status.change"
REGIONS = ("us-east-1", "us-west-2")
NEWER_ID = "Fedora-Cloud-99-20261128.0"
SSM_NAME = "/fedimg/99/Cloud_Base/x86_64/latest"
# Under the trusted tree: a compose whose metadata redirects away, and one whose image does.
META_AWAY, IMAGE_AWAY = "/composes/meta-away/", "/composes/image-away/"


class _Server(http.server.ThreadingHTTPServer):
    """Records every request path; ``redirect`` maps a path to a Location, or None to serve."""

    def __init__(self, root: Path, redirect: Callable[[str], str | None]) -> None:
        super().__init__(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        self.seen: list[str] = []
        self.redirect = redirect

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        target = self.server.redirect(self.path)
        if target is None:
            super().do_GET()
            return
        self.send_response(302)
        self.send_header("Location", target)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(root: Path, redirect: Callable[[str], str | None]) -> Iterator[_Server]:
    server = _Server(root, redirect)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclasses.dataclass
class World:
    trusted: _Server
    untrusted: _Server
    root: Path

    def location(self, tree: str, compose_id: str = SAMPLE_COMPOSE_ID) -> str:
        return f"{self.trusted.url}/{tree}/{compose_id}/compose"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("attacker")
    xz = synthetic_xz(tmp_path_factory.mktemp("img"), 8, 0.5)
    for tree in ("composes", "composes-evil", "composes/meta-away", "composes/image-away"):
        for compose_id in (SAMPLE_COMPOSE_ID, NEWER_ID):
            build_sample_compose(root / tree, xz, compose_id)
    away: dict[str, str] = {}

    def redirect(path: str) -> str | None:
        if path.startswith(META_AWAY) or (path.startswith(IMAGE_AWAY) and ".raw." in path):
            return f"{away['url']}/composes/{path.split('/', 3)[3]}"
        return None

    with serving(root, lambda path: None) as untrusted, serving(root, redirect) as trusted:
        away["url"] = untrusted.url
        yield World(trusted, untrusted, root)


@pytest.fixture(scope="module")
def consumer(moto_url: str, world: World) -> Consumer:
    """One consumer for every attack; it trusts Fedora's tree and the trusted server's
    /composes/ only."""
    s = Settings()
    s = dataclasses.replace(
        s,
        aws=dataclasses.replace(
            s.aws, endpoint_url=moto_url, regions=REGIONS, max_attempts=2, wait_seconds=30
        ),
        test=dataclasses.replace(s.test, enabled=False),
        publish=dataclasses.replace(s.publish, deprecate_after_days=0),
        messaging=dataclasses.replace(s.messaging, publish=False, max_redeliveries=1),
    )
    s = validate(trusting(s, f"{world.trusted.url}/composes/"))
    return Consumer(s, Pipeline(s, Clients(s.aws)), requeue_delay=lambda n: 0.0)


def deliver(consumer: Consumer, location: str, compose_id: str = SAMPLE_COMPOSE_ID) -> None:
    consumer(Message(topic=TOPIC, body=compose_message(compose_id, location)))


def amis(aws: str) -> dict[str, list[str]]:
    return {
        r: sorted(i["ImageId"] for i in ec2(aws, r).describe_images(Owners=["self"])["Images"])
        for r in REGIONS
    }


def nothing_public_nothing_fetched_outside(aws: str, world: World) -> None:
    assert amis(aws) == {r: [] for r in REGIONS}
    assert world.untrusted.seen == []


@pytest.fixture(autouse=True)
def forget_requests(world: World) -> None:
    world.trusted.seen.clear()
    world.untrusted.seen.clear()


def test_untrusted_host_is_dropped_before_any_request(
    consumer: Consumer, world: World, aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    location = f"{world.untrusted.url}/composes/{SAMPLE_COMPOSE_ID}/compose"
    with pytest.raises(Drop):
        deliver(consumer, location)
    assert f"location {location} is outside the trusted compose locations" in caplog.text
    nothing_public_nothing_fetched_outside(aws, world)


def test_metadata_redirect_to_an_untrusted_host_is_not_followed(
    consumer: Consumer, world: World, aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(Drop):
        deliver(consumer, world.location("composes/meta-away"))
    assert "composeinfo.json redirects outside: redirect target" in caplog.text
    assert world.trusted.seen  # it was asked, and answered with the redirect
    nothing_public_nothing_fetched_outside(aws, world)


def test_image_redirect_to_an_untrusted_host_fails_the_image(
    consumer: Consumer, world: World, aws: str
) -> None:
    deliver(consumer, world.location("composes/image-away"))  # acknowledged: the compose is good
    (image,) = consumer.outcomes[-1].images
    assert image.status == "failed" and not image.retryable
    assert "redirects outside: redirect target http://127.0.0.1:" in (image.error or "")
    assert any(".raw.xz" in p for p in world.trusted.seen)
    nothing_public_nothing_fetched_outside(aws, world)


# Each look-alike of the trusted location, as a template over the two servers' ports, with the
# reason the drop gives. Without the refusal, each would fetch a servable compose.
LOOK_ALIKES = [
    ("userinfo", "http://127.0.0.1:{t}@127.0.0.1:{u}/composes/{id}/compose", "userinfo"),
    ("host look-alike", "https://127.0.0.1.evil.example:{t}/composes/{id}/compose", "outside"),
    ("another loopback host", "http://localhost:{t}/composes/{id}/compose", "outside"),
    ("another port", "http://127.0.0.1:{u}/composes/{id}/compose", "outside"),
    ("dot-dot", "http://127.0.0.1:{t}/composes/../composes-evil/{id}/compose", "'..'"),
    ("encoded dots", "http://127.0.0.1:{t}/composes/%2e%2e/composes-evil/{id}/compose", "'..'"),
    ("encoded slash", "http://127.0.0.1:{t}/composes%2F..%2Fcomposes-evil/{id}/compose", "slash"),
    ("path prefix look-alike", "http://127.0.0.1:{t}/composes-evil/{id}/compose", "outside"),
    ("plain http elsewhere", "http://kojipkgs.fedoraproject.org/compose/{id}/compose", "loopback"),
]


@pytest.mark.parametrize(
    ("case", "template", "reason"), LOOK_ALIKES, ids=[c[0] for c in LOOK_ALIKES]
)
def test_look_alike_locations_are_dropped_before_any_request(
    case: str,
    template: str,
    reason: str,
    consumer: Consumer,
    world: World,
    aws: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ports = {"t": world.trusted.server_address[1], "u": world.untrusted.server_address[1]}
    location = template.format(id=SAMPLE_COMPOSE_ID, **ports)
    with pytest.raises(Drop):
        deliver(consumer, location)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropping")]
    assert "compose.trusted_locations" in line and reason in line
    assert world.trusted.seen == []
    nothing_public_nothing_fetched_outside(aws, world)


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data["payload"]["compose"])
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("where", ["message", "images.json", "composeinfo.json date"])
def test_a_compose_that_is_not_the_one_the_message_names_is_dropped(
    where: str,
    consumer: Consumer,
    world: World,
    aws: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tree = f"composes/mismatch-{where.split('.')[0].replace(' ', '-')}"
    location = build_sample_compose(world.root / tree, synthetic_xz(tmp_path, 2, 0.5))
    message_id = NEWER_ID if where == "message" else SAMPLE_COMPOSE_ID
    if where == "images.json":
        _edit(location / "metadata/images.json", lambda c: c.update(id=NEWER_ID))
    elif where.startswith("composeinfo"):
        _edit(location / "metadata/composeinfo.json", lambda c: c.update(date="20261201"))
    with pytest.raises(Drop):
        deliver(consumer, world.location(tree), message_id)
    if where.startswith("composeinfo"):
        assert "date 20261201, type production and respin 0 make the id" in caplog.text
    else:
        images_id = NEWER_ID if where == "images.json" else SAMPLE_COMPOSE_ID
        assert (
            f"compose ids differ: message {message_id}, composeinfo.json {SAMPLE_COMPOSE_ID}, "
            f"images.json {images_id}; dropping the message"
        ) in caplog.text
    nothing_public_nothing_fetched_outside(aws, world)


def public_amis(aws: str) -> set[str]:
    return {
        i["ImageId"]
        for r in REGIONS
        for i in ec2(aws, r).describe_images(Owners=["self"])["Images"]
        if i.get("Public")
    }


def latest(aws: str) -> dict[str, str]:
    return {
        r: boto3.client("ssm", region_name=r, endpoint_url=aws).get_parameter(Name=SSM_NAME)[
            "Parameter"
        ]["Value"]
        for r in REGIONS
    }


def test_a_replayed_old_message_publishes_nothing_new(
    consumer: Consumer, world: World, aws: str
) -> None:
    """The older compose, then the newer, then the older one's message again: the replay finds
    its work done, adds no AMI and does not move the SSM parameter back."""
    deliver(consumer, world.location("composes"))
    deliver(consumer, world.location("composes", NEWER_ID), NEWER_ID)
    before, newest = amis(aws), latest(aws)
    public = public_amis(aws)
    assert all(len(ids) == 2 for ids in before.values()) and len(public) == 4

    deliver(consumer, world.location("composes"))

    assert consumer.outcomes[-1].ok
    assert amis(aws) == before and public_amis(aws) == public
    assert latest(aws) == newest
    assert world.untrusted.seen == []


def test_the_consumer_still_publishes_a_good_compose_after_the_attacks(
    consumer: Consumer, world: World, aws: str
) -> None:
    deliver(consumer, world.location("composes"))
    assert consumer.outcomes[-1].ok
    assert len(public_amis(aws)) == len(REGIONS)
    assert world.untrusted.seen == []
