"""Compose ids: parsed fields and the "newer" order (date, type, respin as numbers)."""

from __future__ import annotations

import pytest

from fedimg.composeid import ComposeId, is_newer, parse


@pytest.mark.parametrize(
    ("compose_id", "parsed"),
    [
        ("Fedora-41-20241024.0", ComposeId("Fedora-41", "20241024", "production", 0)),
        ("Fedora-Rawhide-20250101.n.10", ComposeId("Fedora-Rawhide", "20250101", "nightly", 10)),
        ("Fedora-Cloud-43-20251101.t.2", ComposeId("Fedora-Cloud-43", "20251101", "test", 2)),
        ("Fedora-IoT-42-20250409.ci.1", ComposeId("Fedora-IoT-42", "20250409", "ci", 1)),
    ],
)
def test_fedora_compose_ids_parse_into_their_parts(compose_id: str, parsed: ComposeId) -> None:
    assert parse(compose_id) == parsed


@pytest.mark.parametrize(
    "compose_id",
    ["", "Fedora-41", "Fedora-41-2024102.0", "Fedora-41-20241024", "Fedora-41-20241024.x.1"],
)
def test_other_strings_do_not_parse(compose_id: str) -> None:
    assert parse(compose_id) is None


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        ("Fedora-Rawhide-20250101.n.10", "Fedora-Rawhide-20250101.n.2"),  # not as strings
        ("Fedora-Rawhide-20250102.n.0", "Fedora-Rawhide-20250101.n.9"),
        ("Fedora-41-20241024.0", "Fedora-41-20241024.n.3"),  # production after nightly
        ("Fedora-41-20241024.n.0", "Fedora-41-20241024.t.5"),
        ("Fedora-41-20241024.0", ""),  # an AMI without a compose tag
        ("Fedora-41-20241024.0", "not-a-compose"),
    ],
)
def test_newer_compares_date_type_and_respin_as_numbers(newer: str, older: str) -> None:
    assert is_newer(newer, older)
    assert not is_newer(older, newer)


def test_the_same_compose_is_not_newer_than_itself() -> None:
    assert not is_newer("Fedora-41-20241024.1", "Fedora-41-20241024.1")


def test_unparseable_ids_are_never_newer() -> None:
    assert not is_newer("Fedora-99-latest", "Fedora-41-20241024.0")
    assert not is_newer("zzz", "aaa")
