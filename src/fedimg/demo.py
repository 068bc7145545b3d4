"""The embedded default: fedimg's whole job with no AWS account.

Stand-ins, named as such: a moto server on a free loopback port for AWS, a local ResultsDB
stand-in, and the project's own small bootable sample image (built and cached in ./build) inside a
sample compose served over HTTP on loopback. What is real: the pipeline, productmd, QEMU booting
the image, SSH checks, and (with ``--broker``) RabbitMQ.

Steps: local boot test of the image under QEMU (BIOS and UEFI) → a FINISHED compose message →
the consumer → upload, register, EC2 boot test (moto cannot boot instances, so the test's SSH goes
to a QEMU guest of the same image) → copies to every region → publish → a table of the result.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedimg import config as config_mod
from fedimg.aws.clients import Clients
from fedimg.boot.sample import SAMPLE_CHECKS
from fedimg.config import Settings
from fedimg.errors import TransientError
from fedimg.events import Event, fan_out
from fedimg.pipeline import ComposeOutcome, Pipeline

BUILD_DIR = Path("build")
DEMO_REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2")
TOPIC = "org.fedoraproject.prod.pungi.compose.status.change"


def demo_settings(base: Settings, moto_url: str, resultsdb_url: str) -> Settings:
    return dataclasses.replace(
        base,
        aws=dataclasses.replace(
            base.aws,
            endpoint_url=moto_url,
            regions=DEMO_REGIONS,
            # moto answers unimplemented calls (image deprecation) with 500: fail those fast.
            max_attempts=2,
            upload_workers=16,
        ),
        test=dataclasses.replace(
            base.test, ssh_user="root", checks=SAMPLE_CHECKS, boot_seconds=60, ssh_seconds=60
        ),
        resultsdb=dataclasses.replace(base.resultsdb, url=resultsdb_url),
        messaging=dataclasses.replace(base.messaging, publish=False),
        compose=dataclasses.replace(base.compose, arches=("x86_64",)),
    )


def run_demo(
    config_path: str | None = None, *, broker: str | None = None, build_dir: Path = BUILD_DIR
) -> ComposeOutcome:
    from fedimg.aws.boottest import Ec2BootTester, SshTarget
    from fedimg.boot.qemu import running_guest
    from fedimg.boot.sample import sample_image, sample_image_xz
    from fedimg.consumer import Consumer
    from fedimg.report import ResultsReporter, results_command
    from fedimg.samplecompose import (
        SAMPLE_COMPOSE_ID,
        build_sample_compose,
        compose_message,
        serve_directory,
    )
    from fedimg.standins.moto import moto_in_process
    from fedimg.standins.resultsdb import resultsdb_standin

    # Wide enough for full AMI ids when the output is not a terminal.
    console = Console(width=None if Console().is_terminal else 150)
    console.rule("[bold]fedimg demo")
    console.print("building (or reusing) the sample bootable image in build/ …")
    raw, xz = sample_image(build_dir), sample_image_xz(build_dir)
    tree = build_dir / "demo"
    location = build_sample_compose(tree, xz)

    with (
        moto_in_process() as moto_url,
        resultsdb_standin() as resultsdb_url,
        serve_directory(tree) as http,
    ):
        console.print(f"AWS stand-in (moto): {moto_url}")
        console.print(f"ResultsDB stand-in:  {resultsdb_url}")
        compose_url = f"{http}/{location.relative_to(tree).as_posix()}"
        console.print(f"sample compose:      {compose_url}")
        settings = demo_settings(config_mod.load(config_path), moto_url, resultsdb_url)
        reporter = ResultsReporter(settings.resultsdb)

        console.rule("local boot test (QEMU)")
        _local_boot_tests(console, raw, xz, compose_url, settings, reporter)

        console.rule("the compose pipeline")
        clients = Clients(settings.aws)
        with running_guest(raw, "bios", settings.test.ssh_user) as guest:
            console.print(f"EC2 boot test: SSH goes to a QEMU guest at {guest.host}:{guest.port}")

            def to_guest(instance: dict[str, Any], pkey: Any) -> SshTarget:
                return SshTarget(guest.host, guest.port, guest.pkey)

            pipeline = Pipeline(
                settings,
                clients,
                sink=fan_out([_printer(console)]),
                tester=Ec2BootTester(settings, clients, resolve=to_guest),
                reporter=reporter,
            )
            consumer = Consumer(settings, pipeline)
            body = compose_message(SAMPLE_COMPOSE_ID, compose_url)
            for message in _messages(body, broker, console):
                consumer(message)
        (outcome,) = consumer.outcomes

        console.rule("result")
        console.print(region_table(outcome, clients))
        console.rule("ResultsDB")
        results_command(resultsdb_url, SAMPLE_COMPOSE_ID, as_json=False, console=console)
    return outcome


def _local_boot_tests(
    console: Console,
    raw: Path,
    xz: Path,
    compose_url: str,
    settings: Settings,
    reporter: Any,
) -> None:
    from fedimg.boot.qemu import boot_test
    from fedimg.compose import discover
    from fedimg.report import TESTCASE_LOCAL_BOOT, ComposeRef, ImageRef, TestReport

    info, images = discover(compose_url, settings.compose)
    for firmware in ("bios", "uefi"):
        result = boot_test(raw, firmware, settings.test.checks, settings.test.ssh_user)
        checks = ", ".join(f"{c.name} {c.outcome}" for c in result.checks)
        took = f"{result.seconds:.1f} s"
        console.print(f"{xz.name} [{firmware}]: [bold]{result.outcome}[/] in {took} ({checks})")
        reporter.report(
            TestReport(
                outcome=result.outcome,
                testcase=TESTCASE_LOCAL_BOOT,
                image=ImageRef.from_productmd(images[0].metadata),
                compose=ComposeRef.from_composeinfo(info.metadata),
                firmware=firmware,
                note=result.reason,
            )
        )


def _messages(body: dict[str, Any], broker: str | None, console: Console) -> Iterator[Any]:
    """The FINISHED message: made in-process, or sent through a real broker and received back."""
    from fedora_messaging.message import Message

    if broker is None:
        console.print("feeding a FINISHED compose message to the consumer (in-process)")
        yield Message(topic=TOPIC, body=body)
        return
    console.print(f"sending a FINISHED compose message through {broker}")
    with _through_broker(broker, body) as received:
        yield received


@contextmanager
def _through_broker(url: str, body: dict[str, Any]) -> Iterator[Any]:
    """Publishes the message on a private exchange of the broker and takes it back off a queue."""
    import pika
    from fedora_messaging.message import Message

    name = f"fedimg-demo-{uuid.uuid4().hex[:8]}"
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError as e:
        # The URL may carry a password: name the error only.
        raise TransientError(f"cannot reach the broker: {type(e).__name__}") from e
    try:
        ch = conn.channel()
        ch.exchange_declare(name, "topic", auto_delete=True)
        ch.queue_declare(name, exclusive=True)
        ch.queue_bind(name, name, routing_key=TOPIC)
        ch.basic_publish(name, TOPIC, json.dumps(body).encode())
        for _ in range(50):
            method, _props, payload = ch.basic_get(name, auto_ack=True)
            if method is not None:
                break
            conn.sleep(0.1)
        else:
            raise TransientError("the message did not come back from the broker within 5 s")
        yield Message(topic=method.routing_key, body=json.loads(payload))
    finally:
        conn.close()


def _printer(console: Console) -> Any:
    def show(e: Event) -> None:
        if e.status == "progress" or e.stage == "compose":
            return
        where = f" {e.region}" if e.region else ""
        ami = e.detail.get("ami", "")
        console.print(f"  {e.stage:8} {e.status:10}{where} {ami}".rstrip())

    return show


def region_table(outcome: ComposeOutcome, clients: Clients) -> Table:
    """Image x region → AMI id, state, public — read back from AWS, not from memory."""
    table = Table(title=f"compose {outcome.compose_id}")
    for col in ("image", "region", "AMI", "state", "public"):
        table.add_column(col)
    for image in outcome.images:
        if not image.regions:
            table.add_row(image.image_name, "-", "-", image.status, image.error[:60])
        for region, ami in sorted(image.regions.items()):
            ec2 = clients.ec2(region)
            state = ec2.describe_images(ImageIds=[ami])["Images"][0].get("State", "?")
            perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
            public = {"Group": "all"} in perms.get("LaunchPermissions", [])
            table.add_row(image.image_name, region, ami, state, "yes" if public else "no")
    return table
