"""Discovery: a compose location → the images in it that fedimg publishes.

productmd parses the metadata, but fedimg fetches the two JSON files itself: productmd's own
fetching (urllib) has no timeout, turns every failure into "Failed to load metadata", and caches
existence checks for the life of the process, so a transient failure would stick in a consumer.
Fetching here gives bounded waits and tells a retryable failure from a bad compose.

productmd validates strictly, and real composes list image types, formats and variant types
before productmd learns them. An images.json entry or a composeinfo.json variant productmd
rejects is skipped with a warning naming it; what fedimg uses (the compose, the release, the
entries it selects) is still validated strictly. Keys productmd does not know it ignores.

Trust (trust.py): the location given is vouched for by the caller (the consumer checked it
against ``compose.trusted_locations``; an operator typed it); every redirect met while fetching
must stay inside the trusted locations or under the location given, and plain http is refused
except to loopback. TLS certificates are always verified (``compose.ca_bundle`` if set).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from urllib.request import url2pathname

import productmd.composeinfo
import productmd.images
import requests

from fedimg import __version__, composeid, trust
from fedimg.config import ARCHES, ComposeSettings
from fedimg.errors import InputError, TransientError

log = logging.getLogger(__name__)

COMPOSEINFO = "metadata/composeinfo.json"
IMAGES = "metadata/images.json"
# (connect, read) seconds for each metadata request; a GA images.json is ~100 KB.
HTTP_TIMEOUT = (10.0, 60.0)
# Whole-body deadline: the read timeout alone lets a server drip bytes forever.
HTTP_DEADLINE = 300.0
MAX_REDIRECTS = 5
# 4xx answers that say "not now" (Request Timeout, Too Early, Too Many Requests), not "never":
# like 5xx, a later attempt may pass. Every other 4xx is the location's fault.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
# Metadata larger than this is not a compose's (the biggest known images.json is < 1 MiB).
MAX_METADATA_BYTES = 64 * 1024**2
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class ComposeImage:
    path: str  # relative to the compose dir
    url: str  # absolute URL or file path to fetch
    arch: str
    subvariant: str
    type: str
    format: str
    sha256: str
    size: int
    variant: str
    image_name: str  # file name without .raw.xz etc, e.g. Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64
    # The image's entry in images.json as read (resultsdb_conventions' ``imgdict``).
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dry_run(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "arch": self.arch,
            "subvariant": self.subvariant,
            "type": self.type,
            "sha256": self.sha256,
            "size": self.size,
        }


@dataclass(frozen=True)
class ComposeInfo:
    compose_id: str
    release_short: str
    release_version: str
    release_type: str
    compose_type: str
    date: str
    respin: int
    label: str  # "" when the compose has none
    location: str  # the compose dir: http(s) URL without trailing slash, or absolute path
    # composeinfo.json as read (resultsdb_conventions' ``composeinfo``).
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def as_productmd(self) -> Any:
        """The metadata as a ``productmd.composeinfo.ComposeInfo``."""
        info = productmd.composeinfo.ComposeInfo()
        info.deserialize(json.loads(json.dumps(self.metadata)))
        return info


def discover(location: str, selection: ComposeSettings) -> tuple[ComposeInfo, list[ComposeImage]]:
    """The compose at ``location`` (its ``.../compose`` dir) and its images matching ``selection``.

    Raises InputError when the location or metadata is bad, TransientError when fetching failed
    in a way a later attempt may not.
    """
    for arch in selection.arches:
        if arch not in ARCHES:
            raise InputError(
                f"unsupported architecture {arch!r}; fedimg supports {', '.join(ARCHES)}"
            )
    base, info_data, images_data = _fetch_metadata(location, selection)
    info = _compose_info(base, info_data)
    images_compose_id, listed = _images(base, images_data, selection)
    if images_compose_id != info.compose_id:
        raise InputError(
            f"{_join(base, IMAGES)}: is for compose {images_compose_id}, "
            f"but composeinfo.json is for {info.compose_id}"
        )
    selected = _select(base, listed, selection)
    log.debug("compose %s: %d images selected", info.compose_id, len(selected))
    return info, selected


def verify_identity(compose_id: str, location: str, selection: ComposeSettings) -> ComposeInfo:
    """The compose at ``location``, if it is compose ``compose_id``; InputError otherwise.

    The id a message gives must be the one in composeinfo.json and in images.json, and the
    compose's own release, date, type and respin must make that id (productmd's rule).
    """
    base, info_data, images_data = _fetch_metadata(location, selection)
    info = _compose_info(base, info_data)
    images_id = _images_header(_join(base, IMAGES), images_data).compose.id
    if not compose_id == info.compose_id == images_id:
        raise InputError(
            f"compose ids differ: message {compose_id}, composeinfo.json {info.compose_id}, "
            f"images.json {images_id}"
        )
    made = info.as_productmd().create_compose_id()
    parsed = composeid.parse(compose_id)
    if made != compose_id or parsed is None or parsed.date != info.date:
        raise InputError(
            f"compose {compose_id}: composeinfo.json's release {info.release_short}-"
            f"{info.release_version}, date {info.date}, type {info.compose_type} and respin "
            f"{info.respin} make the id {made}"
        )
    return info


def _fetch_metadata(
    location: str, selection: ComposeSettings
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The compose dir, its composeinfo.json and its images.json, as JSON objects."""
    base = resolve_location(location)
    trusted = None
    if "://" in base:
        trusted = trust.TrustedLocations(selection.trusted_locations).including(base)
    with _Reader(trusted, selection.ca_bundle) as reader:
        base, info_data = _read_composeinfo(reader, base)
        images_data = reader.json(base, IMAGES)
    return base, info_data, images_data


def dry_run(location: str, selection: ComposeSettings) -> dict[str, Any]:
    """What ``fedimg compose LOCATION --dry-run --json`` prints: the compose and its images."""
    info, images = discover(location, selection)
    return {
        "compose_id": info.compose_id,
        "location": info.location,
        "images": [image.to_dry_run() for image in images],
    }


def resolve_location(location: str) -> str:
    """``location`` as an http(s) URL without trailing slash, or as an absolute directory path."""
    if not location.strip():
        raise InputError("compose location is empty")
    if "://" not in location:
        return _local_dir(location, location)
    parts = urlsplit(location)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InputError(f"compose location {location}: the URL has no host")
        if parts.query or parts.fragment:
            raise InputError(f"compose location {location}: the URL must not have a query")
        try:
            trust.parse(location)
        except InputError as e:
            raise InputError(f"compose location {e}") from None
        return location.rstrip("/")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"compose location {location}: file URL on another host")
        return _local_dir(url2pathname(unquote(parts.path)), location)
    raise InputError(
        f"compose location {location}: scheme {scheme!r} is not supported; "
        "give an http(s) URL, a file:// URL or a path"
    )


def _local_dir(path: str, location: str) -> str:
    absolute = os.path.abspath(path)
    if not os.path.isdir(absolute):
        raise InputError(f"compose location {location}: no such directory")
    return absolute


def _join(base: str, relative: str) -> str:
    if "://" in base:
        return f"{base}/{quote(relative)}"
    return os.path.join(base, relative)


class _NotFound(InputError):
    """A metadata file does not exist (HTTP 404/410, or no such file)."""


class _Reader:
    """Reads metadata files from a directory or over HTTP with bounded waits and sizes.

    Over HTTP, redirects are followed only inside ``trusted``.
    """

    def __init__(self, trusted: trust.TrustedLocations | None, ca_bundle: str = "") -> None:
        self.session = requests.Session()
        self.session.max_redirects = MAX_REDIRECTS
        # Given with each request: a session-wide value would yield to $REQUESTS_CA_BUNDLE.
        self.verify: str | bool = ca_bundle or True
        if trusted is not None:
            trust.guard_session(self.session, trusted)
        self.session.headers["User-Agent"] = f"fedimg/{__version__}"
        self.session.headers["Accept"] = "application/json"

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def json(self, base: str, relative: str) -> dict[str, Any]:
        where = _join(base, relative)
        raw = self._get(where) if "://" in base else _read_file(where)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise InputError(f"{where}: not a productmd metadata document (not a JSON object)")
        return data

    def _get(self, url: str) -> bytes:
        try:
            with self.session.get(url, timeout=HTTP_TIMEOUT, stream=True, verify=self.verify) as r:
                status = r.status_code
                if status in (404, 410):
                    raise _NotFound(f"{url}: not found (HTTP {status})")
                if status in TRANSIENT_STATUSES or status >= 500:
                    raise TransientError(f"{url}: server answered HTTP {status}")
                if status != 200:
                    raise InputError(f"{url}: server answered HTTP {status}")
                return _read_body(r, url)
        except requests.TooManyRedirects as e:
            raise InputError(f"{url}: more than {MAX_REDIRECTS} redirects") from e
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as e:
            raise InputError(f"{url}: cannot be fetched: {e}") from e
        except requests.Timeout as e:
            raise TransientError(f"{url}: timed out fetching metadata") from e
        except requests.RequestException as e:
            raise TransientError(f"{url}: cannot fetch metadata: {type(e).__name__}") from e


def _read_body(response: requests.Response, url: str) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_METADATA_BYTES:
        raise InputError(f"{url}: {declared} bytes is too large for compose metadata")
    deadline = time.monotonic() + HTTP_DEADLINE
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_content(64 * 1024):
        total += len(chunk)
        if total > MAX_METADATA_BYTES:
            raise InputError(f"{url}: too large for compose metadata")
        if time.monotonic() > deadline:
            raise TransientError(f"{url}: not received within {HTTP_DEADLINE:.0f} s")
        chunks.append(chunk)
    return b"".join(chunks)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_METADATA_BYTES + 1)
    except FileNotFoundError as e:
        raise _NotFound(f"{path}: no such file") from e
    except (IsADirectoryError, NotADirectoryError, PermissionError) as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    except OSError as e:  # e.g. EIO on the NFS-mounted compose tree
        raise TransientError(f"{path}: cannot read: {e.strerror}") from e
    if len(data) > MAX_METADATA_BYTES:
        raise InputError(f"{path}: too large for compose metadata")
    return data


def _read_composeinfo(reader: _Reader, base: str) -> tuple[str, dict[str, Any]]:
    """The compose dir and its composeinfo; accepts the compose's top dir too, as productmd does."""
    try:
        return base, reader.json(base, COMPOSEINFO)
    except _NotFound as first:
        inner = _join(base, "compose")
        try:
            return inner, reader.json(inner, COMPOSEINFO)
        except _NotFound:
            raise first from None


# What productmd raises on metadata it does not accept.
_PRODUCTMD_ERRORS = (KeyError, TypeError, ValueError, AttributeError)


def _compose_info(base: str, data: dict[str, Any]) -> ComposeInfo:
    data = _without_rejected_variants(data, _join(base, COMPOSEINFO))
    info = productmd.composeinfo.ComposeInfo()
    _productmd(_join(base, COMPOSEINFO), lambda: (info.deserialize(data), info.validate()))
    return ComposeInfo(
        compose_id=info.compose.id,
        release_short=info.release.short,
        release_version=info.release.version,
        release_type=info.release.type,
        compose_type=info.compose.type,
        date=info.compose.date,
        respin=info.compose.respin,
        label=info.compose.label or "",
        location=base,
        metadata=data,
    )


def _without_rejected_variants(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` without the variants productmd rejects (e.g. a variant type it does not know yet).

    fedimg needs only the header, compose and release of composeinfo.json; those stay strict.
    productmd ignores keys it does not know, so only values it validates can need this.
    """
    try:
        productmd.composeinfo.ComposeInfo().deserialize(data)
        return data
    except _PRODUCTMD_ERRORS:
        pass
    payload = data.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("variants"), dict):
        return data  # not a shape to repair: the strict parse reports it
    variants: dict[str, Any] = payload["variants"]
    kept: dict[str, Any] = {}
    for uid in sorted(u for u in variants if "-" not in u):
        family = {k: v for k, v in variants.items() if k == uid or k.startswith(f"{uid}-")}
        trial = {**data, "payload": {**payload, "variants": family}}
        try:
            productmd.composeinfo.ComposeInfo().deserialize(trial)
        except _PRODUCTMD_ERRORS as e:
            log.warning("%s: skipped variant %s: %s", where, uid, _reason(e))
            continue
        kept.update(family)
    return {**data, "payload": {**payload, "variants": kept}}


@dataclass(frozen=True)
class _Listed:
    """One images.json entry productmd accepted, with the entry as written."""

    variant: str
    arch: str
    image: Any  # productmd.images.Image
    entry: Mapping[str, Any]


def _images(
    base: str, data: dict[str, Any], selection: ComposeSettings
) -> tuple[str, list[_Listed]]:
    """The compose id images.json is for, and its entries productmd accepts.

    An entry productmd rejects (a type or format it does not know yet, a field missing or of
    another type) is skipped with a warning: pungi and the image builders add image types before
    productmd learns them, and one such image must not hide the rest. An entry fedimg would
    select is not skipped: its error stops discovery, as before.
    """
    where = _join(base, IMAGES)
    images = _images_header(where, data)
    listing = data["payload"].get("images")
    if not isinstance(listing, dict) or not all(
        isinstance(arches, dict) and all(isinstance(e, list) for e in arches.values())
        for arches in listing.values()
    ):
        raise InputError(
            f"{where}: invalid productmd metadata: payload.images is not variant → arch → list"
        )
    accepted: list[_Listed] = []
    for variant, arches in sorted(listing.items()):
        for arch, entries in sorted(arches.items()):
            for entry in entries:
                image = productmd.images.Image(images)
                try:
                    if not isinstance(entry, dict):
                        raise TypeError(f"an entry is {type(entry).__name__}, not an object")
                    image.deserialize(entry)
                    images.add(variant, arch, image)
                except _PRODUCTMD_ERRORS as e:
                    path = entry.get("path") if isinstance(entry, dict) else None
                    if _wanted(entry, arch, selection):
                        raise InputError(
                            f"{where}: image {path}: invalid productmd metadata: {_reason(e)}"
                        ) from e
                    log.warning(
                        "%s: skipped image %s/%s %s: %s", where, variant, arch, path, _reason(e)
                    )
                    continue
                accepted.append(_Listed(variant, arch, image, entry))
    return images.compose.id, accepted


def _images_header(where: str, data: dict[str, Any]) -> Any:
    """images.json's header and compose, parsed: a ``productmd.images.Images`` with no images."""
    images = productmd.images.Images()
    _productmd(
        where,
        lambda: (images.header.deserialize(data), images.compose.deserialize(data["payload"])),
    )
    return images


def _wanted(entry: Any, arch: str, selection: ComposeSettings) -> bool:
    """Whether fedimg would select ``entry`` (listed under ``arch``), judged from the entry as
    written."""
    if not isinstance(entry, dict):
        return False
    return (
        entry.get("type") in selection.types
        and entry.get("subvariant") in selection.subvariants
        and (arch in selection.arches or entry.get("arch") in selection.arches)
    )


def _productmd(where: str, parse: Callable[[], object]) -> None:
    """Runs a productmd parse; its complaints become one-line InputErrors."""
    try:
        parse()
    except _PRODUCTMD_ERRORS as e:
        raise InputError(f"{where}: invalid productmd metadata: {_reason(e)}") from e


def _reason(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return " ".join(str(error).split())


def _select(base: str, listed: list[_Listed], selection: ComposeSettings) -> list[ComposeImage]:
    selected: dict[str, ComposeImage] = {}
    for item in sorted(listed, key=lambda i: (i.variant, i.arch, i.image.path)):
        image = item.image
        if (
            image.type not in selection.types
            or image.subvariant not in selection.subvariants
            or image.arch not in selection.arches
        ):
            continue
        found = _compose_image(base, item.variant, item.arch, image, item.entry)
        # A unified image may be listed under several variants; it is one image.
        selected.setdefault(found.path, found)
    # In the configured order of arches: the first is the one people wait for.
    return sorted(selected.values(), key=lambda i: (selection.arches.index(i.arch), i.path))


def _compose_image(
    base: str, variant: str, arch: str, image: Any, entry: Mapping[str, Any]
) -> ComposeImage:
    path = _safe_path(image.path)
    where = f"{_join(base, IMAGES)}: image {path}"
    if image.arch != arch:
        raise InputError(f"{where}: listed under arch {arch} but its arch is {image.arch}")
    sha256 = image.checksums.get("sha256")
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise InputError(f"{where}: no valid sha256 checksum")
    size = entry.get("size", image.size)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise InputError(f"{where}: size {size!r} is not a positive whole number")
    return ComposeImage(
        path=path,
        url=_join(base, path),
        arch=image.arch,
        subvariant=image.subvariant,
        type=image.type,
        format=image.format,
        sha256=sha256.lower(),
        size=size,
        variant=variant,
        image_name=image_name(path, image.format),
        metadata=dict(entry),
    )


def _safe_path(path: str) -> str:
    """``path`` if it stays inside the compose dir; images are fetched by joining it to the base."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.name or "\\" in path or "\0" in path:
        raise InputError(f"image path {path!r} is not inside the compose directory")
    return str(pure)


_SUFFIX_RE = re.compile(r"\.(raw|qcow2|vhd|vhdfixed|vmdk|img|tar)(\.(xz|gz|zst|bz2))?$")


def image_name(path: str, image_format: str) -> str:
    """The file name without its format suffix: ``Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64``."""
    name = PurePosixPath(path).name
    suffix = f".{image_format}"
    if image_format and name.endswith(suffix):
        return name[: -len(suffix)]
    return _SUFFIX_RE.sub("", name)
