"""The demo's wiring for both arches, without its boots: which local boots it runs, which guest
stands in for which instance, and the firmware that guest boots with. The demo's EC2 boot test
of both arches runs for real in tests/aws/test_boottest.py (one shared aarch64 guest)."""

from __future__ import annotations

import dataclasses
import lzma
from pathlib import Path

import pytest

from fedimg.boot.qemu import Guest
from fedimg.boot.ssh import throwaway_key
from fedimg.compose import discover
from fedimg.config import Settings
from fedimg.demo import (
    DEMO_ARCHES,
    demo_settings,
    guest_firmware,
    local_boot_plan,
    to_guest_of_arch,
)
from fedimg.errors import TransientError
from fedimg.samplecompose import build_sample_compose

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
