"""The embedded default: fedimg's main job with no AWS account.

A moto server on a free loopback port stands in for AWS; the project's own sample image (built
and cached in ./build) stands in for a Fedora cloud image.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedimg import config as config_mod
from fedimg.aws.clients import Clients
from fedimg.events import fan_out, log_sink
from fedimg.identity import ImageIdentity, arch_from_name
from fedimg.source import image_name_of, sha256_file
from fedimg.standins.moto import moto_in_process
from fedimg.upload import upload_image

BUILD_DIR = Path("build")


def run_demo(config_path: str | None = None, build_dir: Path = BUILD_DIR) -> None:
    from fedimg.boot.sample import sample_image_xz

    console = Console()
    console.print("[bold]fedimg demo[/]: building (or reusing) the sample image…")
    image = sample_image_xz(build_dir)
    settings = config_mod.load(config_path)
    with moto_in_process() as url:
        console.print(f"local AWS stand-in (moto) at {url}")
        settings = dataclasses.replace(
            settings, aws=dataclasses.replace(settings.aws, endpoint_url=url)
        )
        clients = Clients(settings.aws, pool_size=settings.aws.upload_workers + 4)
        name = image_name_of(str(image))
        identity = ImageIdentity(name, arch_from_name(name), sha256_file(image), url=str(image))
        outcome = upload_image(str(image), identity, settings, clients, sink=fan_out([log_sink]))
        table = Table(title="uploaded and registered")
        for key in ("ami", "snapshot", "region", "name", "blocks_sent", "blocks_skipped"):
            table.add_row(key, str(getattr(outcome, key)))
        console.print(table)
