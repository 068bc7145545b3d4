"""Fedora compose ids, parsed so that "newer" compares numbers, not strings.

A compose id is ``<release>-<date>[.<type>].<respin>``: ``Fedora-41-20241024.0`` (production),
``Fedora-Rawhide-20250101.n.10`` (nightly), ``.t.`` test, ``.ci.`` CI, ``.d.`` development.
As strings, ``….n.10`` sorts before ``….n.2``; parsed, it is newer.

Order (productmd's): by date, then by type (test < ci < nightly < production < development), then
by respin as a number. The release part is not compared: where fedimg asks "newer", both ids are of
one release already (the SSM "latest" parameter is per release). An id that does not parse is
never newer than one that does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from productmd.composeinfo import COMPOSE_TYPES

_TYPES = {"": "production", "n": "nightly", "t": "test", "ci": "ci", "d": "development"}
_ID_RE = re.compile(
    r"^(?P<release>.+)-(?P<date>\d{8})(?:\.(?P<type>n|t|ci|d))?\.(?P<respin>\d{1,9})$"
)


@dataclass(frozen=True)
class ComposeId:
    release: str  # e.g. "Fedora-41", "Fedora-Rawhide", "Fedora-Cloud-43"
    date: str  # YYYYMMDD
    type: str  # production, nightly, test, ci or development
    respin: int

    @property
    def order(self) -> tuple[str, int, int]:
        """The sort key: date, type rank, respin."""
        return (self.date, COMPOSE_TYPES.index(self.type), self.respin)


def parse(compose_id: str) -> ComposeId | None:
    """``compose_id`` parsed, or None when it is not a compose id of this shape."""
    match = _ID_RE.match(compose_id)
    if match is None:
        return None
    return ComposeId(
        release=match["release"],
        date=match["date"],
        type=_TYPES[match["type"] or ""],
        respin=int(match["respin"]),
    )


def is_newer(candidate: str, than: str) -> bool:
    """Whether compose ``candidate`` is newer than compose ``than``.

    An unparseable ``candidate`` is never newer; a parseable one is newer than an unparseable
    ``than`` (e.g. an AMI without a compose tag).
    """
    new, old = parse(candidate), parse(than)
    if new is None:
        return False
    if old is None:
        return True
    return new.order > old.order
