"""fedimg's command line. Thin: parses, sets up logging and output, calls the pipeline."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from fedimg import config as config_mod
from fedimg import logsafety
from fedimg.errors import ConfigError, FedimgError, InputError
from fedimg.events import Event, Sink, fan_out, log_sink

log = logging.getLogger("fedimg")
F = TypeVar("F", bound=Callable[..., Any])


class _Context:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: config_mod.Settings | None = None

    @property
    def settings(self) -> config_mod.Settings:
        if self._settings is None:
            self._settings = config_mod.load(self.config_path)
        return self._settings


def _fail_cleanly(fn: F) -> F:
    """Known errors become one line on stderr: exit 2 for configuration, 1 for the rest."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            click.echo(f"fedimg: config error: {e}", err=True)
            sys.exit(2)
        except FedimgError as e:
            click.echo(f"fedimg: error: {e}", err=True)
            sys.exit(1)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper  # type: ignore[return-value]


# The optional dependency group (pyproject.toml) holding moto, which only the demo needs.
STANDINS_EXTRA = "demo"
CONFIG_HELP = "fedimg TOML settings (default: $FEDIMG_CONFIG, else built-in defaults)."


def _config_after_command(fn: F) -> F:
    """Accepts ``--config`` after the command too (``fedimg results X --config f.toml``); given
    in both places, the later one wins."""

    def remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        context = ctx.find_object(_Context)  # made by main(), which runs first
        if value is not None and context is not None:
            context.config_path = value

    option = click.option(
        "--config",
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=remember,
        help=CONFIG_HELP,
    )
    return option(fn)


@click.group()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar=config_mod.ENV_VAR,
    help=CONFIG_HELP,
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for AWS calls).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """fedimg: Fedora composes to tested, public Amazon EC2 images."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("fedimg").setLevel(logging.INFO if verbose == 0 else logging.DEBUG)
    if verbose < 2:
        for noisy in ("botocore", "boto3", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    logsafety.install()
    ctx.obj = _Context(config_path)


@main.command()
@_config_after_command
@click.argument("image")
@click.option("--region", help="Base region (default: aws.base_region).")
@click.option("--arch", type=click.Choice(["x86_64", "aarch64"]), help="Default: from the name.")
@click.option("--sha256", help="Expected SHA-256 of the file as given (verified while reading).")
@click.option("--name", "ami_name", help="AMI name (default: image.name_template).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@_fail_cleanly
def upload(
    obj: _Context,
    image: str,
    region: str | None,
    arch: str | None,
    sha256: str | None,
    ami_name: str | None,
    as_json: bool,
) -> None:
    """Upload IMAGE (path or URL; .raw, .raw.xz, .raw.gz, .raw.zst) and register an AMI."""
    from fedimg.aws.clients import Clients
    from fedimg.identity import ImageIdentity, arch_from_name
    from fedimg.source import image_name_of
    from fedimg.upload import upload_image

    if "://" not in image and not os.path.isfile(image):
        raise InputError(f"{image}: no such file")
    settings = obj.settings
    if region:
        config_mod.validate(settings.with_aws(base_region=region))
        settings = settings.with_aws(base_region=region)
    identity = ImageIdentity(
        image_name=image_name_of(image),
        arch=arch or arch_from_name(image_name_of(image)),
        sha256=(sha256 or "").lower(),
        url=image,
    )
    clients = Clients(settings.aws)
    with _progress(as_json) as progress:
        outcome = upload_image(
            image,
            identity,
            settings,
            clients,
            sink=fan_out([log_sink, progress]),
            ami_name=ami_name,
        )
    if as_json:
        click.echo(json.dumps(outcome.to_json()))
    else:
        click.echo(f"AMI {outcome.ami} ({outcome.name}) in {outcome.region}")
        click.echo(f"snapshot {outcome.snapshot}")
        click.echo(
            f"{outcome.blocks_sent} blocks sent, {outcome.blocks_skipped} zero blocks skipped, "
            f"{outcome.bytes_read} bytes read in {outcome.seconds:.1f} s"
            + (" (reused an earlier upload)" if outcome.reused else "")
        )


@contextmanager
def _progress(quiet: bool) -> Iterator[Sink]:
    """A rich progress bar on a terminal; otherwise a log line every few seconds."""
    if quiet:
        yield lambda e: None
        return
    if sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[blocks]}"),
            TransferSpeedColumn(),
            transient=True,
        ) as bar:
            tasks: dict[str, Any] = {}

            def show(e: Event) -> None:
                if e.stage != "upload" or e.status != "progress":
                    return
                if e.image not in tasks:
                    tasks[e.image] = bar.add_task(e.image, total=None, blocks="")
                d = e.detail
                bar.update(
                    tasks[e.image],
                    completed=d["bytes_read"],
                    blocks=f"{d['blocks_sent']} sent, {d['blocks_skipped']} skipped",
                )

            yield show
        return
    last = [0.0]

    def log_every_5s(e: Event) -> None:
        if e.stage == "upload" and e.status == "progress" and time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            d = e.detail
            log.info(
                "%s: %d bytes read, %d blocks sent, %d skipped",
                e.image,
                d["bytes_read"],
                d["blocks_sent"],
                d["blocks_skipped"],
            )

    yield log_every_5s


@main.command()
@_config_after_command
@click.argument("location")
@click.option("--dry-run", is_flag=True, help="Only list the images that would be published.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--timeline",
    type=click.Path(dir_okay=False),
    help="Draw each image's stages and copies against time to this file (.png, .svg).",
)
@click.pass_obj
@_fail_cleanly
def compose(
    obj: _Context, location: str, dry_run: bool, as_json: bool, timeline: str | None
) -> None:
    """Publish the EC2 images of the compose at LOCATION (its .../compose dir: URL or path)."""
    from fedimg.compose import discover

    settings = obj.settings
    if dry_run:
        _, images = discover(location, settings.compose)
        if as_json:
            click.echo(json.dumps([i.to_dry_run() for i in images], indent=2))
        else:
            for i in images:
                click.echo(f"{i.arch:8} {i.subvariant:12} {i.type:8} {i.size:>12} {i.path}")
        return
    from fedimg.timeline import TimelineRecorder, check_drawable
    from fedimg.wiring import build_pipeline

    if timeline:
        check_drawable()  # before the run, not after it
    recorder = TimelineRecorder()
    pipeline = build_pipeline(settings, (recorder,) if timeline else ())
    outcome = pipeline.run_compose(location)
    if timeline:
        from pathlib import Path

        from fedimg.timeline import draw, spans

        draw(spans(recorder.events), Path(timeline), f"compose {outcome.compose_id}")
    summary = [i.summary() for i in outcome.images]
    if as_json:
        click.echo(json.dumps({"compose_id": outcome.compose_id, "images": summary}, indent=2))
    else:
        from rich.console import Console

        from fedimg.regiontable import region_table

        Console().print(region_table(outcome, pipeline.clients))
    if not outcome.ok:
        sys.exit(1)


@main.command()
@_config_after_command
@click.argument("compose_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_fail_cleanly
def results(obj: _Context, compose_id: str, as_json: bool) -> None:
    """Show fedimg's test results in ResultsDB for COMPOSE_ID."""
    from fedimg.report import EXIT_NOT_CONFIGURED, results_command

    url = obj.settings.resultsdb.url
    if not url:
        click.echo(
            "fedimg: error: resultsdb.url is not set; give ResultsDB's URL in the configuration "
            f"(--config or ${config_mod.ENV_VAR})",
            err=True,
        )
        sys.exit(EXIT_NOT_CONFIGURED)
    sys.exit(results_command(url, compose_id, as_json))


@main.command("test-image")
@_config_after_command
@click.argument("image")
@click.option(
    "--firmware",
    type=click.Choice(["bios", "uefi", "both"]),
    default="both",
    show_default=True,
    help="both: every firmware the architecture has (aarch64: only uefi).",
)
@click.option(
    "--arch",
    type=click.Choice(["x86_64", "aarch64"]),
    help="The image's architecture (default: read from the loader in its EFI system partition).",
)
@click.option("--user", default="root", show_default=True, help="User to SSH in as.")
@click.option(
    "--sample-checks", is_flag=True, help="The checks fedimg's busybox sample image can answer."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list when --firmware both).")
@click.pass_obj
@_fail_cleanly
def test_image(
    obj: _Context,
    image: str,
    firmware: str,
    arch: str | None,
    user: str,
    sample_checks: bool,
    as_json: bool,
) -> None:
    """Boot IMAGE (a .raw or .raw.xz path, or an http(s) URL of a .raw, .raw.xz, .raw.gz or
    .raw.zst, downloaded first) under QEMU and run the checks over SSH; never modifies it."""
    import dataclasses

    from fedimg.boot.qemu import test_image_command
    from fedimg.boot.sample import SAMPLE_CHECKS

    test = obj.settings.test
    if sample_checks:
        test = dataclasses.replace(test, checks=SAMPLE_CHECKS)
    sys.exit(test_image_command(image, firmware, test, user, as_json, arch=arch))


@main.command()
@_config_after_command
@click.option("--yes", is_flag=True, help="Remove what is found (default: only report).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_fail_cleanly
def gc(obj: _Context, yes: bool, as_json: bool) -> None:
    """Find (and with --yes remove) resources fedimg left behind: unfinished snapshots, test
    instances, key pairs, security groups, snapshots no AMI uses."""
    from fedimg.aws.clients import Clients
    from fedimg.aws.gc import gc_command

    settings = obj.settings
    sys.exit(gc_command(settings, Clients(settings.aws), act=yes, as_json=as_json))


@main.command()
@_config_after_command
@click.option("--yes", is_flag=True, help="Act on the policy (default: only report).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_fail_cleanly
def prune(obj: _Context, yes: bool, as_json: bool) -> None:
    """Apply the retention policy ([retention]) to fedimg's AMIs in every configured region:
    report what it would remove and protect; with --yes, do it."""
    from fedimg.aws.clients import Clients
    from fedimg.aws.prune import prune_command

    settings = obj.settings
    sys.exit(prune_command(settings, Clients(settings.aws), act=yes, as_json=as_json))


@main.command()
@_config_after_command
@click.option(
    "--output",
    "output_dir",
    type=click.Path(file_okay=False),
    help="Directory for catalog.json and index.html (default: catalog.output_dir, else ./catalog).",
)
@click.pass_obj
@_fail_cleanly
def catalog(obj: _Context, output_dir: str | None) -> None:
    """Write the public catalog (catalog.json and a static index.html) of fedimg's AMIs, read
    from AWS in every configured region."""
    from fedimg.aws.clients import Clients
    from fedimg.catalog import catalog_command

    settings = obj.settings
    output_dir = output_dir or settings.catalog.output_dir or "catalog"
    sys.exit(catalog_command(settings, Clients(settings.aws), output_dir))


@main.command("list")
@_config_after_command
@click.option("--release", help="Only this release (42, Rawhide).")
@click.option("--region", help="Only this region.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (catalog.json's entries).")
@click.pass_obj
@_fail_cleanly
def list_images(obj: _Context, release: str | None, region: str | None, as_json: bool) -> None:
    """List fedimg's AMIs as AWS holds them: the catalog, for operators."""
    from fedimg.aws.clients import Clients
    from fedimg.catalog import list_command

    settings = obj.settings
    sys.exit(
        list_command(
            settings, Clients(settings.aws), release=release, region=region, as_json=as_json
        )
    )


@main.command()
@_config_after_command
@click.option("--broker", help="AMQP URL: feed the compose message through this broker.")
@click.pass_obj
@_fail_cleanly
def demo(obj: _Context, broker: str | None) -> None:
    """The whole job with no AWS account: a local AWS stand-in (moto) and a sample compose."""
    try:
        import moto  # noqa: F401 - first, so a missing stand-in is named before anything starts

        from fedimg.demo import run_demo
    except ImportError as e:
        if (e.name or "").partition(".")[0] != "moto":
            raise
        raise FedimgError(
            f"the demo needs the local stand-ins: pip install 'fedimg[{STANDINS_EXTRA}]'"
        ) from None
    run_demo(obj.config_path, broker=broker)


@main.command()
@_config_after_command
@click.option("--compose-url", help="A compose location (URL) whose server must answer.")
@click.option(
    "--amqp-url",
    help="The broker to try (default: the fedora-messaging configuration's, when "
    "$FEDORA_MESSAGING_CONF is set).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_fail_cleanly
def preflight(obj: _Context, compose_url: str | None, amqp_url: str | None, as_json: bool) -> None:
    """Check, creating nothing, that the configured account, regions and services can run
    fedimg: one row per check and region, with what to do; exit status 1 if anything blocks."""
    from fedimg.preflight import preflight_command

    sys.exit(
        preflight_command(obj.settings, compose_url=compose_url, amqp_url=amqp_url, as_json=as_json)
    )


@main.command("check-config")
@_config_after_command
@click.pass_obj
@_fail_cleanly
def check_config(obj: _Context) -> None:
    """Validate the configuration and print the effective settings as JSON."""
    import dataclasses

    click.echo(json.dumps(dataclasses.asdict(obj.settings), indent=2, default=list))


if __name__ == "__main__":  # pragma: no cover
    main()
