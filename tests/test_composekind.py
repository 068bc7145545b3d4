"""Compose kinds: from productmd metadata when the AMI is made, from tags and names afterwards."""

from __future__ import annotations

import pytest

from fedimg.composekind import (
    TAG_KIND,
    TAG_RELEASE,
    TAG_SUBVARIANT,
    Kind,
    classify,
    classify_tags,
    kind_tags,
    release_of,
)


@pytest.mark.parametrize(
    ("compose_id", "compose_type", "label", "kind"),
    [
        ("Fedora-41-20241024.0", "production", "RC-1.4", Kind.GA),
        ("Fedora-Cloud-43-20251101.0", "production", "RC-20251101.0", Kind.GA),
        ("Fedora-41-20241201.0", "production", "Update-1.0", Kind.GA),
        ("Fedora-41-20240917.0", "production", "Beta-1.2", Kind.PRERELEASE),
        ("Fedora-41-20240801.0", "production", "Alpha-1.1", Kind.PRERELEASE),
        ("Fedora-42-20250301.n.0", "nightly", "", Kind.NIGHTLY),
        ("Fedora-Rawhide-20250101.n.10", "", "", Kind.NIGHTLY),
        ("Fedora-Cloud-43-20251101.t.2", "test", "", Kind.NIGHTLY),
        ("Fedora-41-20241024.0", "production", "", Kind.UNKNOWN),
        ("Fedora-41-20241024.0", "production", "RC", Kind.UNKNOWN),
    ],
)
def test_productmd_type_and_label_decide_the_kind(
    compose_id: str, compose_type: str, label: str, kind: Kind
) -> None:
    assert classify(compose_id, compose_type=compose_type, label=label) is kind


def test_a_rawhide_release_is_nightly_whatever_its_type() -> None:
    kind = classify("Fedora-X-20250101.0", compose_type="production", release_version="Rawhide")
    assert kind is Kind.NIGHTLY


def test_the_recorded_tag_wins_over_names() -> None:
    tags = {
        TAG_KIND: "prerelease",
        "fedimg:image-name": "Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64",
    }
    assert classify_tags(tags) is Kind.PRERELEASE


@pytest.mark.parametrize(
    ("compose_id", "image_name", "kind"),
    [
        ("Fedora-41-20241024.0", "Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64", Kind.GA),
        ("Fedora-41-20240917.0", "Fedora-Cloud-Base-AmazonEC2-41_Beta-1.2.x86_64", Kind.PRERELEASE),
        (
            "Fedora-42-20250301.n.0",
            "Fedora-Cloud-Base-42-20250301.n.0.x86_64",
            Kind.NIGHTLY,
        ),
        ("", "Fedora-Cloud-Base-Rawhide-20250101.n.1.x86_64-hvm-us-east-1-gp3-0", Kind.NIGHTLY),
        ("", "Fedora-Cloud-Base-41-1.4.x86_64-hvm-us-east-1-gp3-0", Kind.GA),
        (
            "Fedora-Cloud-43-20251101.0",
            "Fedora-Cloud-Base-43-20251101.0.x86_64",
            Kind.UNKNOWN,
        ),
        ("not-a-compose", "Fedora-Cloud-Base-41-1.4.x86_64", Kind.UNKNOWN),
        ("", "my-own-image", Kind.UNKNOWN),
    ],
)
def test_older_amis_are_classified_from_compose_id_and_image_name(
    compose_id: str, image_name: str, kind: Kind
) -> None:
    tags = {"fedimg:compose-id": compose_id} if compose_id else {}
    assert classify_tags(tags, image_name) is kind


def test_an_unrecognised_kind_tag_falls_back_to_the_name() -> None:
    tags = {TAG_KIND: "forever", "fedimg:image-name": "Fedora-Cloud-Base-41-1.4.x86_64"}
    assert classify_tags(tags) is Kind.GA


def test_release_is_the_last_part_of_the_compose_release() -> None:
    assert release_of("Fedora-Cloud-43-20251101.0") == "43"
    assert release_of("Fedora-Rawhide-20250101.n.1") == "Rawhide"
    assert release_of("garbage") == ""


def test_kind_tags_record_kind_release_and_subvariant() -> None:
    assert kind_tags(Kind.GA, "41", "Cloud_Base") == {
        TAG_KIND: "ga",
        TAG_RELEASE: "41",
        TAG_SUBVARIANT: "Cloud_Base",
    }
    assert kind_tags(Kind.NIGHTLY, "", "") == {TAG_KIND: "nightly"}
