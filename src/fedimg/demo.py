"""The embedded default: fedimg's whole job with no AWS account.

Stand-ins, named as such: a moto server on a free loopback port for AWS, a local ResultsDB
stand-in, and the project's own small bootable sample images, x86_64 and aarch64 (built and cached
in ./build), inside two sample composes served over HTTP on loopback: a GA release and, a day
later, a Rawhide nightly of the same disks. What is real: the pipeline, productmd, QEMU booting the
images, SSH checks, and (with ``--broker``) RabbitMQ.

Steps: local boot test of each image under QEMU, in every firmware of its arch (x86_64: BIOS and
UEFI; aarch64: UEFI) → per compose, GA then nightly: a FINISHED compose message → the consumer →
per image: upload, register, EC2 boot test (moto cannot boot instances, so the test's SSH goes to a
QEMU guest of the image of the instance's architecture: aarch64 stands in for the ``t4g``
instance; the guests stay up for both composes) → copies to every region → publish → a table of
the result. Then the lifecycle: ``fedimg prune``'s report (nothing is removed) and the catalog of
both composes, GA first, written to ``build/demo-catalog``.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko
from rich.console import Console

from fedimg import composekind
from fedimg import config as config_mod
from fedimg.aws.clients import Clients
from fedimg.boot.sample import SAMPLE_CHECKS
from fedimg.composekind import Kind
from fedimg.config import RetentionSettings, Settings
from fedimg.errors import FedimgError, TransientError
from fedimg.events import Event, fan_out
from fedimg.identity import AWS_ARCH
from fedimg.pipeline import ComposeOutcome, Pipeline
from fedimg.regiontable import region_table
from fedimg.standins.samplecompose import (
    SAMPLE_COMPOSE_ID,
    SAMPLE_NIGHTLY_ID,
    build_sample_compose,
    compose_message,
    parse_compose_id,
    serve_directory,
)

if TYPE_CHECKING:
    from fedimg.aws.boottest import SshTarget, TargetResolver
    from fedimg.boot.qemu import Guest
    from fedimg.catalog import CatalogFiles
    from fedimg.compose import ComposeImage
    from fedimg.consumer import Consumer

BUILD_DIR = Path("build")
DEMO_REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2")
DEMO_ARCHES = ("x86_64", "aarch64")
TOPIC = "org.fedoraproject.prod.pungi.compose.status.change"
# Published in this order: a GA release, then a nightly of the same disks (samplecompose.py).
DEMO_COMPOSES = (SAMPLE_COMPOSE_ID, SAMPLE_NIGHTLY_ID)


def demo_settings(base: Settings, moto_url: str, resultsdb_url: str, compose_root: str) -> Settings:
    """``base`` pointed at the stand-ins, trusting the sample composes' loopback server (every
    compose under ``compose_root``), the boot test's SSH coming from loopback (to the QEMU
    guest)."""
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
            base.test,
            ssh_user="root",
            ssh_cidr="127.0.0.1/32",
            checks=SAMPLE_CHECKS,
            boot_seconds=60,
            ssh_seconds=60,
        ),
        resultsdb=dataclasses.replace(base.resultsdb, url=resultsdb_url),
        messaging=dataclasses.replace(base.messaging, publish=False),
        compose=dataclasses.replace(
            base.compose,
            arches=DEMO_ARCHES,
            trusted_locations=(*base.compose.trusted_locations, compose_root),
        ),
    )


def build_demo_composes(tree: Path, disks: Mapping[str, Path]) -> dict[str, Path]:
    """The demo's composes under ``tree``, in the order they are published: compose id → its
    location. The nightly holds the same disks: its own image names make its own AMIs."""
    return {cid: build_sample_compose(tree, disks, compose_id=cid) for cid in DEMO_COMPOSES}


def kind_of(compose_id: str) -> Kind:
    """What fedimg makes of a sample compose's metadata (its type and label)."""
    cid = parse_compose_id(compose_id)
    return composekind.classify(
        compose_id,
        compose_type=cid.compose_type,
        label=cid.label,
        release_version=cid.release_version,
    )


def run_demo(
    config_path: str | None = None, *, broker: str | None = None, build_dir: Path = BUILD_DIR
) -> list[ComposeOutcome]:
    """The demo; returns the outcome of each compose, in the order published."""
    from fedimg.aws.boottest import Ec2BootTester
    from fedimg.boot.sample import sample_image, sample_image_xz
    from fedimg.consumer import Consumer
    from fedimg.report import ResultsReporter, results_command
    from fedimg.standins.moto import moto_in_process
    from fedimg.standins.resultsdb import resultsdb_standin

    # Wide enough for full AMI ids when the output is not a terminal.
    console = Console(width=None if Console().is_terminal else 150)
    console.rule("[bold]fedimg demo")
    console.print("building (or reusing) the sample bootable images in build/ …")
    raws = {arch: sample_image(build_dir, arch) for arch in DEMO_ARCHES}
    tree = build_dir / "demo"
    disks = {arch: sample_image_xz(build_dir, arch) for arch in DEMO_ARCHES}
    locations = build_demo_composes(tree, disks)

    with (
        moto_in_process() as moto_url,
        resultsdb_standin() as resultsdb_url,
        serve_directory(tree) as http,
    ):
        console.print(f"AWS stand-in (moto): {moto_url}")
        console.print(f"ResultsDB stand-in:  {resultsdb_url}")
        urls = {cid: f"{http}/{loc.relative_to(tree).as_posix()}" for cid, loc in locations.items()}
        for cid, url in urls.items():
            console.print(f"sample compose ({kind_of(cid)}): {url}")
        settings = demo_settings(config_mod.load(config_path), moto_url, resultsdb_url, http)
        reporter = ResultsReporter(settings.resultsdb)

        console.rule("local boot test (QEMU)")
        _local_boot_tests(console, raws, urls[SAMPLE_COMPOSE_ID], settings, reporter)

        clients = Clients(settings.aws)
        with stand_in_guests(raws, settings) as guests:
            for arch, guest in guests.items():
                where = f"{guest.host}:{guest.port}"
                console.print(f"EC2 boot test of {arch} AMIs: SSH goes to a QEMU guest at {where}")
            pipeline = Pipeline(
                settings,
                clients,
                sink=fan_out([_printer(console)]),
                tester=Ec2BootTester(settings, clients, resolve=to_guest_of_arch(guests)),
                reporter=reporter,
            )
            outcomes = publish_composes(
                console, Consumer(settings, pipeline), clients, urls, broker
            )

        console.rule("ResultsDB")
        results_command(resultsdb_url, SAMPLE_COMPOSE_ID, as_json=False, console=console)
        show_lifecycle(console, settings, clients, build_dir / "demo-catalog")
    return outcomes


def publish_composes(
    console: Console,
    consumer: Consumer,
    clients: Clients,
    urls: Mapping[str, str],
    broker: str | None = None,
) -> list[ComposeOutcome]:
    """Feeds each compose's FINISHED message to ``consumer``, in order, and prints the table
    image x region of each."""
    outcomes = []
    for compose_id, url in urls.items():
        console.rule(f"the compose pipeline: {compose_id} ({kind_of(compose_id)})")
        for message in _messages(compose_message(compose_id, url), broker, console):
            consumer(message)
        outcome = consumer.outcomes[-1] if consumer.outcomes else None
        if outcome is None or outcome.compose_id != compose_id:
            raise FedimgError(f"compose {compose_id}: the consumer did not run it (see the log)")
        console.print(region_table(outcome, clients))
        outcomes.append(outcome)
    return outcomes


def show_lifecycle(
    console: Console, settings: Settings, clients: Clients, catalog_dir: Path
) -> CatalogFiles:
    """After publishing: what ``fedimg prune`` would do (report only: nothing is removed), then
    the catalog read from AWS (``fedimg list``'s table), written to ``catalog_dir``."""
    from fedimg.aws.prune import prune_command
    from fedimg.catalog import list_table, read_catalog, write_catalog

    console.rule("retention: fedimg prune (report only)")
    console.print(retention_summary(settings.retention), highlight=False)
    prune_command(settings, clients, act=False, as_json=False, console=console)
    console.rule("catalog")
    entries = read_catalog(settings, clients)
    console.print(list_table(entries, console.width))
    files = write_catalog(entries, catalog_dir)
    console.print(f"{files.entries} AMIs: {files.html_path} and {files.json_path}")
    return files


def retention_summary(retention: RetentionSettings) -> str:
    """The policy prune applies (prune_policy.py), in one line with the configured numbers."""
    ga = "GA kept for ever" + (" (protected from deregistration)" if retention.protect_ga else "")
    return (
        f"policy: {ga}; pre-releases {retention.prerelease_days_after_ga} days after their "
        f"release's GA; nightlies {retention.nightly_days} days; always the newest "
        f"{retention.keep_newest} composes of each release, subvariant and arch, and any AMI "
        'an SSM "latest" parameter names'
    )


def guest_firmware(settings: Settings, arch: str) -> str:
    """The firmware a test instance of ``arch`` boots with: UEFI for boot modes ``uefi`` and
    ``uefi-preferred`` (t3 and t4g instances support UEFI), BIOS for ``legacy-bios``."""
    mode = settings.image.boot_mode.get(arch, "uefi")
    return "bios" if mode == "legacy-bios" else "uefi"


@contextmanager
def stand_in_guests(raws: Mapping[str, Path], settings: Settings) -> Iterator[dict[str, Guest]]:
    """A running QEMU guest per arch, standing in for the test instances moto cannot boot."""
    from fedimg.boot.qemu import running_guest

    with ExitStack() as stack:
        yield {
            arch: stack.enter_context(
                running_guest(
                    raw, guest_firmware(settings, arch), settings.test.ssh_user, arch=arch
                )
            )
            for arch, raw in raws.items()
        }


def to_guest_of_arch(guests: Mapping[str, Guest]) -> TargetResolver:
    """The boot test's SSH target for an instance: the guest of the instance's architecture, as
    DescribeInstances names it (arm64 → the aarch64 guest)."""
    from fedimg.aws.boottest import SshTarget

    by_aws_arch = {AWS_ARCH[arch]: guest for arch, guest in guests.items()}

    def resolve(instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
        guest = by_aws_arch.get(str(instance.get("Architecture")))
        if guest is None:
            raise TransientError(f"no stand-in guest for a {instance.get('Architecture')} instance")
        return SshTarget(guest.host, guest.port, guest.pkey)

    return resolve


def local_boot_plan(
    images: list[ComposeImage], raws: Mapping[str, Path]
) -> list[tuple[ComposeImage, Path, str]]:
    """(image, its raw disk, firmware) for every firmware QEMU boots the image's arch with."""
    from fedimg.boot.qemu import MACHINES

    return [
        (image, raws[image.arch], firmware)
        for image in images
        for firmware in MACHINES[image.arch].firmwares
    ]


def _local_boot_tests(
    console: Console,
    raws: Mapping[str, Path],
    compose_url: str,
    settings: Settings,
    reporter: Any,
) -> None:
    from fedimg.boot.qemu import boot_test
    from fedimg.compose import discover
    from fedimg.report import TESTCASE_LOCAL_BOOT, ComposeRef, ImageRef, TestReport

    info, images = discover(compose_url, settings.compose)
    for image, raw, firmware in local_boot_plan(images, raws):
        t = settings.test
        result = boot_test(raw, firmware, t.checks, t.ssh_user, arch=image.arch)
        checks = ", ".join(f"{c.name} {c.outcome}" for c in result.checks)
        took = f"{result.seconds:.1f} s"
        name = image.path.rsplit("/", 1)[-1]
        # "(uefi)", not "[uefi]": rich would take the brackets for markup and drop them.
        where = f"{name} ({result.arch or image.arch}, {firmware})"
        console.print(f"{where}: [bold]{result.outcome}[/] in {took} ({checks})")
        reporter.report(
            TestReport(
                outcome=result.outcome,
                testcase=TESTCASE_LOCAL_BOOT,
                image=ImageRef.from_productmd(image.metadata),
                compose=ComposeRef.from_composeinfo(info.metadata),
                firmware=firmware,
                arch=result.arch,
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
