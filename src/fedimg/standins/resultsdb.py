"""A stand-in for ResultsDB on loopback: NOT ResultsDB, a small imitation of its v2.0 REST API.

ResultsDB's server is not on PyPI, so tests and the demo report to this instead. It keeps results in
memory and implements only what fedimg and the ``resultsdb-api`` client use, with ResultsDB's rules:

- ``POST /api/v2.0/results`` → 201 and the result. ``outcome`` must be one of :data:`OUTCOMES`
  (upper-cased first, as ResultsDB does); ``testcase`` is a name or ``{name, ref_url}`` and
  ``groups`` are UUIDs or ``{uuid, description, ref_url}``, both created on the fly; ``data``
  values are strings or lists (other scalars become strings); a data key containing ``:`` → 400.
  Keys ResultsDB's parser ignores (the client's ``_auth_token``) are ignored.
- ``GET /api/v2.0/results`` (``page``, ``limit``, ``since=start[,end]``, ``outcome``,
  ``testcases``, ``testcases:like``, ``groups``; any other key filters on ``data``, with ``:like``;
  a comma means OR, several keys mean AND), newest first, as ``{"prev", "next", "data"}``.
- ``GET /api/v2.0/results/latest``: the newest result per testcase under the same filters except
  ``outcome``, which ResultsDB ignores there; ``{"data"}`` only, as ResultsDB answers.
- ``GET /api/v2.0/results/<id>``, ``/groups[/<uuid>]``, ``/testcases[/<name>]``.
- Errors: ``{"message": ...}`` with 400 or 404.

ResultsDB itself has no auth in v2.0; Fedora puts HTTP Basic auth in front of writes, which
``auth=(user, password)`` imitates (401 on a POST without the right credentials).

Test hooks live outside the API, under ``/_standin/``: :func:`fail_next_posts`, :func:`reset`,
:func:`post_count`.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

log = logging.getLogger(__name__)

API_ROOT = "/api/v2.0"
HOOK_ROOT = "/_standin"
OUTCOMES = ("PASSED", "INFO", "FAILED", "NEEDS_INSPECTION")
# ResultsDB's default page size.
QUERY_LIMIT = 20
# Result bodies are a few KiB; anything this large is a client bug.
MAX_BODY_BYTES = 1024 * 1024
# Query keys with a meaning of their own; every other key filters on result data.
RESERVED_KEYS = frozenset(
    {"page", "limit", "since", "outcome", "groups", "testcases", "testcases:like", "_sort"}
    | {"callback", "_"}
)


class BadRequest(Exception):
    """Answered with 400 and the message."""


@dataclass
class _Result:
    id: int
    outcome: str
    testcase: str
    groups: list[str]
    note: str | None
    ref_url: str | None
    data: list[tuple[str, str]]
    submit_time: datetime


@dataclass
class _Group:
    id: int
    uuid: str
    description: str | None = None
    ref_url: str | None = None


@dataclass
class _PlannedFailure:
    status: int
    # True: store the result, then answer with the error (a server that fails after committing).
    store: bool


@dataclass
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: list[_Result] = field(default_factory=list)
    testcases: dict[str, str | None] = field(default_factory=dict)
    groups: dict[str, _Group] = field(default_factory=dict)
    planned_failures: list[_PlannedFailure] = field(default_factory=list)
    posts_seen: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, auth: tuple[str, str] | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = _Store()
        self.auth = auth
        host, port = self.server_address[:2]
        self.origin = f"http://{host!s}:{port}"


# --- request handling -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("resultsdb stand-in: " + format, *args)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = _query(parts.query)
        path = parts.path.rstrip("/")
        try:
            if path == f"{HOOK_ROOT}/stats":
                with self.server.store.lock:
                    posts, count = self.server.store.posts_seen, len(self.server.store.results)
                self._send(200, {"posts": posts, "results": count})
            elif path == f"{API_ROOT}/results":
                self._send(200, self._page(self._select(query, with_outcome=True), query))
            elif path == f"{API_ROOT}/results/latest":
                self._send(200, {"data": [self._result_json(r) for r in self._latest(query)]})
            elif path.startswith(f"{API_ROOT}/results/"):
                self._get_one_result(path.rsplit("/", 1)[1])
            elif path == f"{API_ROOT}/groups":
                self._send(200, self._page(self._select_groups(query), query))
            elif path.startswith(f"{API_ROOT}/groups/"):
                self._get_one_group(path.rsplit("/", 1)[1])
            elif path == f"{API_ROOT}/testcases":
                self._send(200, self._page(self._select_testcases(query), query))
            elif path.startswith(f"{API_ROOT}/testcases/"):
                self._get_one_testcase(path[len(f"{API_ROOT}/testcases/") :])
            else:
                self._send(404, {"message": "Not found"})
        except BadRequest as e:
            self._send(400, {"message": str(e)})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        try:
            body = self._json_body()
            if path == f"{HOOK_ROOT}/fail":
                self._plan_failures(body)
            elif path == f"{HOOK_ROOT}/reset":
                self.server.store = _Store()
                self._send(200, {})
            elif path == f"{API_ROOT}/results":
                with self.server.store.lock:
                    self.server.store.posts_seen += 1
                if self._authorized():
                    self._create_result(body)
            else:
                self._send(404, {"message": "Not found"})
        except BadRequest as e:
            self._send(400, {"message": str(e)})

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json_body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as e:
            raise BadRequest("Malformed Request: bad Content-Length") from e
        if length > MAX_BODY_BYTES:
            raise BadRequest("Malformed Request: body too large")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as e:
            raise BadRequest(f"Malformed Request: not JSON: {e}") from e

    def _authorized(self) -> bool:
        """Imitates Fedora's basic auth in front of writes; answers 401 itself when it fails."""
        if self.server.auth is None:
            return True
        user, password = self.server.auth
        expected = base64.b64encode(f"{user}:{password}".encode()).decode()
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "basic" and hmac.compare_digest(token.strip(), expected):
            return True
        self._send(
            401,
            {"message": "Unauthorized"},
            {"WWW-Authenticate": 'Basic realm="resultsdb"'},
        )
        return False

    # --- writes ---------------------------------------------------------------------------

    def _plan_failures(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("expected {count, status, store}")
        count, status, store = body.get("count", 1), body.get("status", 500), body.get("store")
        failure = _PlannedFailure(status=int(status), store=bool(store))
        with self.server.store.lock:
            self.server.store.planned_failures.extend([failure] * int(count))
        self._send(200, {})

    def _create_result(self, body: Any) -> None:
        store = self.server.store
        with store.lock:
            failure = store.planned_failures.pop(0) if store.planned_failures else None
        if failure is not None and not failure.store:
            self._send(failure.status, {"message": "Internal Server Error (planned by the test)"})
            return
        result = self._store_result(_parse_result(body))
        if failure is not None:
            self._send(failure.status, {"message": "Internal Server Error (after storing)"})
            return
        self._send(201, self._result_json(result))

    def _store_result(self, parsed: _ParsedResult) -> _Result:
        store = self.server.store
        with store.lock:
            name, tc_url = parsed.testcase
            if name not in store.testcases or tc_url is not None:
                store.testcases[name] = tc_url if tc_url is not None else store.testcases.get(name)
            uuids = []
            for uuid, description, ref_url in parsed.groups:
                group = store.groups.setdefault(uuid, _Group(id=len(store.groups) + 1, uuid=uuid))
                group.description = description if description is not None else group.description
                group.ref_url = ref_url if ref_url is not None else group.ref_url
                uuids.append(uuid)
            result = _Result(
                id=len(store.results) + 1,
                outcome=parsed.outcome,
                testcase=name,
                groups=uuids,
                note=parsed.note,
                ref_url=parsed.ref_url,
                data=parsed.data,
                submit_time=parsed.submit_time or _utcnow(),
            )
            store.results.append(result)
        return result

    # --- reads ----------------------------------------------------------------------------

    def _select(self, query: dict[str, list[str]], *, with_outcome: bool) -> list[Any]:
        match = _ResultFilter.from_query(query, with_outcome=with_outcome)
        with self.server.store.lock:
            found = [r for r in self.server.store.results if match(r)]
        found.sort(key=lambda r: (r.submit_time, r.id), reverse=True)
        return [self._result_json(r) for r in found]

    def _latest(self, query: dict[str, list[str]]) -> list[_Result]:
        match = _ResultFilter.from_query(query, with_outcome=False)
        newest: dict[str, _Result] = {}
        with self.server.store.lock:
            for r in self.server.store.results:
                best = newest.get(r.testcase)
                if match(r) and (
                    best is None or (r.submit_time, r.id) > (best.submit_time, best.id)
                ):
                    newest[r.testcase] = r
        return sorted(newest.values(), key=lambda r: (r.submit_time, r.id), reverse=True)

    def _select_groups(self, query: dict[str, list[str]]) -> list[Any]:
        uuids = _split(query.get("uuid"))
        descriptions = _split(query.get("description"))
        likes = [_like(p) for p in _split(query.get("description:like"))]
        with self.server.store.lock:
            groups = sorted(self.server.store.groups.values(), key=lambda g: g.id, reverse=True)
        kept = [
            g
            for g in groups
            if (not uuids or g.uuid in uuids)
            and (not descriptions or g.description in descriptions)
            and (not likes or any(p.fullmatch(g.description or "") for p in likes))
        ]
        return [self._group_json(g) for g in kept]

    def _select_testcases(self, query: dict[str, list[str]]) -> list[Any]:
        names = _split(query.get("name"))
        likes = [_like(p) for p in _split(query.get("name:like"))]
        with self.server.store.lock:
            testcases = sorted(self.server.store.testcases)
        kept = [
            n
            for n in testcases
            if (not names or n in names) and (not likes or any(p.fullmatch(n) for p in likes))
        ]
        return [self._testcase_json(n) for n in kept]

    def _get_one_result(self, raw_id: str) -> None:
        with self.server.store.lock:
            found = [r for r in self.server.store.results if str(r.id) == raw_id]
        if found:
            self._send(200, self._result_json(found[0]))
        else:
            self._send(404, {"message": "Result not found"})

    def _get_one_group(self, uuid: str) -> None:
        with self.server.store.lock:
            group = self.server.store.groups.get(uuid)
        if group:
            self._send(200, self._group_json(group))
        else:
            self._send(404, {"message": "Group not found"})

    def _get_one_testcase(self, name: str) -> None:
        with self.server.store.lock:
            known = name in self.server.store.testcases
        if known:
            self._send(200, self._testcase_json(name))
        else:
            self._send(404, {"message": "Testcase not found"})

    def _page(self, items: list[Any], query: dict[str, list[str]]) -> dict[str, Any]:
        page = _int_param(query, "page", 0)
        limit = _int_param(query, "limit", QUERY_LIMIT)
        start = page * limit
        chunk = items[start : start + limit + 1]

        def url_of(number: int) -> str:
            params = [(k, v) for k, vs in query.items() if k != "page" for v in vs]
            params.append(("page", str(number)))
            path = urlsplit(self.path).path
            return f"{self.server.origin}{path}?{urlencode(params, safe=':,*')}"

        return {
            "prev": url_of(page - 1) if page > 0 else None,
            "next": url_of(page + 1) if len(chunk) > limit else None,
            "data": chunk[:limit],
        }

    # --- JSON shapes, as ResultsDB's v2.0 serializer writes them --------------------------

    def _result_json(self, r: _Result) -> dict[str, Any]:
        data: dict[str, list[str]] = {}
        for key, value in r.data:
            data.setdefault(key, []).append(value)
        return {
            "id": r.id,
            "groups": list(r.groups),
            "testcase": self._testcase_json(r.testcase),
            "submit_time": r.submit_time.isoformat(),
            "outcome": r.outcome,
            "note": r.note,
            "ref_url": r.ref_url,
            "data": data,
            "href": f"{self.server.origin}{API_ROOT}/results/{r.id}",
        }

    def _testcase_json(self, name: str) -> dict[str, Any]:
        # A single dict read: atomic, so callers need not hold the lock.
        return {
            "name": name,
            "ref_url": self.server.store.testcases.get(name),
            "href": f"{self.server.origin}{API_ROOT}/testcases/{quote(name)}",
        }

    def _group_json(self, g: _Group) -> dict[str, Any]:
        with self.server.store.lock:
            count = sum(1 for r in self.server.store.results if g.uuid in r.groups)
        return {
            "uuid": g.uuid,
            "description": g.description,
            "ref_url": g.ref_url,
            "results": f"{self.server.origin}{API_ROOT}/results?groups={g.uuid}",
            "results_count": count,
            "href": f"{self.server.origin}{API_ROOT}/groups/{g.uuid}",
        }


# --- parsing and filtering --------------------------------------------------------------------


@dataclass
class _ParsedResult:
    outcome: str
    testcase: tuple[str, str | None]
    groups: list[tuple[str, str | None, str | None]]
    note: str | None
    ref_url: str | None
    data: list[tuple[str, str]]
    submit_time: datetime | None


def _parse_result(body: Any) -> _ParsedResult:
    if not isinstance(body, dict):
        raise BadRequest("Malformed Request: expected a JSON object")
    outcome = body.get("outcome")
    if not isinstance(outcome, str) or not outcome.strip():
        raise BadRequest("outcome: field required")
    outcome = outcome.strip().upper()
    if outcome not in OUTCOMES:
        raise BadRequest(f"outcome must be one of {', '.join(OUTCOMES)}")
    return _ParsedResult(
        outcome=outcome,
        testcase=_parse_testcase(body.get("testcase")),
        groups=[_parse_group(g) for g in _optional(body, "groups", list) or []],
        note=_optional(body, "note", str),
        ref_url=_optional(body, "ref_url", str),
        data=_parse_data(_optional(body, "data", dict) or {}),
        submit_time=_parse_submit_time(body.get("submit_time")),
    )


def _optional(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise BadRequest(f"{key}: must be a {kind.__name__}")
    return value


def _parse_testcase(value: Any) -> tuple[str, str | None]:
    if isinstance(value, str) and value:
        return value, None
    if isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"]:
        ref_url = value.get("ref_url")
        return value["name"], ref_url if isinstance(ref_url, str) else None
    raise BadRequest("testcase name must be non-empty")


def _parse_group(value: Any) -> tuple[str, str | None, str | None]:
    if isinstance(value, str) and value:
        return value, None, None
    if isinstance(value, dict):
        uuid = value.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise BadRequest("groups: a group object needs a uuid")
        return uuid, value.get("description"), value.get("ref_url")
    raise BadRequest("groups: each group is a UUID or an object")


def _parse_data(data: dict[str, Any]) -> list[tuple[str, str]]:
    bad = sorted(k for k in data if ":" in k)
    if bad:
        raise BadRequest(f"Colon not allowed in key name: {bad!r}")
    pairs = []
    for key, value in data.items():
        if isinstance(value, dict):
            raise BadRequest(f"data.{key}: must be a string or a list of strings")
        for item in value if isinstance(value, list | tuple) else [value]:
            pairs.append((key, item if isinstance(item, str) else str(item)))
    return pairs


def _parse_submit_time(value: Any) -> datetime | None:
    """Milliseconds since the epoch or ``YYYY-MM-DDTHH:MM:SS.ffffff`` (UTC), as ResultsDB takes."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, tz=UTC).replace(tzinfo=None)
    if isinstance(value, str):
        try:
            return _naive_utc(datetime.fromisoformat(value))
        except ValueError:
            pass
    raise BadRequest(f"submit_time: expected milliseconds or an ISO 8601 time, got {value!r}")


@dataclass(frozen=True)
class _ResultFilter:
    since: tuple[datetime | None, datetime | None]
    outcomes: list[str]
    groups: list[str]
    testcases: list[str]
    testcase_likes: list[re.Pattern[str]]
    data_equals: dict[str, list[str]]
    data_likes: dict[str, list[re.Pattern[str]]]

    @classmethod
    def from_query(cls, query: dict[str, list[str]], *, with_outcome: bool) -> _ResultFilter:
        outcomes = [o.upper() for o in _split(query.get("outcome"))]
        unknown = [o for o in outcomes if o not in OUTCOMES]
        if unknown:
            raise BadRequest(f"outcome {unknown[0]!r} not one of {', '.join(OUTCOMES)}")
        data_equals: dict[str, list[str]] = {}
        data_likes: dict[str, list[re.Pattern[str]]] = {}
        for key, values in query.items():
            if key in RESERVED_KEYS:
                continue
            name, _, modifier = key.partition(":")
            if modifier == "like":
                data_likes[name] = [_like(v) for v in _split(values)]
            else:
                data_equals[key] = _split(values)
        return cls(
            since=_parse_since(query.get("since")),
            outcomes=outcomes if with_outcome else [],
            groups=_split(query.get("groups")),
            testcases=_split(query.get("testcases")),
            testcase_likes=[_like(p) for p in _split(query.get("testcases:like"))],
            data_equals=data_equals,
            data_likes=data_likes,
        )

    def __call__(self, r: _Result) -> bool:
        start, end = self.since
        if (start and r.submit_time < start) or (end and r.submit_time > end):
            return False
        if self.outcomes and r.outcome not in self.outcomes:
            return False
        if self.groups and not set(self.groups) & set(r.groups):
            return False
        if (self.testcases or self.testcase_likes) and not (
            r.testcase in self.testcases
            or any(p.fullmatch(r.testcase) for p in self.testcase_likes)
        ):
            return False
        for key, wanted in self.data_equals.items():
            if not any(k == key and v in wanted for k, v in r.data):
                return False
        for key, patterns in self.data_likes.items():
            if not any(k == key and any(p.fullmatch(v) for p in patterns) for k, v in r.data):
                return False
        return True


def _newer(a: _Result, b: _Result) -> bool:
    return (a.submit_time, a.id) > (b.submit_time, b.id)


def _query(raw: str) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        query.setdefault(key, []).append(value)
    return query


def _split(values: list[str] | None) -> list[str]:
    """Comma-separated values of every occurrence of a parameter (a comma means OR)."""
    return [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]


def _like(pattern: str) -> re.Pattern[str]:
    """SQL LIKE as ResultsDB runs it: ``*`` and ``%`` match any run, ``_`` one character."""
    wildcards = {"*": ".*", "%": ".*", "_": "."}
    return re.compile("".join(wildcards.get(c) or re.escape(c) for c in pattern), re.DOTALL)


def _int_param(query: dict[str, list[str]], key: str, default: int) -> int:
    values = query.get(key)
    if not values:
        return default
    try:
        number = int(values[-1])
    except ValueError as e:
        raise BadRequest(f"{key}: must be a whole number") from e
    if number < 0:
        raise BadRequest(f"{key}: must not be negative")
    return number


def _parse_since(values: list[str] | None) -> tuple[datetime | None, datetime | None]:
    if not values:
        return None, None
    parts = values[-1].split(",")
    try:
        times = [_naive_utc(datetime.fromisoformat(p.strip())) for p in parts[:2]]
    except ValueError as e:
        raise BadRequest("'since' parameter not in ISO8601 format") from e
    return times[0], times[1] if len(times) > 1 else None


def _naive_utc(t: datetime) -> datetime:
    """ResultsDB stores naive UTC times; an aware time is converted, a naive one taken as UTC."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# --- running it, and the test hooks -----------------------------------------------------------


@contextmanager
def resultsdb_standin(auth: tuple[str, str] | None = None) -> Iterator[str]:
    """Runs the stand-in on 127.0.0.1 (a free port) in a thread; yields its API URL.

    The URL ends in ``/api/v2.0``, as ``resultsdb.url`` and ``ResultsDBapi`` expect.
    With ``auth``, every POST to the API needs those HTTP Basic credentials.
    """
    server = _Server(auth)
    # A short poll interval: shutdown() waits for it, and tests start many stand-ins.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="resultsdb-standin", daemon=True
    )
    thread.start()
    try:
        yield server.origin + API_ROOT
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def fail_next_posts(url: str, count: int = 1, *, status: int = 500, store: bool = False) -> None:
    """The next ``count`` result POSTs answer ``status`` (with ``store``: after keeping it)."""
    _hook(url, "fail", {"count": count, "status": status, "store": store})


def reset(url: str) -> None:
    """Forgets every result, testcase, group and planned failure."""
    _hook(url, "reset", {})


def post_count(url: str) -> int:
    """Result POSTs the stand-in has received (including those answered with an error)."""
    return int(_hook(url, "stats", None)["posts"])


def _hook(url: str, name: str, body: dict[str, Any] | None) -> Any:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1":
        raise ValueError(f"not a stand-in URL: {url}")
    data = json.dumps(body).encode() if body is not None else None
    # The scheme and host are checked above: plain HTTP to loopback only.
    request = urllib.request.Request(
        f"http://{parts.netloc}{HOOK_ROOT}/{name}",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read() or b"{}")
