"""`fedimg upload` end to end: a real process, a moto server over HTTP."""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedimg.source import BLOCK_SIZE, sha256_file
from fedimg.synthetic import write_sparse_image
from tests.helpers import ec2

JSON_KEYS = {"ami", "snapshot", "region", "blocks_sent", "blocks_skipped", "bytes_read", "seconds"}


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, list[int]]:
    raw = tmp_path / "Fedora-Cloud-Base-AmazonEC2-99-1.0.x86_64.raw"
    nonzero = write_sparse_image(raw, 24 * BLOCK_SIZE, 0.25)
    xz = raw.with_name(raw.name + ".xz")
    xz.write_bytes(lzma.compress(raw.read_bytes(), preset=0))
    return xz, nonzero


def fedimg(aws: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "fedimg.toml"
    cfg.write_text(f'[aws]\nendpoint_url = "{aws}"\nmax_attempts = 2\nwait_seconds = 30\n')
    env = os.environ | {"FEDIMG_CONFIG": str(cfg)}
    return subprocess.run(
        [sys.executable, "-m", "fedimg.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_upload_json_and_idempotent_rerun(
    aws: str, tmp_path: Path, image: tuple[Path, list[int]]
) -> None:
    xz, nonzero = image
    r = fedimg(aws, tmp_path, "upload", str(xz), "--sha256", sha256_file(xz), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= JSON_KEYS
    assert out["blocks_sent"] == len(nonzero)
    assert out["blocks_skipped"] == 24 - len(nonzero)
    assert out["bytes_read"] == xz.stat().st_size and out["region"] == "us-east-1"
    images = ec2(aws).describe_images(Owners=["self"])["Images"]
    assert [i["ImageId"] for i in images] == [out["ami"]]

    again = json.loads(
        fedimg(aws, tmp_path, "upload", str(xz), "--sha256", sha256_file(xz), "--json").stdout
    )
    assert (again["ami"], again["snapshot"]) == (out["ami"], out["snapshot"])
    assert again["blocks_sent"] == 0
    assert len(ec2(aws).describe_images(Owners=["self"])["Images"]) == 1


def test_upload_prints_ids_for_people(
    aws: str, tmp_path: Path, image: tuple[Path, list[int]]
) -> None:
    xz, _ = image
    r = fedimg(aws, tmp_path, "upload", str(xz), "--name", "my test image")
    assert r.returncode == 0, r.stderr
    assert "AMI ami-" in r.stdout and "(my test image)" in r.stdout and "snapshot snap-" in r.stdout


def test_upload_checksum_mismatch_is_one_line_and_leaves_nothing(
    aws: str, tmp_path: Path, image: tuple[Path, list[int]]
) -> None:
    xz, _ = image
    r = fedimg(aws, tmp_path, "upload", str(xz), "--sha256", "0" * 64)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("fedimg: error:")
    assert "SHA-256" in r.stderr
    assert ec2(aws).describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
    assert ec2(aws).describe_images(Owners=["self"])["Images"] == []


def test_upload_unknown_arch_asks_for_it(aws: str, tmp_path: Path) -> None:
    p = tmp_path / "mystery.raw"
    p.write_bytes(bytes(BLOCK_SIZE))
    r = fedimg(aws, tmp_path, "upload", str(p))
    assert r.returncode == 1 and "--arch" in r.stderr


def test_same_name_other_content_never_reuses_the_old_ami(
    aws: str, tmp_path: Path, image: tuple[Path, list[int]]
) -> None:
    """Without --sha256 the file is hashed first, so the identity is its content, not its name."""
    xz, _ = image
    first = json.loads(fedimg(aws, tmp_path, "upload", str(xz), "--json").stdout)
    raw = bytearray(lzma.decompress(xz.read_bytes()))
    raw[:16] = b"other content!!!"
    xz.write_bytes(lzma.compress(bytes(raw), preset=0))

    same_name = fedimg(aws, tmp_path, "upload", str(xz), "--json")
    assert same_name.returncode == 1
    assert "taken by " + first["ami"] in same_name.stderr and "other content" in same_name.stderr
    renamed = fedimg(aws, tmp_path, "upload", str(xz), "--name", "other image", "--json")
    assert renamed.returncode == 0, renamed.stderr
    assert json.loads(renamed.stdout)["ami"] != first["ami"]
    assert len(ec2(aws).describe_images(Owners=["self"])["Images"]) == 2
