"""The public catalog: every AMI fedimg published, read from AWS, as ``catalog.json`` and a page.

Nothing is remembered between runs: the catalog is what DescribeImages returns for fedimg's AMIs
(tag ``fedimg:managed=true``, owned by this account, available) in every configured region, so it
is right after a crash, a prune or a manual deregistration alike. With ``publish.public`` only
public AMIs are listed (an AMI that failed its boot test is registered but never public); when
fedimg shares with accounts instead, every available AMI is.

Order: the newest GA release first, then pre-releases, then nightlies, then what cannot be
classified (``composekind``); within a kind newer releases and composes first.

Both files are written to a temporary file in the output directory and renamed over the old one,
so a web server serving that directory never sends half a file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedimg import composeid
from fedimg.aws import limits
from fedimg.aws.clients import Clients, translate
from fedimg.composekind import TAG_RELEASE, TAG_SUBVARIANT, Kind, classify_tags, release_of
from fedimg.config import Settings
from fedimg.errors import FedimgError, InputError
from fedimg.identity import TAG_COMPOSE, TAG_MANAGED, TAG_NAME, tags_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

    from fedimg.pipeline import ComposeOutcome

log = logging.getLogger(__name__)

JSON_FILE = "catalog.json"
HTML_FILE = "index.html"
FORMAT_VERSION = 1
KIND_ORDER = (Kind.GA, Kind.PRERELEASE, Kind.NIGHTLY, Kind.UNKNOWN)
# The management console per partition; the console sends a visitor on to the region's own host.
CONSOLE = {
    "aws": "console.aws.amazon.com",
    "aws-cn": "console.amazonaws.cn",
    "aws-us-gov": "console.amazonaws-us-gov.com",
}
# AMI ids and regions come from AWS, but they end up in URLs: accept only their documented shapes.
_AMI_RE = re.compile(r"ami-[0-9a-f]{8,17}")
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")


@dataclass(frozen=True)
class CatalogEntry:
    """One AMI in one region; the keys of ``catalog.json``'s entries and ``fedimg list --json``."""

    release: str  # "42", "Rawhide"; "" when neither a tag nor the compose id says
    subvariant: str  # "Cloud_Base"; "" for AMIs made before fedimg recorded it
    architecture: str  # AWS's: x86_64 | arm64
    region: str
    ami: str
    name: str
    date: str  # CreationDate as AWS gives it (ISO 8601, UTC)
    boot_mode: str  # "" when AWS reports none (the instance type decides)
    deprecation: str  # DeprecationTime, "" when none
    kind: str  # composekind.Kind
    compose_id: str
    launch_url: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def launch_url(region: str, ami: str) -> str:
    """The EC2 console's launch wizard for ``ami`` in ``region``."""
    if not _AMI_RE.fullmatch(ami) or not _REGION_RE.fullmatch(region):
        raise InputError(f"not an AMI id and region: {ami!r} in {region!r}")
    console = CONSOLE.get(limits.partition(region), CONSOLE["aws"])
    return f"https://{console}/ec2/home?region={quote(region)}#LaunchInstances:ami={quote(ami)}"


def regions_of(settings: Settings) -> list[str]:
    return list(dict.fromkeys((settings.aws.base_region, *settings.aws.regions)))


def read_catalog(settings: Settings, clients: Clients) -> list[CatalogEntry]:
    """fedimg's AMIs in every configured region, regions read at once, in catalog order.

    Raises AwsError (translated) if a region cannot be read: a catalog missing a region would
    look complete.
    """
    public_only = settings.publish.public

    def read(region: str) -> list[CatalogEntry]:
        try:
            return region_entries(clients.ec2(region), region, public_only=public_only)
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"catalog: reading {region}") from e

    regions = regions_of(settings)
    with ThreadPoolExecutor(max_workers=len(regions), thread_name_prefix="catalog") as pool:
        per_region = list(pool.map(read, regions))
    return ordered(e for entries in per_region for e in entries)


def region_entries(ec2: EC2Client, region: str, *, public_only: bool) -> list[CatalogEntry]:
    images = [
        image
        for page in ec2.get_paginator("describe_images").paginate(
            Owners=["self"],
            Filters=[
                {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
                {"Name": "state", "Values": ["available"]},
            ],
        )
        for image in page["Images"]
        if image.get("Public") or not public_only
    ]
    return [entry_of(image, region) for image in images]


def entry_of(image: Any, region: str) -> CatalogEntry:
    """One described AMI as a catalog entry; release and subvariant from the tags fedimg records,
    for older AMIs the release from the compose id."""
    tags = tags_of(image)
    name = str(image.get("Name", ""))
    compose_id = tags.get(TAG_COMPOSE, "")
    return CatalogEntry(
        release=tags.get(TAG_RELEASE) or release_of(compose_id),
        subvariant=tags.get(TAG_SUBVARIANT, ""),
        architecture=str(image.get("Architecture", "")),
        region=region,
        ami=str(image["ImageId"]),
        name=name,
        date=str(image.get("CreationDate", "")),
        boot_mode=str(image.get("BootMode", "")),
        deprecation=str(image.get("DeprecationTime", "")),
        kind=classify_tags(tags, tags.get(TAG_NAME, name)).value,
        compose_id=compose_id,
        launch_url=launch_url(region, str(image["ImageId"])),
    )


def ordered(entries: Iterable[CatalogEntry]) -> list[CatalogEntry]:
    """GA first, then pre-releases, nightlies, unknown; newest release and compose first."""
    rank = {kind.value: n for n, kind in enumerate(KIND_ORDER)}

    def newest_first(e: CatalogEntry) -> tuple[Any, ...]:
        parsed = composeid.parse(e.compose_id)
        compose_order = parsed.order if parsed else ("", 0, 0)
        return (-rank.get(e.kind, len(rank)), _release_rank(e.release), compose_order)

    # Newest first on the compose; then a stable, readable order within one compose.
    by_place = sorted(entries, key=lambda e: (e.subvariant, e.architecture, e.region, e.ami))
    return sorted(by_place, key=newest_first, reverse=True)


def _release_rank(release: str) -> tuple[int, int]:
    """Numbered releases by number; Rawhide (the next one) above them; unknown below."""
    if release.isdigit():
        return (1, int(release))
    return (2, 0) if release.lower() == "rawhide" else (0, 0)


def filtered(
    entries: Sequence[CatalogEntry], *, release: str | None = None, region: str | None = None
) -> list[CatalogEntry]:
    return [
        e
        for e in entries
        if (release is None or e.release.lower() == release.lower())
        and (region is None or e.region == region)
    ]


def catalog_document(entries: Sequence[CatalogEntry], generated: datetime) -> dict[str, Any]:
    """``catalog.json``: the entries and when and from which regions they were read."""
    return {
        "version": FORMAT_VERSION,
        "generated": generated.astimezone(UTC).isoformat(timespec="seconds"),
        "images": [e.to_json() for e in entries],
    }


@dataclass(frozen=True)
class CatalogFiles:
    json_path: Path
    html_path: Path
    entries: int


def write_catalog(
    entries: Sequence[CatalogEntry], output_dir: str | Path, *, now: datetime | None = None
) -> CatalogFiles:
    """Writes ``catalog.json`` and ``index.html`` into ``output_dir`` (made if missing),
    each atomically."""
    from fedimg.catalog_html import render_page

    generated = now or datetime.now(UTC)
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"catalog: cannot create {out}: {e.strerror}") from e
    document = json.dumps(catalog_document(entries, generated), indent=2) + "\n"
    json_path = write_atomically(out / JSON_FILE, document)
    html_path = write_atomically(out / HTML_FILE, render_page(entries, generated))
    return CatalogFiles(json_path, html_path, len(entries))


def write_atomically(path: Path, text: str) -> Path:
    """``path`` holds either its old content or all of ``text``, never a part: a temporary file
    in the same directory (same filesystem), flushed to disk, renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; a web server must be able to read it.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"catalog: cannot write {path}: {e.strerror}") from e
    return path


def refresh_catalog(settings: Settings, clients: Clients, output_dir: str | Path) -> CatalogFiles:
    """Reads the catalog from AWS and writes it: ``fedimg catalog`` and the consumer's refresh."""
    files = write_catalog(read_catalog(settings, clients), output_dir)
    log.info("catalog: %d AMIs written to %s", files.entries, files.html_path.parent)
    return files


def refresh_after_publish(
    settings: Settings, clients: Clients, outcome: ComposeOutcome, output_dir: str | Path
) -> CatalogFiles | None:
    """The consumer's refresh: rewrites the catalog once a compose made something public.

    A failure is logged, never raised: the compose's AMIs are published all the same, and the
    next publish (or ``fedimg catalog``) writes the catalog from AWS anew.
    """
    if not any(image.status == "published" for image in outcome.images):
        return None
    try:
        return refresh_catalog(settings, clients, output_dir)
    except FedimgError as e:
        log.error("compose %s: the catalog was not refreshed: %s", outcome.compose_id, e)
        return None


# ---------------------------------------------------------------------------------------------
# The commands


def catalog_command(
    settings: Settings, clients: Clients, output_dir: str, console: Console | None = None
) -> int:
    """``fedimg catalog [--output DIR]``: writes the files and says where they are."""
    console = console or Console()
    files = refresh_catalog(settings, clients, output_dir)
    console.print(
        f"fedimg catalog: {files.entries} AMIs from {len(regions_of(settings))} regions; "
        f"{files.json_path}, {files.html_path}",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def list_command(
    settings: Settings,
    clients: Clients,
    *,
    release: str | None,
    region: str | None,
    as_json: bool,
    console: Console | None = None,
) -> int:
    """``fedimg list [--release R] [--region R] [--json]``: the catalog's entries for operators."""
    console = console or Console()
    if region is not None and region not in regions_of(settings):
        raise InputError(f"{region}: not a configured region ({', '.join(regions_of(settings))})")
    entries = filtered(read_catalog(settings, clients), release=release, region=region)
    if as_json:
        console.out(json.dumps([e.to_json() for e in entries], indent=2), highlight=False)
    else:
        console.print(list_table(entries, console.width))
    return 0


# Columns of ``fedimg list``: the narrowest terminal gets the first six; wider ones more.
LIST_COLUMNS = ("release", "kind", "arch", "region", "AMI", "created")
WIDE_COLUMNS = ((110, ("subvariant", "deprecated")), (170, ("name",)))


def list_table(entries: Sequence[CatalogEntry], width: int = 80) -> Table:
    columns = list(LIST_COLUMNS)
    for needs, more in WIDE_COLUMNS:
        if width >= needs:
            columns += more
    table = Table(
        title=f"fedimg: {len(entries)} AMI{'s' if len(entries) != 1 else ''}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in columns:
        # Ids, regions and dates are copied from here: never broken across lines.
        table.add_column(column, no_wrap=column in ("AMI", "region", "created", "deprecated"))
    for e in entries:
        cells = {
            "release": e.release,
            "kind": e.kind,
            "arch": e.architecture,
            "region": e.region,
            "AMI": e.ami,
            "created": e.date[:10],
            "subvariant": e.subvariant,
            "deprecated": e.deprecation[:10],
            "name": e.name,
        }
        # Tag values are shown as text, never read as rich markup.
        table.add_row(*(Text(cells[c]) for c in columns))
    return table
