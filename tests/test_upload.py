"""`fedimg upload` end to end: a real process, a moto server over HTTP; its download path
in-process, against HTTP servers on loopback."""

from __future__ import annotations

import dataclasses
import http.server
import json
import lzma
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fedimg.aws.clients import Clients
from fedimg.config import Settings
from fedimg.errors import InputError
from fedimg.identity import ImageIdentity
from fedimg.source import BLOCK_SIZE, sha256_file
from fedimg.standins.samplecompose import serve_directory
from fedimg.standins.synthetic import write_sparse_image
from fedimg.upload import content_sha256, upload_image
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


@contextmanager
def redirecting_to(base: str) -> Iterator[str]:
    """A loopback server answering every request with a redirect to the same path under
    ``base``; yields its URL."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", base + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_url_without_sha256_is_hashed_and_uploaded_through_a_trusted_redirect(
    settings: Settings, image: tuple[Path, list[int]]
) -> None:
    """Both reads (the hash, then the upload) follow a redirect into compose.trusted_locations."""
    xz, nonzero = image
    with serve_directory(xz.parent) as mirror, redirecting_to(mirror) as entry:
        compose = dataclasses.replace(settings.compose, trusted_locations=(f"{mirror}/",))
        s = dataclasses.replace(settings, compose=compose)
        identity = ImageIdentity(xz.name.removesuffix(".raw.xz"), "x86_64")
        outcome = upload_image(f"{entry}/{xz.name}", identity, s, Clients(s.aws))
    assert outcome.blocks_sent == len(nonzero)
    (held,) = ec2(settings.aws.endpoint_url).describe_images(ImageIds=[outcome.ami])["Images"]
    tags = {t["Key"]: t["Value"] for t in held["Tags"]}
    assert tags["fedimg:sha256"] == sha256_file(xz)


def test_hashing_a_url_refuses_a_redirect_outside_the_trusted_locations(
    image: tuple[Path, list[int]],
) -> None:
    xz, _ = image
    with serve_directory(xz.parent) as away, redirecting_to(away) as entry:
        with pytest.raises(InputError, match="redirects outside"):
            content_sha256(f"{entry}/{xz.name}", trusted=(f"{entry}/",))
        assert content_sha256(f"{entry}/{xz.name}", trusted=(f"{away}/",)) == sha256_file(xz)
