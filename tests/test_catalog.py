"""The catalog and ``fedimg list``, read from AMIs registered on the strict stand-in."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fedora_messaging.message import Message

from fedimg.aws.clients import Clients
from fedimg.catalog import (
    CatalogEntry,
    entry_of,
    launch_url,
    ordered,
    read_catalog,
    refresh_after_publish,
    write_atomically,
    write_catalog,
)
from fedimg.catalog_html import render_page
from fedimg.cli import main
from fedimg.config import Settings
from fedimg.consumer import Consumer
from fedimg.errors import InputError
from fedimg.identity import TAG_MANAGED
from fedimg.pipeline import ComposeOutcome, ImageOutcome, Pipeline
from fedimg.standins.samplecompose import SAMPLE_COMPOSE_ID, compose_message
from tests.catalog_world import (
    PUBLISHED,
    REGIONS,
    CatalogWorld,
    make_world,
    one_block_snapshot,
    register,
)
from tests.helpers import ec2, served_compose, trusting

NOW = datetime(2025, 11, 2, 12, 0, tzinfo=UTC)
TOPIC = "org.fedoraproject.prod.pungi.compose.status.change"


@pytest.fixture(scope="module")
def world(moto_url: str) -> CatalogWorld:
    return make_world(moto_url)


@pytest.fixture(scope="module")
def entries(world: CatalogWorld) -> list[CatalogEntry]:
    return read_catalog(world.settings, Clients(world.settings.aws))


def described(url: str, region: str, ami: str) -> Any:
    return ec2(url, region).describe_images(ImageIds=[ami])["Images"][0]


def test_lists_exactly_fedimgs_public_amis_of_the_configured_regions(
    world: CatalogWorld, entries: list[CatalogEntry]
) -> None:
    assert {e.ami: e.region for e in entries} == world.listed
    assert len(entries) == len(world.listed)
    assert not {e.ami for e in entries} & set(world.left_out)


def test_entries_hold_what_aws_holds(
    world: CatalogWorld, entries: list[CatalogEntry], moto_url: str
) -> None:
    for e in entries:
        image = described(moto_url, e.region, e.ami)
        assert (e.name, e.architecture, e.date, e.boot_mode, e.deprecation) == (
            image["Name"],
            image["Architecture"],
            image["CreationDate"],
            image["BootMode"],
            image["DeprecationTime"],
        )
        assert e.deprecation  # a public AMI is deprecated within two years


def test_release_subvariant_and_kind_from_tags_or_for_older_amis_from_compose_and_name(
    entries: list[CatalogEntry],
) -> None:
    seen = {(e.compose_id, e.release, e.subvariant, e.kind) for e in entries}
    assert seen == {
        ("Fedora-Cloud-42-20250410.0", "42", "Cloud_Base", "ga"),
        # Made before fedimg recorded kind, release and subvariant: the compose id and the name.
        ("Fedora-Cloud-41-20241027.0", "41", "", "ga"),
        ("Fedora-Cloud-43-20250916.0", "43", "Cloud_Base", "prerelease"),
        ("Fedora-Cloud-Rawhide-20251101.n.0", "Rawhide", "Cloud_Base", "nightly"),
        ("", "", "", "unknown"),
    }


def test_newest_ga_first_then_older_ga_prereleases_nightlies_unknown(
    world: CatalogWorld, entries: list[CatalogEntry]
) -> None:
    composes = list(dict.fromkeys(e.compose_id for e in entries))
    assert composes == [p.compose_id for p in PUBLISHED] + [""]
    first = entries[0]
    assert (first.kind, first.release, first.architecture, first.region) == (
        "ga",
        "42",
        "arm64",
        "eu-west-1",
    )
    assert entries[-1].ami == world.unknown


def test_within_a_compose_rows_go_by_subvariant_architecture_region_not_creation_time(
    entries: list[CatalogEntry],
) -> None:
    ga = [e for e in entries if e.compose_id == PUBLISHED[0].compose_id]
    shuffled = [dataclasses.replace(e, date=f"2025-01-{n + 10}") for n, e in enumerate(ga)]
    expected = sorted(ga, key=lambda e: (e.subvariant, e.architecture, e.region))
    assert [e.ami for e in ordered(reversed(shuffled))] == [e.ami for e in expected]
    assert [e.ami for e in ga] == [e.ami for e in expected]


def test_launch_link_opens_the_consoles_launch_wizard_for_that_region_and_ami(
    entries: list[CatalogEntry],
) -> None:
    for e in entries:
        assert e.launch_url == (
            f"https://console.aws.amazon.com/ec2/home?region={e.region}#LaunchInstances:ami={e.ami}"
        )
    assert launch_url("cn-north-1", "ami-0123456789abcdef0").startswith(
        "https://console.amazonaws.cn/ec2/home?region=cn-north-1#"
    )


@pytest.mark.parametrize(
    ("region", "ami"),
    [("us-east-1", "ami-1234'><x"), ("us-east-1\n", "ami-01234567"), ("x", "ami-01234567")],
)
def test_launch_link_refuses_what_is_not_an_ami_id_and_region(region: str, ami: str) -> None:
    with pytest.raises(InputError):
        launch_url(region, ami)


def test_catalog_json_holds_every_entry(tmp_path: Path, entries: list[CatalogEntry]) -> None:
    files = write_catalog(entries, tmp_path / "out", now=NOW)
    document = json.loads(files.json_path.read_text())
    assert document["generated"] == "2025-11-02T12:00:00+00:00"
    assert document["images"] == [e.to_json() for e in entries]
    assert set(document["images"][0]) == {
        "release",
        "subvariant",
        "architecture",
        "region",
        "ami",
        "name",
        "date",
        "boot_mode",
        "deprecation",
        "kind",
        "compose_id",
        "launch_url",
    }


def test_files_are_readable_by_a_web_server_and_no_temporary_file_remains(
    tmp_path: Path, entries: list[CatalogEntry]
) -> None:
    files = write_catalog(entries, tmp_path, now=NOW)
    for path in (files.json_path, files.html_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.json", "index.html"]


def test_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "index.html"
    page.write_text("the old page")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(InputError, match="No space left on device"):
        write_atomically(page, "the new page " * 10000)
    assert page.read_text() == "the old page"
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_the_page_shows_every_ami_with_its_launch_link_and_filters(
    entries: list[CatalogEntry],
) -> None:
    page = render_page(entries, NOW)
    for e in entries:
        assert f'<code class="ami">{e.ami}</code>' in page
        assert f'href="{e.launch_url}"' in page
    for region in REGIONS:
        assert f'<option value="{region}">' in page
    assert "<link" not in page and "src=" not in page  # no external assets


@pytest.fixture
def hostile_entry(world: CatalogWorld, moto_url: str) -> Iterator[CatalogEntry]:
    """A fedimg-tagged AMI whose other tags carry markup (tags are anyone's who may tag)."""
    region = "ap-southeast-2"  # outside the world's regions: the other tests do not see it
    tags = {
        TAG_MANAGED: "true",
        "fedimg:release": '42"><script>alert(1)</script>',
        "fedimg:subvariant": "<img src=x onerror=alert(2)>",
        "fedimg:compose-kind": "ga' onmouseover='alert(3)",
    }
    snapshot = one_block_snapshot(moto_url, region)
    ami = register(moto_url, region, snapshot, "hostile-tags", tags)
    yield entry_of(described(moto_url, region, ami), region)


def test_tag_values_are_escaped_in_the_page(hostile_entry: CatalogEntry) -> None:
    page = render_page([hostile_entry], NOW)
    body = page.split("<tbody>")[1].split("</tbody>")[0]
    assert "<script" not in body and "<img" not in body
    assert "&lt;img src=x onerror=alert(2)&gt;" in body
    assert "42&quot;&gt;&lt;script&gt;" in body
    # An unknown kind tag is not trusted either: the AMI is classified, the class is fixed.
    assert hostile_entry.kind in {"ga", "prerelease", "nightly", "unknown"}
    assert "onmouseover" not in body


def test_the_page_allows_only_its_own_script_and_style() -> None:
    page = render_page([], NOW)
    assert "default-src &#x27;none&#x27;; style-src &#x27;sha256-" in page
    assert "No images are published yet." in page


def test_refresh_after_a_publish_writes_the_catalog_from_aws(
    tmp_path: Path, world: CatalogWorld
) -> None:
    settings = world.settings
    published = ComposeOutcome("c", "42", [ImageOutcome("i", "x86_64", "Cloud_Base", "published")])
    failed = ComposeOutcome("c", "42", [ImageOutcome("i", "x86_64", "Cloud_Base", "failed")])
    clients = Clients(settings.aws)

    refresh_after_publish(settings, clients, failed, tmp_path)  # nothing new is public
    assert not (tmp_path / "catalog.json").exists()
    refresh_after_publish(settings, clients, published, tmp_path)
    document = json.loads((tmp_path / "catalog.json").read_text())
    assert {i["ami"] for i in document["images"]} == set(world.listed)


def test_a_catalog_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, world: CatalogWorld, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    published = ComposeOutcome("c", "42", [ImageOutcome("i", "x86_64", "Cloud_Base", "published")])
    clients = Clients(world.settings.aws)
    assert refresh_after_publish(world.settings, clients, published, not_a_directory) is None
    assert "compose c: the catalog was not refreshed: catalog: cannot create" in caplog.text


def run_cli(world: CatalogWorld, tmp_path: Path, *args: str) -> Any:
    config = tmp_path / "fedimg.toml"
    aws = world.settings.aws
    config.write_text(
        f'[aws]\nendpoint_url = "{aws.endpoint_url}"\nmax_attempts = 2\n'
        f"regions = {json.dumps(list(aws.regions))}\n"
    )
    return CliRunner().invoke(main, ["--config", str(config), *args])


def test_list_json_has_the_catalogs_entries_filtered(
    tmp_path: Path, world: CatalogWorld, entries: list[CatalogEntry]
) -> None:
    result = run_cli(world, tmp_path, "list", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [e.to_json() for e in entries]

    result = run_cli(world, tmp_path, "list", "--release", "42", "--region", "eu-west-1", "--json")
    listed = json.loads(result.output)
    assert {(i["release"], i["region"]) for i in listed} == {("42", "eu-west-1")}
    assert len(listed) == 2  # x86_64 and arm64


def test_list_table_names_every_ami(tmp_path: Path, world: CatalogWorld) -> None:
    result = run_cli(world, tmp_path, "list", "--region", "us-west-2")
    assert result.exit_code == 0, result.output
    for ami, region in world.listed.items():
        assert (ami in result.output) == (region == "us-west-2")


def test_list_of_an_unconfigured_region_is_a_one_line_error(
    tmp_path: Path, world: CatalogWorld
) -> None:
    result = run_cli(world, tmp_path, "list", "--region", "ap-south-1")
    assert result.exit_code == 1
    assert result.output.startswith("fedimg: error: ap-south-1: not a configured region")


def test_catalog_command_writes_both_files_and_says_where(
    tmp_path: Path, world: CatalogWorld
) -> None:
    result = run_cli(world, tmp_path, "catalog", "--output", str(tmp_path / "site"))
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "site" / "index.html") in result.output
    document = json.loads((tmp_path / "site" / "catalog.json").read_text())
    assert len(document["images"]) == len(world.listed)


def test_when_aws_cannot_be_read_the_old_catalog_stays(
    tmp_path: Path, world: CatalogWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("the old page")
    monkeypatch.setenv("FEDIMG_STANDIN_DENY", "ec2:DescribeImages")
    result = run_cli(world, tmp_path, "catalog", "--output", str(site))
    assert result.exit_code == 1
    assert result.output.startswith("fedimg: error: catalog: reading ")
    assert "UnauthorizedOperation" in result.output and result.output.count("\n") == 1
    assert [p.name for p in site.iterdir()] == ["index.html"]
    assert (site / "index.html").read_text() == "the old page"


# Last in this module: it starts from an empty stand-in (the `aws` fixture resets it), which the
# module's world does not survive.
def test_the_consumer_rewrites_the_catalog_after_publishing_a_compose(
    settings: Settings, aws: str, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    with served_compose(tmp_path, 12) as (location, _):
        s = trusting(settings, location)
        s = dataclasses.replace(
            s,
            test=dataclasses.replace(s.test, enabled=False),
            messaging=dataclasses.replace(s.messaging, publish=False),
            catalog=dataclasses.replace(s.catalog, output_dir=str(site)),
        )
        consumer = Consumer(s, Pipeline(s, Clients(s.aws)))
        consumer(Message(topic=TOPIC, body=compose_message(SAMPLE_COMPOSE_ID, location)))
    (outcome,) = consumer.outcomes
    assert outcome.ok
    images = json.loads((site / "catalog.json").read_text())["images"]
    assert {(i["ami"], i["region"]) for i in images} == {
        (ami, region) for image in outcome.images for region, ami in image.regions.items()
    }
    assert {(i["release"], i["subvariant"], i["kind"]) for i in images} == {
        ("99", "Cloud_Base", "ga")
    }
    assert (site / "index.html").is_file()
