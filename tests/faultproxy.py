"""A fault-injecting HTTP/1.1 reverse proxy on loopback, in front of the moto server.

moto never fails; AWS does. Clients pointed at this proxy (``endpoint_url=proxy.url``) go through
the real HTTP path, and a seeded fraction of their requests is answered by the proxy instead:

- ``500``: HTTP 500 InternalError;
- ``503``: HTTP 503 throttling, in the error shape of the request's protocol so botocore parses
  the code: JSON (``X-Amz-Target`` header, e.g. SSM) ``{"__type": "ThrottlingException"}``,
  REST-JSON (``/snapshots…``, EBS direct) header ``x-amzn-ErrorType: ThrottlingException``,
  otherwise EC2 query XML ``<Response><Errors><Error><Code>RequestLimitExceeded``;
- ``reset``: the connection is reset (RST) without an answer;
- ``slow``: the proxy holds the request for a delay (``slow_delay``), watching the client: if
  the client hangs up first (its read timeout *tripped*: counted as ``slow_tripped``), nothing
  is forwarded; otherwise the request is forwarded late;
- ``cut`` (only when asked for, not in the default ``KINDS``): the request is forwarded, so the
  server acts on it, then the answer is cut by a reset half-way through its body: the client
  cannot know whether its request took effect.

All are retried by botocore's standard mode. With ``spare_last_attempt`` (default) the
proxy never faults an attempt the client has announced as its last (``amz-sdk-request:
attempt=N; max=N``): faults only hit requests the client will retry, so a soak test can demand
that every call succeeds without being flaky. Turn it off to see a call fail.

Counts: requests (and per HTTP method), faults by kind, slow faults that tripped the client's
timeout, client connections (keep-alive reuse), the slowest upstream answer, and attempts per
invocation (botocore sends the same ``amz-sdk-invocation-id`` on every attempt of one API call),
so a test can assert there is one retry layer only: attempts per call ≤ ``aws.max_attempts``.

Request bodies are read whole (up to ``MAX_BODY``), upstream responses too, and sent back with a
Content-Length. ``/moto-api/…`` (the stand-in's control calls) is never faulted. ``methods``
limits faults to some HTTP methods and ``max_faults`` to a number; requests are counted per
method, so the proxy also serves non-AWS clients (ResultsDB) as the server-side counter.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import select
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

KINDS = ("500", "503", "reset", "slow")
ALL_KINDS = (*KINDS, "cut")
MAX_BODY = 8 * 1024 * 1024  # PutSnapshotBlock sends 512 KiB
# Seconds. The default outlasts any read timeout under 0.5 s; a test that must trip its client's
# timeout passes a delay beyond it and checks ``slow_tripped``.
SLOW_DELAY = (0.5, 2.0)
UPSTREAM_TIMEOUT = 60.0
# Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the framing we redo.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)


class FaultProxy:
    """The proxy's state and counters; see ``fault_proxy`` for the context manager."""

    def __init__(
        self,
        upstream_url: str,
        *,
        rate: float = 0.1,
        seed: int = 1,
        kinds: Sequence[str] = KINDS,
        spare_last_attempt: bool = True,
        slow_delay: tuple[float, float] = SLOW_DELAY,
        methods: Collection[str] = (),
        max_faults: int | None = None,
    ) -> None:
        unknown = set(kinds) - set(ALL_KINDS)
        if unknown or not kinds:
            raise ValueError(f"kinds: choose from {', '.join(ALL_KINDS)}; got {sorted(kinds)}")
        up = urlsplit(upstream_url)
        if up.scheme != "http" or not up.hostname:
            raise ValueError(f"upstream_url: need http://host:port, got {upstream_url!r}")
        self.upstream = (up.hostname, up.port or 80)
        self.kinds = tuple(kinds)
        self.spare_last_attempt = spare_last_attempt
        self.slow_delay = slow_delay
        self.methods = frozenset(m.upper() for m in methods)
        self.max_faults = max_faults
        self._rate = 0.0
        self.set_rate(rate)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._requests = 0
        self._forwarded = 0
        self._spared = 0
        self._upstream_errors = 0
        self._connections = 0
        self._faults: Counter[str] = Counter()
        self._slow_tripped = 0
        self._slowest_upstream = 0.0
        self._methods: Counter[str] = Counter()
        self._attempts: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def set_rate(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate: must be between 0 and 1, got {rate}")
        self._rate = rate

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "forwarded": self._forwarded,
                "faults": {k: self._faults[k] for k in self.kinds},
                "faulted": sum(self._faults.values()),
                "slow_tripped": self._slow_tripped,
                "slowest_upstream_seconds": self._slowest_upstream,
                "methods": dict(self._methods),
                "spared_last_attempts": self._spared,
                "upstream_errors": self._upstream_errors,
                "connections": self._connections,
                "invocations": len(self._attempts),
                "max_attempts_per_invocation": max(self._attempts.values(), default=0),
            }

    def max_attempts_per_invocation(self) -> int:
        """The most requests seen for one API call (botocore's invocation id)."""
        with self._lock:
            return max(self._attempts.values(), default=0)

    def attempts(self) -> dict[str, int]:
        """Requests seen per invocation id."""
        with self._lock:
            return dict(self._attempts)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets = list(self._open)
        for s in sockets:  # ends idle keep-alive connections, and with them their threads
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    # -- called by the handler threads

    def _connected(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open.add(sock)

    def _disconnected(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _decide(self, method: str, path: str, headers: Any) -> tuple[str, float]:
        """("", 0) to forward untouched, else the fault's kind and (for slow) its delay."""
        invocation = headers.get("amz-sdk-invocation-id", "")
        attempt, most = _attempt_header(headers.get("amz-sdk-request", ""))
        with self._lock:
            self._requests += 1
            self._methods[method] += 1
            if invocation:
                self._attempts[invocation] += 1
            if path.startswith("/moto-api"):
                return "", 0.0
            # Drawn for every request, so sparing does not shift the sequence of later faults.
            hit = self._rng.random() < self._rate
            kind = self._rng.choice(self.kinds)
            delay = self._rng.uniform(*self.slow_delay)
            if not hit or (self.methods and method not in self.methods):
                return "", 0.0
            if self.max_faults is not None and sum(self._faults.values()) >= self.max_faults:
                return "", 0.0
            if self.spare_last_attempt and most and attempt >= most:
                self._spared += 1
                return "", 0.0
            self._faults[kind] += 1
            return kind, delay if kind == "slow" else 0.0

    def _count_tripped(self) -> None:
        with self._lock:
            self._slow_tripped += 1

    def _count_forwarded(self, ok: bool, seconds: float) -> None:
        with self._lock:
            self._slowest_upstream = max(self._slowest_upstream, seconds)
            if ok:
                self._forwarded += 1
            else:
                self._upstream_errors += 1


def _attempt_header(value: str) -> tuple[int, int]:
    """``attempt=2; max=6`` → (2, 6); 0 for what is missing."""
    fields = dict(p.strip().partition("=")[::2] for p in value.split(";") if "=" in p)
    try:
        return int(fields.get("attempt", 0)), int(fields.get("max", 0))
    except ValueError:
        return 0, 0


def error_response(kind: str, path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
    """The error AWS would send for a 500 or a throttling 503, in the request's protocol."""
    throttle = kind == "503"
    status = 503 if throttle else 500
    request_id = str(uuid.uuid4())
    message = "Rate exceeded (fault proxy)" if throttle else "Internal error (fault proxy)"
    out = {"x-amzn-RequestId": request_id}
    if headers.get("x-amz-target"):  # JSON protocol (SSM, STS-JSON, …)
        code = "ThrottlingException" if throttle else "InternalFailure"
        body = json.dumps({"__type": code, "message": message}).encode()
        out["Content-Type"] = "application/x-amz-json-1.1"
    elif path.startswith("/snapshots"):  # EBS direct: REST-JSON
        code = "ThrottlingException" if throttle else "InternalServerException"
        body = json.dumps({"message": message}).encode()
        out |= {"Content-Type": "application/json", "x-amzn-ErrorType": code}
    else:  # EC2 query protocol
        code = "RequestLimitExceeded" if throttle else "InternalError"
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID>"
            "</Response>"
        ).encode()
        out["Content-Type"] = "text/xml;charset=UTF-8"
    return status, out, body


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up mid-answer (read timeout) is expected under fault injection.
        log.debug("fault proxy: connection from %s ended badly", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 30  # idle keep-alive connections end
    server: _Server
    _upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        self.server.proxy._connected(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._disconnected(self.connection)
            if self._upstream is not None:
                self._upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def _handle(self) -> None:
        proxy = self.server.proxy
        try:
            body = self._read_body()
            if body is None:
                self._send(413, {}, b"request body too large")
                self.close_connection = True
                return
            kind, delay = proxy._decide(self.command, self.path, self.headers)
            if kind == "reset":
                self._reset()
                return
            if kind in ("500", "503"):
                self._send(*error_response(kind, self.path, self.headers))
                return
            if kind == "slow" and self._hung_up_within(delay):
                self._reset()
                return
            if kind == "cut":
                self._send(*self._forward(body), cut=True)
                return
            self._send(*self._forward(body))
        except OSError:  # the client went away (e.g. its read timeout during a slow answer)
            self.close_connection = True

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length <= MAX_BODY else None

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        for _ in range(MAX_BODY):  # bounded: at most one chunk per byte
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)
        return None

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        proxy = self.server.proxy
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(*proxy.upstream, timeout=UPSTREAM_TIMEOUT)
        conn = self._upstream
        started = time.monotonic()
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or self.command in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            proxy._count_forwarded(False, time.monotonic() - started)
            return 502, {"Content-Type": "text/plain"}, f"fault proxy: upstream: {e}".encode()
        proxy._count_forwarded(True, time.monotonic() - started)
        headers = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
        if self.command == "HEAD" and resp.getheader("Content-Length"):
            headers["Content-Length"] = str(resp.getheader("Content-Length"))
        return resp.status, headers, data

    def _hung_up_within(self, seconds: float) -> bool:
        """Holds the request for ``seconds``; True (and counted) if the client hangs up first."""
        proxy = self.server.proxy
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if proxy._stopping.is_set():
                return True
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if not readable:
                continue
            try:
                gone = self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:  # reset by the client
                gone = True
            if gone:
                proxy._count_tripped()
                return True
            return False  # the client sent more (not HTTP/1.1 as we know it): stop holding
        return False

    def _send(self, status: int, headers: dict[str, str], body: bytes, cut: bool = False) -> None:
        self.send_response_only(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self._reset()
            return
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _reset(self) -> None:
        """Close with RST: the client sees its connection reset, no answer."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


@contextmanager
def fault_proxy(
    upstream_url: str,
    *,
    rate: float = 0.1,
    seed: int = 1,
    kinds: Sequence[str] = KINDS,
    spare_last_attempt: bool = True,
    slow_delay: tuple[float, float] = SLOW_DELAY,
    methods: Collection[str] = (),
    max_faults: int | None = None,
) -> Iterator[FaultProxy]:
    """A running FaultProxy in front of ``upstream_url``; yields it (``.url`` is where to point)."""
    proxy = FaultProxy(
        upstream_url,
        rate=rate,
        seed=seed,
        kinds=kinds,
        spare_last_attempt=spare_last_attempt,
        slow_delay=slow_delay,
        methods=methods,
        max_faults=max_faults,
    )
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
