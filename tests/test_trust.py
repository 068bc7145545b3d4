"""The trusted-location matcher: parsed, normalised URLs; look-alikes neither match nor parse."""

from __future__ import annotations

import pytest

from fedimg.errors import InputError
from fedimg.trust import FEDORA_COMPOSES, TrustedLocations, parse, prefix_problem

TRUSTED = TrustedLocations(
    [FEDORA_COMPOSES, "http://127.0.0.1:8080/composes", "/mnt/koji/compose/"]
)
F41 = "Fedora-41-20241024.0/compose"


@pytest.mark.parametrize(
    "location",
    [
        f"https://kojipkgs.fedoraproject.org/compose/{F41}",
        f"HTTPS://KojiPkgs.FedoraProject.org/compose/{F41}",  # case of scheme and host
        f"https://kojipkgs.fedoraproject.org./compose/{F41}",  # trailing dot of the host
        f"https://kojipkgs.fedoraproject.org:443/compose/{F41}",  # the default port, explicit
        f"https://kojipkgs.fedoraproject.org/%63ompose/{F41}",  # an encoded unreserved letter
        f"https://kojipkgs.fedoraproject.org//compose//{F41}",  # empty segments
        "https://kojipkgs.fedoraproject.org/compose",  # the prefix itself
        "http://127.0.0.1:8080/composes/x/compose",
        f"/mnt/koji/compose/{F41}",
        f"file:///mnt/koji/compose/{F41}",
        f"file://localhost/mnt/koji/compose/{F41}",
    ],
)
def test_locations_under_a_trusted_prefix_match(location: str) -> None:
    assert TRUSTED.allows(parse(location))


@pytest.mark.parametrize(
    "location",
    [
        "https://kojipkgs.fedoraproject.org.evil.example/compose/x",  # look-alike host
        "https://evil.example/kojipkgs.fedoraproject.org/compose/x",
        "https://kojipkgs.fedoraproject.org:444/compose/x",  # another port
        "https://kojipkgs.fedoraproject.org/compose-evil/x",  # a path-prefix look-alike
        "https://kojipkgs.fedoraproject.org/Compose/x",  # paths are case-sensitive
        "https://kojipkgs.fedoraproject.org/",  # above the prefix
        "https://kojipkgs.fedoraproject.org/%2563ompose/x",  # %25 is "%": not "compose"
        "http://127.0.0.1:8081/composes/x",
        "http://localhost:8080/composes/x",  # another host name for the same address
        "/mnt/koji/compose-evil/x",
        "/mnt/koji",
    ],
)
def test_look_alikes_do_not_match(location: str) -> None:
    assert not TRUSTED.allows(parse(location))
    with pytest.raises(InputError, match="outside the trusted compose locations"):
        TRUSTED.check(location)


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("https://kojipkgs.fedoraproject.org@evil.example/compose/x", "userinfo"),
        ("https://user:pw@kojipkgs.fedoraproject.org/compose/x", "userinfo"),
        ("https://kojipkgs.fedoraproject.org/compose/../../etc", r"'\.\.'"),
        ("https://kojipkgs.fedoraproject.org/compose/%2e%2E/etc", r"'\.\.'"),
        ("https://kojipkgs.fedoraproject.org/compose/./x", r"'\.'"),
        ("/mnt/koji/compose/../../../etc", r"'\.\.'"),
        ("https://kojipkgs.fedoraproject.org/compose%2F..%2Fetc", "encoded slash"),
        ("https://kojipkgs.fedoraproject.org/compose%5c..", "encoded slash"),
        ("https://kojipkgs.fedoraproject.org\\@evil.example/compose", "backslash"),
        ("https://kojipkgs.fedoraproject.org/compose/x y", "whitespace"),
        ("https://kojipkgs.fedoraproject.org/compose/\tx", "whitespace"),
        ("http://kojipkgs.fedoraproject.org/compose/x", "only to loopback"),
        ("http://2130706433/compose/x", "only to loopback"),  # 127.0.0.1 as a number: a name
        ("ftp://kojipkgs.fedoraproject.org/compose/x", "scheme"),
        ("https://kojipkgs.fedoraproject.org:99999/compose", "port"),
        ("https:///compose/x", "no host"),
        ("https://%6bojipkgs.fedoraproject.org/compose/x", "host name"),
        ("file://evil.example/mnt/koji/compose/x", "another host"),
        ("compose/x", "absolute path"),
    ],
)
def test_ambiguous_forms_are_refused_outright(location: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        parse(location)


def test_hosts_are_compared_in_idna_and_ip_literals_normalised() -> None:
    assert parse("https://BÜCHER.example/x").host == "xn--bcher-kva.example"
    assert parse("http://[::1]:8080/x") == parse("http://[0:0:0:0:0:0:0:1]:8080/x")
    assert str(parse("https://Kojipkgs.FedoraProject.org:443/compose/")) == FEDORA_COMPOSES[:-1]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "[::1]", "localhost"], ids=lambda h: h)
def test_plain_http_is_allowed_to_loopback(host: str) -> None:
    assert parse(f"http://{host}:1/compose").scheme == "http"


def test_a_trusted_prefix_has_no_query_and_is_well_formed() -> None:
    assert prefix_problem(FEDORA_COMPOSES) is None
    assert "query" in (prefix_problem("https://kojipkgs.fedoraproject.org/compose/?x=1") or "")
    assert "loopback" in (prefix_problem("http://kojipkgs.fedoraproject.org/compose/") or "")


def test_including_adds_where_a_fetch_starts() -> None:
    start = "http://127.0.0.1:9/mine/compose"
    extended = TRUSTED.including(start)
    assert extended.allows(parse(f"{start}/metadata/images.json"))
    assert not TRUSTED.allows(parse(start))
    assert not extended.allows(parse("http://127.0.0.1:9/mine"))
