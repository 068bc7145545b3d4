"""What kind of compose an image came from: the key of the retention policy and the catalog's order.

Kinds:

- ``ga``: a production compose labelled ``RC-…`` (Fedora ships GA from an RC; Cloud SIG composes
  are labelled ``RC-<date>.<respin>``) or ``Update-…``/``SecurityFix-…`` (productmd's other final
  milestones).
- ``prerelease``: a production compose with any other productmd milestone (``Beta-1.2``,
  ``Alpha-…``, …).
- ``nightly``: a nightly, test, CI or development compose, and anything of release ``Rawhide``.
- ``unknown``: none of these can be told (e.g. a production compose without a label). The retention
  policy keeps it and reports it.

When fedimg makes an AMI it records the kind, the release and the subvariant as tags
(:func:`kind_tags`). AMIs made before that are classified from their compose id tag and image name
(:func:`classify_tags`): Fedora's image names carry the label (``…-41-1.4.x86_64`` from
``RC-1.4``, ``…-41_Beta-1.2.x86_64`` from ``Beta-1.2``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

from fedimg import composeid

TAG_KIND = "fedimg:compose-kind"
TAG_RELEASE = "fedimg:release"
TAG_SUBVARIANT = "fedimg:subvariant"
# The tags fedimg records about the compose: counted in config.FEDIMG_TAGS_PER_RESOURCE.
KIND_TAG_COUNT = 3


class Kind(enum.StrEnum):
    GA = "ga"
    PRERELEASE = "prerelease"
    NIGHTLY = "nightly"
    UNKNOWN = "unknown"


# productmd's final milestones (SUPPORTED_MILESTONES); any other label is a pre-release.
_FINAL_MILESTONES = frozenset({"RC", "Update", "SecurityFix"})
_LABEL_RE = re.compile(r"^(?P<milestone>[A-Za-z]+)-\d+(\.\d+)*$")
_SHORT_LIVED_TYPES = frozenset({"nightly", "test", "ci", "development"})
# Older AMIs, by image name: "<family>-<release>_<Milestone>-<n>.<m>.<arch>" is a pre-release,
# "<family>-<release>-<n>.<m>.<arch>" a GA (the label's numbers; a date would be 8 digits).
_PRERELEASE_NAME_RE = re.compile(r"-[0-9]+_(?!RC-)[A-Za-z]+-\d+\.\d+(\.|$)")
_GA_NAME_RE = re.compile(r"-[0-9]+-\d{1,4}\.\d+(\.|$)")


def classify(
    compose_id: str, *, compose_type: str = "", label: str = "", release_version: str = ""
) -> Kind:
    """The kind of a compose from its productmd metadata (``compose.type``, ``compose.label``).

    Without ``compose_type``, the type is read from the id (``.n.`` nightly …)."""
    parsed = composeid.parse(compose_id)
    compose_type = compose_type or (parsed.type if parsed else "")
    version = release_version or release_of(compose_id)
    if compose_type in _SHORT_LIVED_TYPES or version.lower() == "rawhide":
        return Kind.NIGHTLY
    if compose_type != "production":
        return Kind.UNKNOWN
    match = _LABEL_RE.match(label)
    if match is None:
        return Kind.UNKNOWN
    return Kind.GA if match["milestone"] in _FINAL_MILESTONES else Kind.PRERELEASE


def classify_tags(tags: Mapping[str, str], image_name: str = "") -> Kind:
    """The kind of an AMI from its tags; for AMIs older than the kind tag, from the compose id tag
    and the image name (the ``fedimg:image-name`` tag, else ``image_name``)."""
    recorded = tags.get(TAG_KIND, "")
    if recorded in {k.value for k in Kind}:
        return Kind(recorded)
    compose_id = tags.get("fedimg:compose-id", "")
    name = tags.get("fedimg:image-name", "") or image_name
    if compose_id:
        kind = classify(compose_id)
        if kind is Kind.NIGHTLY:
            return kind
        if composeid.parse(compose_id) is None:
            return Kind.UNKNOWN
    return _classify_name(name)


def _classify_name(name: str) -> Kind:
    if re.search(r"-\d{8}\.n\.\d+", name) or "-Rawhide-" in name:
        return Kind.NIGHTLY
    if _PRERELEASE_NAME_RE.search(name):
        return Kind.PRERELEASE
    if _GA_NAME_RE.search(name):
        return Kind.GA
    return Kind.UNKNOWN


def release_of(compose_id: str) -> str:
    """The release version in a compose id: ``41`` of ``Fedora-41-…``, ``Rawhide``; "" if none."""
    parsed = composeid.parse(compose_id)
    return parsed.release.rsplit("-", 1)[-1] if parsed else ""


def kind_tags(kind: Kind, release: str, subvariant: str) -> dict[str, str]:
    """The tags recorded on an AMI (and its snapshots) when fedimg makes it."""
    tags = {TAG_KIND: kind.value}
    if release:
        tags[TAG_RELEASE] = release
    if subvariant:
        tags[TAG_SUBVARIANT] = subvariant
    return tags
