"""The demo's wiring for both arches, without its boots: which local boots it runs, which guest
stands in for which instance, and the firmware that guest boots with; its two composes (GA, then a
nightly of the same disks) and the lifecycle it prints after them, on the AWS stand-in with the
boot test off. The demo's EC2 boot test of both arches runs for real in tests/aws/test_boottest.py
(one shared aarch64 guest)."""

from __future__ import annotations

import dataclasses
import io
import json
import lzma
from pathlib import Path

import pytest
from rich.console import Console

from fedimg.aws.clients import Clients
from fedimg.boot.qemu import Guest
from fedimg.boot.ssh import throwaway_key
from fedimg.compose import discover
from fedimg.config import RetentionSettings, Settings
from fedimg.consumer import Consumer
from fedimg.demo import (
    DEMO_ARCHES,
    build_demo_composes,
    demo_settings,
    guest_firmware,
    kind_of,
    local_boot_plan,
    publish_composes,
    retention_summary,
    show_lifecycle,
    to_guest_of_arch,
)
from fedimg.errors import TransientError
from fedimg.pipeline import Pipeline, identity_of
from fedimg.standins.samplecompose import (
    SAMPLE_COMPOSE_ID,
    SAMPLE_NIGHTLY_ID,
    build_sample_compose,
    serve_directory,
)
from tests.helpers import synthetic_xz, trusting

KEY, _ = throwaway_key()


def not_booted_guest(port: int) -> Guest:
    """A guest as running_guest describes one; nothing is booted, no SSH happens here."""
    return Guest("127.0.0.1", port, "root", KEY, Path("serial.log"), 0)


def test_local_boots_cover_every_firmware_of_each_arch(tmp_path: Path) -> None:
    disks = {}
    for arch in DEMO_ARCHES:
        disks[arch] = tmp_path / f"{arch}.raw.xz"
        disks[arch].write_bytes(lzma.compress(arch.encode(), format=lzma.FORMAT_XZ))
    location = build_sample_compose(tmp_path / "tree", disks)
    _, images = discover(str(location), Settings().compose)
    raws = {arch: tmp_path / f"{arch}.raw" for arch in DEMO_ARCHES}

    plan = local_boot_plan(images, raws)

    assert [(i.arch, raw.name, firmware) for i, raw, firmware in plan] == [
        ("x86_64", "x86_64.raw", "bios"),
        ("x86_64", "x86_64.raw", "uefi"),
        ("aarch64", "aarch64.raw", "uefi"),
    ]


def test_each_instance_is_answered_by_the_guest_of_its_architecture() -> None:
    resolve = to_guest_of_arch(
        {"x86_64": not_booted_guest(2201), "aarch64": not_booted_guest(2202)}
    )

    assert resolve({"Architecture": "x86_64"}, KEY).port == 2201
    assert resolve({"Architecture": "arm64"}, KEY).port == 2202
    with pytest.raises(TransientError, match="no stand-in guest for a i386 instance"):
        resolve({"Architecture": "i386"}, KEY)


def test_guests_boot_as_the_amis_boot_mode_makes_the_instance_boot() -> None:
    base = Settings()
    legacy = {"x86_64": "legacy-bios", "aarch64": "uefi"}
    bios = dataclasses.replace(base, image=dataclasses.replace(base.image, boot_mode=legacy))

    assert [guest_firmware(base, arch) for arch in DEMO_ARCHES] == ["uefi", "uefi"]
    assert guest_firmware(bios, "x86_64") == "bios"


def test_demo_settings_publish_both_arches_whatever_the_base_configuration() -> None:
    base = Settings()
    x86_only = dataclasses.replace(
        base, compose=dataclasses.replace(base.compose, arches=("x86_64",))
    )

    s = demo_settings(x86_only, "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3")

    assert s.compose.arches == ("x86_64", "aarch64")
    assert set(s.test.instance_types) == {"x86_64", "aarch64"}


def test_the_nightly_holds_the_same_disks_under_its_own_names_and_kind(tmp_path: Path) -> None:
    xz = synthetic_xz(tmp_path, 2, 0.5)
    locations = build_demo_composes(tmp_path / "tree", dict.fromkeys(DEMO_ARCHES, xz))

    identities = {}
    for compose_id, location in locations.items():
        info, images = discover(str(location), Settings().compose)
        identities[compose_id] = [identity_of(image, info) for image in images]
    ga, nightly = identities[SAMPLE_COMPOSE_ID], identities[SAMPLE_NIGHTLY_ID]

    assert list(locations) == [SAMPLE_COMPOSE_ID, SAMPLE_NIGHTLY_ID]  # the order published
    assert [kind_of(c) for c in locations] == ["ga", "nightly"]
    assert [i.compose_kind for i in ga + nightly] == ["ga", "ga", "nightly", "nightly"]
    assert [i.image_name for i in nightly] == [
        f"Fedora-Cloud-Base-AmazonEC2-Rawhide-20261128.n.0.{arch}" for arch in DEMO_ARCHES
    ]
    # Same bytes, another compose: the image keys differ, so the nightly gets its own AMIs.
    assert {i.sha256 for i in ga} == {i.sha256 for i in nightly}
    assert not {i.key for i in ga} & {i.key for i in nightly}


def test_retention_summary_states_the_configured_policy() -> None:
    summary = retention_summary(RetentionSettings(nightly_days=7, keep_newest=2, protect_ga=False))

    assert "GA kept for ever;" in summary
    assert "nightlies 7 days" in summary and "newest 2 composes" in summary
    assert "protected" in retention_summary(RetentionSettings())


def test_the_lifecycle_shows_what_prune_keeps_and_the_catalog_ga_first(
    settings: Settings, tmp_path: Path
) -> None:
    """Both composes published as the demo does (boot test off), then its lifecycle output."""
    tree = tmp_path / "tree"
    locations = build_demo_composes(
        tree, dict.fromkeys(DEMO_ARCHES, synthetic_xz(tmp_path, 4, 0.5))
    )
    out = io.StringIO()
    console = Console(file=out, width=250)
    with serve_directory(tree) as http:
        s = trusting(settings, http)
        s = dataclasses.replace(
            s,
            test=dataclasses.replace(s.test, enabled=False),
            messaging=dataclasses.replace(s.messaging, publish=False),
        )
        clients = Clients(s.aws)
        urls = {c: f"{http}/{loc.relative_to(tree).as_posix()}" for c, loc in locations.items()}
        outcomes = publish_composes(console, Consumer(s, Pipeline(s, clients)), clients, urls)
    files = show_lifecycle(console, s, clients, tmp_path / "catalog")

    assert [(o.compose_id, o.ok) for o in outcomes] == [
        (SAMPLE_COMPOSE_ID, True),
        (SAMPLE_NIGHTLY_ID, True),
    ]
    amis = {
        compose.compose_id: {ami for image in compose.images for ami in image.regions.values()}
        for compose in outcomes
    }
    per_compose = len(DEMO_ARCHES) * len(s.aws.regions)
    assert len(amis[SAMPLE_COMPOSE_ID]) == len(amis[SAMPLE_NIGHTLY_ID]) == per_compose
    printed = out.getvalue()
    prune_report = printed.split("fedimg prune (report only)")[1].split(" catalog ")[0]
    prune_rows = {line.split()[3]: line for line in prune_report.splitlines() if "│ ami-" in line}
    assert set(prune_rows) == amis[SAMPLE_COMPOSE_ID] | amis[SAMPLE_NIGHTLY_ID]
    for ami in amis[SAMPLE_COMPOSE_ID]:
        assert "│ ga " in prune_rows[ami] and "│ keep   │ GA: kept for ever" in prune_rows[ami]
    for ami in amis[SAMPLE_NIGHTLY_ID]:
        row = prune_rows[ami]
        assert "│ nightly " in row and '│ keep   │ an SSM "latest" parameter names it' in row
    assert f"0 of {2 * per_compose} AMIs to act on (report only" in prune_report
    # The catalog: GA first, written where the demo says.
    images = json.loads(files.json_path.read_text())["images"]
    assert [i["kind"] for i in images] == ["ga"] * per_compose + ["nightly"] * per_compose
    assert f"{2 * per_compose} AMIs: {files.html_path} and {files.json_path}" in printed
