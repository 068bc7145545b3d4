"""A file server on loopback that misbehaves on purpose, by script, for download fault tests.

It serves one file (``/<name>``) with ETag, Last-Modified, Content-Length and, unless told not
to, ``Accept-Ranges: bytes`` and single byte ranges (``If-Range`` honoured). HEAD and closed
ranges (``bytes=a-b``, how fedimg reads an xz index) are always served well. Every other GET is a
*download*: the next :class:`Fault` of the script says how that one goes wrong; once the script
is used up, downloads go well.

Everything is recorded for the tests to assert: each request (:class:`Seen`), and for a stall,
how long the client waited before it hung up (so a test can prove a stall really outlasted the
client's read timeout rather than merely being slow).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 64 * 1024
# Bound on a stall the client never hangs up on (tests stop well before).
MAX_STALL = 10.0


@dataclass(frozen=True)
class Fault:
    """How one download goes wrong. Offsets are positions in the file, not in the answer."""

    status: int = 0  # answer with this status and no body
    cut_at: int | None = None  # end the body here...
    reset: bool = True  # ... with a reset (RST), else a clean close (a short body)
    stall_at: int | None = None  # send nothing more from here ...
    stall: float = 0.0  # ... for this long, or until the client hangs up
    trickle: tuple[int, float] | None = None  # (bytes, seconds): a piece every so often
    ignore_range: bool = False  # answer a Range with the whole file (200)
    etag: str = ""  # from this download on, the file has this ETag (it "changed")


@dataclass(frozen=True)
class Seen:
    method: str
    range: str
    if_range: str
    at: float  # time.monotonic()


@dataclass
class StallRecord:
    started: float
    seconds: float  # how long the stall lasted
    client_hung_up: bool  # the client closed the connection during the stall


@dataclass
class _State:
    data: bytes
    ranges: bool
    etag: str
    script: list[Fault]
    last_modified: str = field(default_factory=lambda: formatdate(1_700_000_000, usegmt=True))
    seen: list[Seen] = field(default_factory=list)
    stalls: list[StallRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class FlakyServer:
    def __init__(self, state: _State, name: str) -> None:
        self.state = state
        self._server = _Server(state)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/{name}"

    @property
    def downloads(self) -> list[Seen]:
        """The download GETs (not HEAD, not closed ranges), in order."""
        with self.state.lock:
            return [s for s in self.state.seen if s.method == "GET" and _is_download(s.range)]

    @property
    def stalls(self) -> list[StallRecord]:
        with self.state.lock:
            return list(self.state.stalls)


def _is_download(spec: str) -> bool:
    return not spec or spec.endswith("-")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-answer is the point


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._headers(200, len(self.server.state.data), self.server.state.etag)

    def do_GET(self) -> None:
        state = self.server.state
        spec = self.headers.get("Range", "")
        with state.lock:
            state.seen.append(Seen("GET", spec, self.headers.get("If-Range", ""), time.monotonic()))
            fault = state.script.pop(0) if _is_download(spec) and state.script else Fault()
            if fault.etag:
                state.etag = fault.etag
        if fault.status:
            self._headers(fault.status, 0, state.etag)
            return
        start, end = self._range(spec, fault)
        size = len(state.data)
        if (start, end) == (0, size):
            self._headers(200, size, state.etag)
        else:
            self._headers(206, end - start, state.etag, f"bytes {start}-{end - 1}/{size}")
        with suppress(OSError):
            self._body(start, end, fault)

    def _range(self, spec: str, fault: Fault) -> tuple[int, int]:
        state = self.server.state
        size = len(state.data)
        if not spec.startswith("bytes=") or not state.ranges or fault.ignore_range:
            return 0, size
        if_range = self.headers.get("If-Range", "")
        if if_range and if_range not in (state.etag, state.last_modified):
            return 0, size  # RFC 9110 13.1.5: the validator does not match, send it whole
        first, _, last = spec[len("bytes=") :].partition("-")
        return int(first), (int(last) + 1 if last else size)

    def _headers(self, status: int, length: int, etag: str, content_range: str = "") -> None:
        state = self.server.state
        self.send_response_only(status)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", state.last_modified)
        if state.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()

    def _body(self, start: int, end: int, fault: Fault) -> None:
        data = self.server.state.data
        # A mark before the start of a resumed answer hits at once: the same fault again.
        cut, stall = (None if m is None else max(m, start) for m in (fault.cut_at, fault.stall_at))
        piece = fault.trickle[0] if fault.trickle else CHUNK
        pos = start
        while pos < end:
            if pos == cut:
                self._cut(fault.reset)
                return
            if pos == stall:
                self._stall(fault.stall)
                return
            stop = min([end, pos + piece] + [m for m in (cut, stall) if m is not None and m > pos])
            self.wfile.write(data[pos:stop])
            pos = stop
            if fault.trickle:
                time.sleep(fault.trickle[1])

    def _cut(self, reset: bool) -> None:
        self.close_connection = True
        if reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _stall(self, seconds: float) -> None:
        """Sends nothing for ``seconds``, watching for the client to hang up; then closes."""
        state = self.server.state
        started = time.monotonic()
        hung_up = _wait_for_hang_up(self.connection, min(seconds, MAX_STALL), state.stopping)
        with state.lock:
            state.stalls.append(StallRecord(started, time.monotonic() - started, hung_up))
        self._cut(reset=False)


def _wait_for_hang_up(sock: socket.socket, seconds: float, stopping: threading.Event) -> bool:
    """True as soon as the peer closes ``sock``; False after ``seconds`` without that."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not stopping.is_set():
        readable, _, _ = select.select([sock], [], [], min(left, 0.05))
        if readable:
            try:
                return sock.recv(1, socket.MSG_PEEK) == b""
            except OSError:  # reset by the peer: it hung up too
                return True
    return False


@contextmanager
def flaky_server(
    data: bytes,
    script: Sequence[Fault] = (),
    *,
    name: str = "image.x86_64.raw.xz",
    ranges: bool = True,
    etag: str = '"v1"',
) -> Iterator[FlakyServer]:
    """Serves ``data`` as ``/<name>`` until the block ends; downloads follow ``script``."""
    state = _State(data=data, ranges=ranges, etag=etag, script=list(script))
    server = FlakyServer(state, name)
    thread = threading.Thread(
        target=server._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        state.stopping.set()
        server._server.shutdown()
        server._server.server_close()
        thread.join(5)
