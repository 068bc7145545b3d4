"""The sample compose: productmd reads it back, discovery picks only its EC2 image."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from pathlib import Path

import productmd.compose
import pytest
import requests

from fedimg.compose import discover
from fedimg.config import ComposeSettings
from fedimg.standins.samplecompose import (
    SAMPLE_COMPOSE_ID,
    SAMPLE_NIGHTLY_ID,
    build_sample_compose,
    compose_message,
    parse_compose_id,
    serve_directory,
)

EC2_X86 = "Cloud/x86_64/images/Fedora-Cloud-Base-AmazonEC2-99-20261127.0.x86_64.raw.xz"


@pytest.fixture(scope="module")
def image_xz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake disk: 4 MiB, mostly zeros like a real one, xz-compressed."""
    raw = os.urandom(64 * 1024) + bytes(4 * 1024 * 1024 - 64 * 1024)
    path = tmp_path_factory.mktemp("image") / "disk.raw.xz"
    path.write_bytes(lzma.compress(raw, format=lzma.FORMAT_XZ))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tree_layout(tmp_path: Path, image_xz: Path) -> None:
    location = build_sample_compose(tmp_path, image_xz)

    assert location == tmp_path / SAMPLE_COMPOSE_ID / "compose"
    assert (location / EC2_X86).read_bytes() == image_xz.read_bytes()
    assert (location / "metadata/images.json").is_file()
    assert (location / "metadata/composeinfo.json").is_file()


def test_productmd_reads_the_sample_back(tmp_path: Path, image_xz: Path) -> None:
    location = build_sample_compose(tmp_path, image_xz, arches=("x86_64", "aarch64"))

    pmd = productmd.compose.Compose(str(location))

    assert pmd.info.compose.id == SAMPLE_COMPOSE_ID
    assert pmd.info.release.version == "99"
    assert sorted(pmd.info.variants.variants) == ["Cloud", "Server"]
    assert pmd.images.compose.id == SAMPLE_COMPOSE_ID
    listed = {
        (variant, image.subvariant, image.type, image.arch)
        for variant, arches in pmd.images.images.items()
        for images in arches.values()
        for image in images
    }
    assert listed == {
        (variant, subvariant, type_, arch)
        for arch in ("x86_64", "aarch64")
        for variant, subvariant, type_ in [
            ("Cloud", "Cloud_Base", "raw-xz"),
            ("Cloud", "Cloud_Base", "qcow2"),
            ("Server", "Server", "raw-xz"),
        ]
    }


def test_discover_selects_only_the_ec2_image(tmp_path: Path, image_xz: Path) -> None:
    location = build_sample_compose(tmp_path, image_xz)

    info, images = discover(str(location), ComposeSettings())

    assert info.compose_id == SAMPLE_COMPOSE_ID
    assert [(i.path, i.arch, i.subvariant, i.type) for i in images] == [
        (EC2_X86, "x86_64", "Cloud_Base", "raw-xz")
    ]
    assert images[0].image_name == "Fedora-Cloud-Base-AmazonEC2-99-20261127.0.x86_64"


def test_discover_selects_one_ec2_image_per_arch(tmp_path: Path, image_xz: Path) -> None:
    location = build_sample_compose(tmp_path, image_xz, arches=("x86_64", "aarch64"))

    _, images = discover(str(location), ComposeSettings())

    assert [i.arch for i in images] == ["x86_64", "aarch64"]
    assert all("AmazonEC2" in i.path for i in images)


def test_each_arch_carries_its_own_image(tmp_path: Path, image_xz: Path) -> None:
    """The demo's compose: each arch's own sample image, listed as Fedora lists its EC2 disks."""
    other = tmp_path / "aarch64.raw.xz"
    other.write_bytes(lzma.compress(b"an aarch64 disk\n", format=lzma.FORMAT_XZ))
    location = build_sample_compose(tmp_path / "tree", {"x86_64": image_xz, "aarch64": other})

    _, images = discover(str(location), ComposeSettings())

    by_arch = {i.arch: i for i in images}
    assert sorted(by_arch) == ["aarch64", "x86_64"]
    arm = by_arch["aarch64"]
    assert (
        arm.path == "Cloud/aarch64/images/Fedora-Cloud-Base-AmazonEC2-99-20261127.0.aarch64.raw.xz"
    )
    assert (arm.metadata["type"], arm.metadata["format"]) == ("raw-xz", "raw.xz")
    assert (location / arm.path).read_bytes() == other.read_bytes()
    assert arm.sha256 == sha256(other) != by_arch["x86_64"].sha256 == sha256(image_xz)
    with pytest.raises(ValueError, match="do not give both"):
        build_sample_compose(tmp_path / "tree", {"aarch64": other}, arches=("x86_64",))


def test_metadata_checksums_and_sizes_match_the_files(tmp_path: Path, image_xz: Path) -> None:
    location = build_sample_compose(tmp_path, image_xz)
    data = json.loads((location / "metadata/images.json").read_text())

    entries = [
        e for arches in data["payload"]["images"].values() for es in arches.values() for e in es
    ]
    assert len(entries) == 3
    for entry in entries:
        file = location / entry["path"]
        assert entry["checksums"]["sha256"] == sha256(file)
        assert entry["size"] == file.stat().st_size
    assert sha256(location / EC2_X86) == sha256(image_xz)


def test_rebuilding_replaces_the_tree(tmp_path: Path, image_xz: Path) -> None:
    first = build_sample_compose(tmp_path, image_xz, arches=("x86_64", "aarch64"))
    second = build_sample_compose(tmp_path, image_xz, arches=("x86_64",))

    assert first == second
    assert not (second / "Cloud/aarch64").exists()
    _, images = discover(str(second), ComposeSettings())
    assert [i.arch for i in images] == ["x86_64"]


def test_other_compose_id_names_the_images(tmp_path: Path, image_xz: Path) -> None:
    location = build_sample_compose(tmp_path, image_xz, compose_id="Fedora-Cloud-43-20251101.2")

    info, images = discover(str(location), ComposeSettings())

    assert (info.compose_id, info.release_version, info.respin) == (
        "Fedora-Cloud-43-20251101.2",
        "43",
        2,
    )
    assert images[0].image_name == "Fedora-Cloud-Base-AmazonEC2-43-20251101.2.x86_64"


def test_a_nightly_compose_is_unlabelled_and_keeps_its_type_in_image_names(
    tmp_path: Path, image_xz: Path
) -> None:
    location = build_sample_compose(tmp_path, image_xz, compose_id=SAMPLE_NIGHTLY_ID)

    pmd = productmd.compose.Compose(str(location))
    info, images = discover(str(location), ComposeSettings())
    body = compose_message(SAMPLE_NIGHTLY_ID, "http://127.0.0.1:1/x/compose")

    assert (pmd.info.compose.type, pmd.info.compose.label) == ("nightly", None)
    assert (info.compose_id, info.release_version, info.label) == (SAMPLE_NIGHTLY_ID, "Rawhide", "")
    assert images[0].image_name == "Fedora-Cloud-Base-AmazonEC2-Rawhide-20261128.n.0.x86_64"
    assert images[0].path.endswith(
        "/Fedora-Cloud-Base-AmazonEC2-Rawhide-20261128.n.0.x86_64.raw.xz"
    )
    assert (body["compose_type"], body["compose_label"], body["release_version"]) == (
        "nightly",
        None,
        "Rawhide",
    )


def test_serve_directory_serves_the_tree_until_closed(tmp_path: Path, image_xz: Path) -> None:
    build_sample_compose(tmp_path, image_xz)

    with serve_directory(tmp_path) as base:
        _, images = discover(f"{base}/{SAMPLE_COMPOSE_ID}/compose", ComposeSettings())
        body = requests.get(images[0].url, timeout=10).content

    assert base.startswith("http://127.0.0.1:")
    assert hashlib.sha256(body).hexdigest() == images[0].sha256
    with pytest.raises(requests.ConnectionError):
        requests.get(base, timeout=2)


def test_compose_message_has_pungi_shape() -> None:
    location = "http://127.0.0.1:1/Fedora-Cloud-99-20261127.0/compose"

    body = compose_message(SAMPLE_COMPOSE_ID, location)
    incomplete = compose_message(SAMPLE_COMPOSE_ID, location, status="FINISHED_INCOMPLETE")

    assert body == {
        "status": "FINISHED",
        "compose_id": SAMPLE_COMPOSE_ID,
        "compose_date": "20261127",
        "compose_type": "production",
        "compose_respin": 0,
        "compose_label": "RC-20261127.0",
        "compose_path": "http://127.0.0.1:1/Fedora-Cloud-99-20261127.0",
        "location": location,
        "release_short": "Fedora-Cloud",
        "release_name": "Fedora-Cloud",
        "release_version": "99",
        "release_type": "ga",
        "release_is_layered": False,
    }
    assert incomplete["status"] == "FINISHED_INCOMPLETE"


def test_parse_compose_id_rejects_other_shapes() -> None:
    assert parse_compose_id("Fedora-Rawhide-20261127.n.1").compose_type == "nightly"
    with pytest.raises(ValueError, match="not like"):
        parse_compose_id("Fedora-Cloud-99")
