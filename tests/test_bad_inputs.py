"""The bad-input corpus: every case gets a clear error and the right message disposition; the
consumer keeps running; nothing becomes public and nothing leaks (no fedimg snapshot, no AMI).

Dispositions: ``drop`` (the message is discarded: it or its compose metadata is bad), ``ack``
(the compose was read; the bad image failed with its reason in the summary, the others went on),
``config`` (fedimg refuses to start: exit status 2).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import lzma
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fedora_messaging.exceptions import Drop
from fedora_messaging.message import Message

from fedimg.aws.clients import Clients
from fedimg.config import Settings
from fedimg.consumer import Consumer
from fedimg.pipeline import Pipeline
from fedimg.source import BLOCK_SIZE
from fedimg.standins.samplecompose import SAMPLE_COMPOSE_ID, build_sample_compose, compose_message
from tests.helpers import ec2, synthetic_xz, trusting

TOPIC = "org.fedoraproject.prod.pungi.compose.status.change"
REGIONS = ("us-east-1", "us-west-2")
EC2_X86 = "Cloud/x86_64/images/Fedora-Cloud-Base-AmazonEC2-99-20261127.0.x86_64.raw.xz"
MAX_IMAGE_BYTES = 64 * BLOCK_SIZE


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the tree; any path containing ``-loop.`` redirects to itself forever."""

    def do_GET(self) -> None:
        if "-loop." in self.path:
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()
            return
        super().do_GET()

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("corpus")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def good_xz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_xz(tmp_path_factory.mktemp("img"), 16, 0.5)


@pytest.fixture(scope="module")
def consumer(moto_url: str, served: tuple[Path, str]) -> Consumer:
    """One consumer for the whole corpus: it must survive every case. It trusts the corpus's
    server."""
    from fedimg import config

    s = config.validate(Settings())
    s = dataclasses.replace(
        s,
        aws=dataclasses.replace(
            s.aws, endpoint_url=moto_url, regions=REGIONS, max_attempts=2, wait_seconds=30
        ),
        image=dataclasses.replace(s.image, max_image_bytes=MAX_IMAGE_BYTES),
        test=dataclasses.replace(s.test, enabled=False),
        publish=dataclasses.replace(s.publish, deprecate_after_days=0),
        messaging=dataclasses.replace(s.messaging, publish=False, max_redeliveries=1),
    )
    s = trusting(s, served[1])
    return Consumer(s, Pipeline(s, Clients(s.aws)), requeue_delay=lambda n: 0.0)


def metadata(location: Path, name: str) -> dict[str, Any]:
    return json.loads((location / "metadata" / name).read_text())


def save(location: Path, name: str, data: Any) -> None:
    (location / "metadata" / name).write_text(json.dumps(data))


def ec2_entry(location: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    data = metadata(location, "images.json")
    entry = next(
        i for i in data["payload"]["images"]["Cloud"]["x86_64"] if "AmazonEC2" in i["path"]
    )
    return data, entry


def set_image_bytes(location: Path, payload: bytes) -> None:
    """Replaces the EC2 image and fixes its checksum and size in the metadata (so only the
    image content is bad)."""
    import hashlib

    (location / EC2_X86).unlink()
    (location / EC2_X86).write_bytes(payload)
    data, entry = ec2_entry(location)
    entry["checksums"]["sha256"] = hashlib.sha256(payload).hexdigest()
    entry["size"] = len(payload)
    save(location, "images.json", data)


def edit_entry(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def mutate(location: Path) -> None:
        data, entry = ec2_entry(location)
        change(entry)
        save(location, "images.json", data)

    return mutate


def _raw_bytes(size: int) -> bytes:
    return lzma.compress(b"\x01" * size, preset=0)


# (case id, mutation of a good compose, expected disposition, words the error must contain)
COMPOSE_CASES: list[tuple[str, Callable[[Path], None], str, str]] = [
    (
        "missing composeinfo",
        lambda p: (p / "metadata/composeinfo.json").unlink(),
        "drop",
        "composeinfo",
    ),
    ("missing images.json", lambda p: (p / "metadata/images.json").unlink(), "drop", "images.json"),
    (
        "composeinfo not json",
        lambda p: (p / "metadata/composeinfo.json").write_text("{nope"),
        "drop",
        "JSON",
    ),
    (
        "images.json not json",
        lambda p: (p / "metadata/images.json").write_text("[1,"),
        "drop",
        "JSON",
    ),
    (
        "images.json wrong shape",
        lambda p: save(p, "images.json", {"payload": 3}),
        "drop",
        "images.json",
    ),
    (
        "path traversal",
        edit_entry(
            lambda e: e.update(path="../../../etc/Fedora-Cloud-Base-AmazonEC2-99.x86_64.raw.xz")
        ),
        "drop",
        "..",
    ),
    (
        "absolute path",
        edit_entry(lambda e: e.update(path="/etc/Fedora-Cloud-Base-AmazonEC2-99.x86_64.raw.xz")),
        "drop",
        "not inside the compose",
    ),
    ("missing sha256", edit_entry(lambda e: e.update(checksums={})), "drop", "sha256"),
    (
        "wrong checksum",
        edit_entry(lambda e: e["checksums"].update(sha256="0" * 64)),
        "ack",
        "SHA-256",
    ),
    (
        "404 image",
        edit_entry(
            lambda e: e.update(
                path="Cloud/x86_64/images/Fedora-Cloud-Base-AmazonEC2-99-gone.x86_64.raw.xz"
            )
        ),
        "ack",
        "404",
    ),
    (
        "redirect loop",
        edit_entry(
            lambda e: e.update(
                path="Cloud/x86_64/images/Fedora-Cloud-Base-AmazonEC2-99-loop.x86_64.raw.xz"
            )
        ),
        "ack",
        "redirects",
    ),
    (
        "truncated xz",
        lambda p: set_image_bytes(p, (p / EC2_X86).read_bytes()[:-200]),
        "ack",
        "xz",
    ),
    (
        "corrupt xz",
        lambda p: set_image_bytes(
            p, (lambda b: b[:200] + bytes(300) + b[500:])((p / EC2_X86).read_bytes())
        ),
        "ack",
        "xz",
    ),
    (
        "decompression bomb",
        lambda p: set_image_bytes(p, lzma.compress(bytes(4 * MAX_IMAGE_BYTES))),
        "ack",
        "more than",
    ),
    (
        "not whole sectors",
        lambda p: set_image_bytes(p, _raw_bytes(BLOCK_SIZE + 100)),
        "ack",
        "512-byte sectors",
    ),
    ("zero-length image", lambda p: set_image_bytes(p, lzma.compress(b"")), "ack", "empty"),
    ("not xz at all", lambda p: set_image_bytes(p, b"this is not an xz file" * 100), "ack", "xz"),
]

MESSAGE_CASES: list[tuple[str, Any, str]] = [
    ("body not an object", ["FINISHED"], "not an object"),
    ("no status", {"compose_id": "x", "location": "http://h/c"}, "no 'status'"),
    ("no compose_id", {"status": "FINISHED", "location": "http://h/c"}, "no 'compose_id'"),
    ("no location", {"status": "FINISHED", "compose_id": "x"}, "no 'location'"),
    ("status mistyped", {"status": None, "compose_id": "x", "location": "http://h/c"}, "'status'"),
    ("location mistyped", {"status": "FINISHED", "compose_id": "x", "location": 7}, "'location'"),
    (
        "unknown status",
        {"status": "PARTIAL", "compose_id": "x", "location": "http://h/c"},
        "not a pungi",
    ),
    (
        "ftp location",
        {"status": "FINISHED", "compose_id": "x", "location": "ftp://h/c"},
        "not an http",
    ),
    (
        "relative location",
        {"status": "FINISHED", "compose_id": "x", "location": "compose"},
        "not an http",
    ),
    (
        "enormous body",
        {
            "status": "FINISHED",
            "compose_id": "x",
            "location": "http://h/c",
            "junk": ["x" * 1000] * 100,
        },
        "far smaller",
    ),
]

CONFIG_CASES: list[tuple[str, str, str]] = [
    ("unknown key", "[aws]\nregoins = ['us-east-1']\n", "aws.regoins: unknown key"),
    ("bad region", "[aws]\nregions = ['us-east-1', 'moon-1']\n", "aws.regions[1]"),
    ("tpm without uefi", "[image]\ntpm = true\n", "image.tpm"),
    (
        "bad name template",
        "[image]\nname_template = '{image_name}-{flavour}'\n",
        "image.name_template",
    ),
    ("unsupported arch", "[compose]\narches = ['s390x']\n", "compose.arches[0]"),
]


def nothing_public_nothing_leaked(url: str) -> None:
    for region in REGIONS:
        assert ec2(url, region).describe_images(Owners=["self"])["Images"] == []
    snaps = ec2(url).describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["fedimg:state"]}]
    )["Snapshots"]
    assert snaps == []


@pytest.mark.parametrize(
    ("case", "mutate", "disposition", "words"), COMPOSE_CASES, ids=[c[0] for c in COMPOSE_CASES]
)
def test_bad_compose(
    case: str,
    mutate: Callable[[Path], None],
    disposition: str,
    words: str,
    served: tuple[Path, str],
    good_xz: Path,
    consumer: Consumer,
    aws: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, base = served
    tree = root / case.replace(" ", "-")
    location = build_sample_compose(tree, good_xz)
    mutate(location)
    url = f"{base}/{location.relative_to(root).as_posix()}"
    m = Message(topic=TOPIC, body=compose_message(SAMPLE_COMPOSE_ID, url))
    before = len(consumer.outcomes)
    if disposition == "drop":
        with pytest.raises(Drop):
            consumer(m)
        assert words in caplog.text
    else:
        assert consumer(m) is None  # acknowledged, not requeued
        assert len(consumer.outcomes) == before + 1
        (image,) = consumer.outcomes[-1].images
        assert image.status == "failed" and not image.retryable
        assert words in image.error
        assert "\n" not in image.error
    nothing_public_nothing_leaked(aws)


@pytest.mark.parametrize(
    ("case", "body", "words"), MESSAGE_CASES, ids=[c[0] for c in MESSAGE_CASES]
)
def test_bad_message(
    case: str, body: Any, words: str, consumer: Consumer, aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(Drop):
        consumer(Message(topic=TOPIC, body=body))
    assert words in caplog.text
    nothing_public_nothing_leaked(aws)


@pytest.mark.parametrize(("case", "toml", "words"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(case: str, toml: str, words: str, tmp_path: Path) -> None:
    cfg = tmp_path / "fedimg.toml"
    cfg.write_text(toml)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedimg.cli",
            "--config",
            str(cfg),
            "compose",
            "--dry-run",
            "/nonexistent",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_consumer_still_works_after_the_corpus(
    served: tuple[Path, str], good_xz: Path, consumer: Consumer, aws: str
) -> None:
    root, base = served
    location = build_sample_compose(root / "good", good_xz)
    url = f"{base}/{location.relative_to(root).as_posix()}"
    consumer(Message(topic=TOPIC, body=compose_message(SAMPLE_COMPOSE_ID, url)))
    assert consumer.outcomes[-1].ok


def test_an_image_type_productmd_does_not_know_does_not_stop_the_compose(
    served: tuple[Path, str],
    good_xz: Path,
    consumer: Consumer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pungi lists image types before productmd knows them: such an entry is skipped with a
    warning, and the EC2 image next to it is published."""
    root, base = served
    location = build_sample_compose(root / "new-type", good_xz)
    data, entry = ec2_entry(location)
    newcomer = {**entry, "type": "raw-zst", "format": "raw.zst"}
    newcomer["path"] = entry["path"].replace(".raw.xz", ".raw.zst")
    data["payload"]["images"]["Cloud"]["x86_64"].append(newcomer)
    save(location, "images.json", data)
    url = f"{base}/{location.relative_to(root).as_posix()}"

    consumer(Message(topic=TOPIC, body=compose_message(SAMPLE_COMPOSE_ID, url)))

    assert [i.status for i in consumer.outcomes[-1].images] == ["published"]
    assert f"skipped image Cloud/x86_64 {newcomer['path']}: Image: Field" in caplog.text
