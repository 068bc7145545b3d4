"""Where fedimg may fetch from: trusted compose locations, matched on parsed, normalised URLs.

A compose message can name any location; only composes under ``compose.trusted_locations``
become AMIs, and every redirect met while fetching must land inside them too. Locations are
compared as parsed values, never as strings, so look-alikes do not pass:

- scheme, host and port must be equal: the host lower-cased, IDNA-encoded, without a trailing
  dot; the port explicit or the scheme's default (``https://h`` is ``https://h:443``);
- the path is compared segment by segment (``/compose-evil`` is not under ``/compose``), after
  decoding percent-encoded unreserved characters (``%63ompose`` is ``compose``); empty segments
  do not count;
- refused outright, wherever they appear: userinfo (``https://trusted@elsewhere/``), ``.`` and
  ``..`` segments (also percent-encoded), encoded slashes and backslashes, backslashes,
  whitespace and control characters — forms that servers and clients read differently;
- plain ``http://`` only to loopback; local paths are absolute (``file://`` or ``/…``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from fedimg.errors import InputError

FEDORA_COMPOSES = "https://kojipkgs.fedoraproject.org/compose/"
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT_RE = re.compile(r"%([0-9A-Fa-f]{2})")
# Encodings of characters that would split or escape a segment once a server decodes them.
_REFUSED_ENCODED = frozenset({"2F", "5C", "00"})
_HOST_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


@dataclass(frozen=True)
class Location:
    """A location reduced to what decides trust."""

    scheme: str  # http, https or file
    host: str  # lower-case ASCII; "" for a local path
    port: int  # explicit or the scheme's default; 0 for a local path
    segments: tuple[str, ...]
    query: str = ""

    def within(self, prefix: Location) -> bool:
        """Whether this location is ``prefix`` or under it, segment by segment."""
        return (self.scheme, self.host, self.port) == (
            prefix.scheme,
            prefix.host,
            prefix.port,
        ) and self.segments[: len(prefix.segments)] == prefix.segments

    def __str__(self) -> str:
        path = "/" + "/".join(self.segments)
        if self.scheme == "file":
            return path
        default = DEFAULT_PORTS[self.scheme] == self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}{'' if default else f':{self.port}'}{path}"


def parse(text: str) -> Location:
    """``text`` (an http(s) URL, a file:// URL or an absolute path) normalised for matching.

    Raises InputError naming the reason for every form this module refuses outright.
    """
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InputError(f"{text!r}: contains whitespace or control characters")
    if "\\" in text:
        raise InputError(f"{text}: contains a backslash")
    if "://" not in text:
        if not text.startswith("/"):
            raise InputError(f"{text}: neither an http(s) URL nor an absolute path")
        return Location("file", "", 0, _segments(text, text))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        raise InputError(f"{text}: a URL with userinfo (user@host) is refused")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"{text}: a file URL on another host")
        return Location("file", "", 0, _segments(parts.path, text))
    if scheme not in DEFAULT_PORTS:
        raise InputError(f"{text}: scheme {scheme!r} is not http, https or file")
    host = _host(parts.hostname or "", text)
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise InputError(f"{text}: not a valid port") from None
    if scheme == "http" and not is_loopback(host):
        raise InputError(f"{text}: plain http is allowed only to loopback; use https")
    return Location(scheme, host, port, _segments(parts.path, text), parts.query)


def _host(raw: str, text: str) -> str:
    """The host as compared: lower-case, IDNA (ASCII), no trailing dot; IP literals as written."""
    host = raw.lower().removesuffix(".")
    if not host:
        raise InputError(f"{text}: the URL has no host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InputError(f"{text}: host {raw!r} is not a valid host name") from None
    if not _HOST_RE.match(host):
        raise InputError(f"{text}: host {raw!r} is not a valid host name")
    return host


def _segments(path: str, text: str) -> tuple[str, ...]:
    segments = []
    for raw in path.split("/"):
        segment = _PERCENT_RE.sub(lambda m: _decode_unreserved(m, text), raw)
        if segment in (".", ".."):
            raise InputError(f"{text}: a path with '.' or '..' segments is refused")
        if segment:
            segments.append(segment)
    return tuple(segments)


def _decode_unreserved(match: re.Match[str], text: str) -> str:
    code = match[1].upper()
    if code in _REFUSED_ENCODED:
        raise InputError(f"{text}: an encoded slash, backslash or NUL (%{code}) is refused")
    char = chr(int(code, 16))
    return char if char in _UNRESERVED else f"%{code}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def prefix_problem(text: str) -> str | None:
    """Why ``text`` cannot be a trusted location prefix, or None (for the config check)."""
    try:
        location = parse(text)
    except InputError as e:
        return str(e)
    if location.query or urlsplit(text).fragment:
        return f"{text}: a trusted location has no query or fragment"
    return None


class TrustedLocations:
    """The locations fedimg may fetch from; what a redirect may lead to."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.texts = tuple(prefixes)
        self.prefixes = tuple(parse(p) for p in self.texts)

    def including(self, location: str) -> TrustedLocations:
        """These and ``location`` (where a fetch starts: its caller vouched for it)."""
        return TrustedLocations((*self.texts, location))

    def allows(self, location: Location) -> bool:
        return any(location.within(prefix) for prefix in self.prefixes)

    def check(self, text: str, what: str = "location") -> Location:
        """``text`` parsed, if it is inside; InputError naming it otherwise."""
        location = parse(text)
        if not self.allows(location):
            raise InputError(f"{what} {text} is outside the trusted compose locations")
        return location

    def redirect_guard(self) -> Callable[..., None]:
        """A requests response hook: a redirect leading outside is refused before it is followed.

        requests calls response hooks for every answer, redirects included, before it follows
        one, so nothing is ever requested from outside.
        """

        def guard(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            if not response.is_redirect:
                return
            raw = response.headers["location"].encode("latin1").decode("utf8", "replace")
            target = urljoin(response.url, raw)
            try:
                self.check(target, "redirect target")
            except InputError as e:
                response.close()
                raise InputError(f"{response.url} redirects outside: {e}") from None

        return guard


def guard_session(session: requests.Session, trusted: TrustedLocations) -> None:
    """Makes every redirect ``session`` follows stay inside ``trusted``."""
    session.hooks["response"].append(trusted.redirect_guard())
