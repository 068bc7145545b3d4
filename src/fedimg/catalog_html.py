"""The catalog's static page: one HTML file with its style and script inline, no external assets.

It works offline, from any static web server or a file on disk, with no build step. Every value
shown comes from AWS (tags included, which whoever can tag an AMI in the account controls), so
every value is escaped for its place (text or attribute), and the page's Content-Security-Policy
allows only its own style and script, by hash: injected markup could not run script or load
anything.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from html import escape
from importlib import resources
from string import Template

from fedimg.catalog import CatalogEntry
from fedimg.composekind import Kind

KIND_LABELS = {
    Kind.GA.value: "GA",
    Kind.PRERELEASE.value: "pre-release",
    Kind.NIGHTLY.value: "nightly",
    Kind.UNKNOWN.value: "unknown",
}
# Fedora calls it aarch64; AWS (and the launch wizard) arm64.
ARCH_LABELS = {"arm64": "arm64 (aarch64)"}


@cache
def _asset(name: str) -> str:
    return (resources.files("fedimg") / "catalog_data" / name).read_text(encoding="utf-8")


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_security_policy(style: str, script: str) -> str:
    """Nothing but the page's own inline style and script; no network access at all."""
    return (
        f"default-src 'none'; style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; "
        "base-uri 'none'; form-action 'none'; connect-src 'none'"
    )


def render_page(entries: Sequence[CatalogEntry], generated: datetime) -> str:
    style, script = _asset("catalog.css"), _asset("catalog.js")
    regions = sorted({e.region for e in entries})
    arches = sorted({e.architecture for e in entries})
    when = generated.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    summary = (
        f"{len(entries)} image{'s' if len(entries) != 1 else ''} in {len(regions)} "
        f"region{'s' if len(regions) != 1 else ''}, read from AWS on {when}."
    )
    return Template(_asset("index.html")).substitute(
        csp=escape(content_security_policy(style, script)),
        style=style,
        script=script,
        summary=escape(summary),
        arch_options="".join(_option(a, ARCH_LABELS.get(a, a)) for a in arches),
        region_options="".join(_option(r, r) for r in regions),
        rows="\n".join(_row(e, generated) for e in entries),
        empty_hidden="" if not entries else " hidden",
    )


def _option(value: str, label: str) -> str:
    return f'<option value="{escape(value)}">{escape(label)}</option>'


def _row(e: CatalogEntry, now: datetime) -> str:
    classes = [f"kind-{e.kind}" if e.kind in KIND_LABELS else "kind-unknown"]
    if e.deprecation and e.deprecation < now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"):
        classes.append("deprecated")
    cells = [
        escape(e.release or "?"),
        f'<span class="tag">{escape(KIND_LABELS.get(e.kind, e.kind))}</span>',
        escape(e.subvariant),
        escape(ARCH_LABELS.get(e.architecture, e.architecture)),
        escape(e.region),
        f'<code class="ami">{escape(e.ami)}</code>',
        _time(e.date),
        escape(e.boot_mode),
        _time(e.deprecation),
        f'<a class="launch" href="{escape(e.launch_url)}" rel="noopener noreferrer" '
        f'target="_blank">Launch</a>',
        escape(e.name),
    ]
    return (
        f'<tr class="{" ".join(classes)}" data-arch="{escape(e.architecture)}" '
        f'data-region="{escape(e.region)}" data-kind="{escape(e.kind)}">'
        + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr>"
    )


def _time(value: str) -> str:
    """A date cell: the day shown, the full time in the markup."""
    if not value:
        return ""
    return f'<time datetime="{escape(value)}">{escape(value[:10])}</time>'
