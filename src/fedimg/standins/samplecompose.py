"""A sample compose on disk, served over HTTP: what the demo and the tests feed to discovery.

The tree looks like a Fedora Cloud compose: per arch, the given image as its EC2 disk
(``Cloud/<arch>/images/Fedora-Cloud-Base-AmazonEC2-<version>.<arch>.raw.xz``, productmd arch
``x86_64`` or ``aarch64``), plus decoys (a Server disk, a Cloud qcow2) that discovery must skip.
The metadata is written with productmd's own writers, so it is what pungi would write.
"""

from __future__ import annotations

import hashlib
import http.server
import lzma
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import productmd.composeinfo
import productmd.images

SAMPLE_COMPOSE_ID = "Fedora-Cloud-99-20261127.0"
# A later compose of the same disks: a Rawhide nightly (no label), as the demo publishes second.
SAMPLE_NIGHTLY_ID = "Fedora-Cloud-Rawhide-20261128.n.0"
RELEASE_NAME = "Fedora-Cloud"
# Release short name, version, date, optional type suffix (.n, .t, .ci, .d), respin.
_COMPOSE_ID_RE = re.compile(
    r"^(?P<short>.+)-(?P<version>[^-]+)-(?P<date>\d{8})(?P<suffix>\.(n|t|ci|d))?\.(?P<respin>\d+)$"
)
_COMPOSE_TYPES = {"": "production", ".n": "nightly", ".t": "test", ".ci": "ci", ".d": "development"}


@dataclass(frozen=True)
class ComposeId:
    compose_id: str
    release_short: str
    release_version: str
    date: str
    compose_type: str
    respin: int

    @property
    def label(self) -> str:
        """productmd's label: production composes are labelled as Cloud SIG composes are
        (``RC-<date>.<respin>``, a GA milestone); other types have none ("")."""
        return f"RC-{self.date}.{self.respin}" if self.compose_type == "production" else ""

    @property
    def image_version(self) -> str:
        """The version part of image file names, as pungi makes it: ``99-20261127.0``,
        ``Rawhide-20261128.n.0`` (a nightly keeps its ``.n``)."""
        return self.compose_id.removeprefix(f"{self.release_short}-")


def parse_compose_id(compose_id: str) -> ComposeId:
    match = _COMPOSE_ID_RE.match(compose_id)
    if not match:
        raise ValueError(f"compose id {compose_id!r} is not like {SAMPLE_COMPOSE_ID}")
    return ComposeId(
        compose_id=compose_id,
        release_short=match["short"],
        release_version=match["version"],
        date=match["date"],
        compose_type=_COMPOSE_TYPES[match["suffix"] or ""],
        respin=int(match["respin"]),
    )


@dataclass(frozen=True)
class _Disk:
    variant: str
    subvariant: str
    type: str
    format: str
    path: str  # relative to the compose dir
    # The file to link, or the bytes to write (decoys).
    source: Path | bytes


# Tiny decoys: discovery must skip them (another subvariant; the right subvariant, another type).
_SERVER_DISK = lzma.compress(b"sample server disk\n", format=lzma.FORMAT_XZ)
_QCOW2 = b"QFI\xfb" + bytes(508)


def build_sample_compose(
    root: Path,
    image_xz: Path | Mapping[str, Path],
    compose_id: str = SAMPLE_COMPOSE_ID,
    arches: tuple[str, ...] | None = None,
) -> Path:
    """Writes ``root/<compose_id>/compose`` holding each arch's EC2 image.

    ``image_xz`` is one file used for every arch of ``arches`` (default x86_64 alone), or a
    mapping arch → file, whose keys are then the arches (the demo: each arch's own sample image).
    Returns the compose dir: the ``location`` of the compose message. Re-running replaces it.
    """
    if isinstance(image_xz, Mapping):
        if arches is not None:
            raise ValueError("arches come from the image mapping; do not give both")
        per_arch = dict(image_xz)
    else:
        per_arch = {arch: image_xz for arch in arches or ("x86_64",)}
    arches = tuple(per_arch)
    cid = parse_compose_id(compose_id)
    compose_dir = root / compose_id / "compose"
    if compose_dir.exists():
        shutil.rmtree(compose_dir)
    images = productmd.images.Images()
    _set_compose(images.compose, cid)
    digests: dict[Path, str] = {}
    for arch in arches:
        for disk in _disks(cid, arch, per_arch[arch]):
            target = compose_dir / disk.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(disk.source, bytes):
                target.write_bytes(disk.source)
                digest = hashlib.sha256(disk.source).hexdigest()
            else:
                _link_or_copy(disk.source, target)
                if disk.source not in digests:
                    digests[disk.source] = _sha256(disk.source)
                digest = digests[disk.source]
            images.add(disk.variant, arch, _image(images, disk, arch, target, digest))
    metadata = compose_dir / "metadata"
    metadata.mkdir()
    images.dump(str(metadata / "images.json"))
    _composeinfo(cid, arches).dump(str(metadata / "composeinfo.json"))
    return compose_dir


def _disks(cid: ComposeId, arch: str, image_xz: Path) -> list[_Disk]:
    v = cid.image_version
    cloud, server = f"Cloud/{arch}/images", f"Server/{arch}/images"
    ec2 = f"{cloud}/Fedora-Cloud-Base-AmazonEC2-{v}.{arch}.raw.xz"
    generic = f"{cloud}/Fedora-Cloud-Base-Generic-{v}.{arch}.qcow2"
    server_disk = f"{server}/Fedora-Server-Host-Generic-{v}.{arch}.raw.xz"
    return [
        _Disk("Cloud", "Cloud_Base", "raw-xz", "raw.xz", ec2, image_xz),
        _Disk("Cloud", "Cloud_Base", "qcow2", "qcow2", generic, _QCOW2),
        _Disk("Server", "Server", "raw-xz", "raw.xz", server_disk, _SERVER_DISK),
    ]


def _image(images: Any, disk: _Disk, arch: str, target: Path, sha256: str) -> Any:
    image = productmd.images.Image(images)
    stat = target.stat()
    image.path = disk.path
    image.mtime = int(stat.st_mtime)
    image.size = stat.st_size
    image.type = disk.type
    image.format = disk.format
    image.arch = arch
    image.disc_number = 1
    image.disc_count = 1
    image.checksums = {"sha256": sha256}
    image.subvariant = disk.subvariant
    return image


def _set_compose(compose: Any, cid: ComposeId) -> None:
    compose.id = cid.compose_id
    compose.type = cid.compose_type
    compose.date = cid.date
    compose.respin = cid.respin


def _composeinfo(cid: ComposeId, arches: tuple[str, ...]) -> Any:
    info = productmd.composeinfo.ComposeInfo()
    _set_compose(info.compose, cid)
    info.compose.label = cid.label or None
    info.release.name = RELEASE_NAME
    info.release.short = cid.release_short
    info.release.version = cid.release_version
    info.release.type = "ga"
    for name in ("Cloud", "Server"):
        variant = productmd.composeinfo.Variant(info)
        variant.id = variant.uid = variant.name = name
        variant.type = "variant"
        variant.arches = set(arches)
        for arch in arches:
            variant.paths.images[arch] = f"{name}/{arch}/images"
        info.variants.add(variant)
    return info


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link saves copying a 500 MB image; a copy when the link cannot cross filesystems."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Tests and the demo have their own output; no request log on stderr."""


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that stops reading early (fedimg reads an xz index off the end, then closes)
        is normal; anything else is still printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serves ``root`` over HTTP on loopback in a background thread; yields the base URL."""
    handler = partial(_QuietHandler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    # A short poll interval: shutdown() waits for it, and tests start many servers.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="sample-compose-http", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def compose_message(compose_id: str, location: str, status: str = "FINISHED") -> dict[str, Any]:
    """The body of pungi's ``compose.status.change`` message for the compose at ``location``."""
    cid = parse_compose_id(compose_id)
    return {
        "status": status,
        "compose_id": compose_id,
        "compose_date": cid.date,
        "compose_type": cid.compose_type,
        "compose_respin": cid.respin,
        "compose_label": cid.label or None,  # pungi sends null for an unlabelled compose
        "compose_path": location.rstrip("/").removesuffix("/compose"),
        "location": location,
        "release_short": cid.release_short,
        "release_name": cid.release_short,
        "release_version": cid.release_version,
        "release_type": "ga",
        "release_is_layered": False,
    }
