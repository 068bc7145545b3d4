"""An image file or URL becomes a verified, decompressed stream of 512 KiB blocks, in one pass.

read → SHA-256 of the bytes as published (verified at the end of the stream) → decompress → blocks.
An xz file of several blocks (as multi-threaded xz writes them) is decompressed block-parallel,
in order (xzblocks.py). Nothing is written to disk. The raw size must be known before the first
block (it sizes the snapshot): it comes from the file size (``.raw``), the xz index (``.raw.xz``),
or a counting pass over the stream (gzip, zstd). Every way an input can be bad ends in an
``InputError`` naming the problem; network trouble ends in a ``TransientError``.

A URL is fetched with TLS verification always on, and follows a redirect only inside the trusted
locations given or under the URL itself (trust.py); a redirect elsewhere is an ``InputError``,
raised before anything is requested there. Plain http is refused except to loopback.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import logging
import lzma
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import requests
import urllib3.exceptions

from fedimg import trust, xzblocks
from fedimg.errors import ChecksumMismatch, ImageTooLarge, InputError, TransientError

BLOCK_SIZE = 524288  # EBS direct's block size; never trust the one an emulator reports
SECTOR = 512
FORMATS = (".raw.xz", ".raw.gz", ".raw.zst", ".raw")
MAX_REDIRECTS = 5

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Block:
    index: int
    data: bytes


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def image_name_of(location: str) -> str:
    """``.../Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64.raw.xz`` → ``Fedora-Cloud-…x86_64``."""
    base = location.rstrip("/").rsplit("/", 1)[-1]
    for suffix in FORMATS:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    raise InputError(f"{base}: not a disk image (expected one of {', '.join(FORMATS)})")


def format_of(location: str) -> str:
    for suffix in FORMATS:
        if location.endswith(suffix):
            return suffix
    raise InputError(f"{location}: not a disk image (expected one of {', '.join(FORMATS)})")


@dataclass(frozen=True)
class DownloadPolicy:
    """How an image URL is read: timeouts, the one retry layer, and the floor under a trickle.

    One retry layer: each kind of request (the HEAD for the size, a range read of the xz index,
    the image body) gets at most ``attempts`` requests, the first included, with a pause of
    ``backoff_seconds`` times 1, 2, 4 … (capped) between them; requests' own adapter retries
    nothing. For the body, an attempt is a request that resumes where the last one broke.

    There is no whole-download deadline: any value would either kill a legitimately slow 600 MB
    download or be too long to matter. A trickle (a server that sends a byte just often enough
    never to trip ``read_timeout``) is caught by a floor instead: if, over ``rate_window`` seconds
    spent waiting on the network (not on the consumer of the blocks), fewer than
    ``min_bytes_per_second`` per second arrived, the connection is dropped and the download
    resumed (an attempt). With
    the defaults a 600 MB image still finishes at 16 KiB/s (in about 10 hours); a link that slow
    is a fault to report, not to wait for.
    """

    connect_timeout: float = 10.0
    # Seconds without a byte on an open connection before it counts as stalled.
    read_timeout: float = 60.0
    attempts: int = 6
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    min_bytes_per_second: int = 16 * 1024
    rate_window: float = 120.0

    def pause(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2 …)."""
        return float(min(self.backoff_seconds * 2 ** (attempt - 1), self.max_backoff_seconds))


# Statuses a later request may not see again; any other 4xx (404, 403, 410 …) is the input's fault.
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
# What a connection, or the urllib3/http.client layers under requests, raise when one breaks.
_NETWORK_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


class _Origin:
    """Where the published bytes come from: a local file or an http(s) URL, read by range."""

    def __init__(
        self,
        location: str,
        policy: DownloadPolicy,
        trusted: Sequence[str] = (),
        ca_bundle: str = "",
    ) -> None:
        self.location = location
        self.policy = policy
        self.is_url = location.startswith(("http://", "https://"))
        self._session: requests.Session | None = None
        # Given with each request: a session-wide value would yield to $REQUESTS_CA_BUNDLE.
        self.verify: str | bool = ca_bundle or True
        self._trusted = trust.TrustedLocations(trusted).including(location) if self.is_url else None
        # Every HTTP request made and every fault met, in order (for tests and logs).
        self.requests = 0
        self.faults: list[str] = []
        if location.startswith("file://"):
            self.location = location[len("file://") :]
        elif not self.is_url and "://" in location:
            raise InputError(f"{location}: only local paths and http(s) URLs are supported")
        if not self.is_url and not os.path.isfile(self.location):
            raise InputError(f"{self.location}: no such file")

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            # requests' default adapter retries nothing: the attempts here are the only layer.
            self._session = requests.Session()
            self._session.max_redirects = MAX_REDIRECTS
            if self._trusted is not None:
                trust.guard_session(self._session, self._trusted)
        return self._session

    def size(self) -> int:
        if not self.is_url:
            return os.path.getsize(self.location)

        def head() -> int:
            with self.send("HEAD", allow_redirects=True) as r:
                length = _content_length(r)
            if length is None:
                raise InputError(f"{self.location}: server gives no Content-Length")
            return length

        return self._retrying(head)

    def tail(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (for reading an xz index)."""
        if not self.is_url:
            with open(self.location, "rb") as f:
                f.seek(offset)
                return f.read(length)
        headers = {"Range": f"bytes={offset}-{offset + length - 1}", **_IDENTITY}

        def read_range() -> bytes:
            with self.send("GET", headers=headers, stream=True) as r:
                if r.status_code != 206:
                    raise _NoRanges
                data = r.content
            if len(data) != length:
                raise TransientError(f"{self.location}: range read gave {len(data)} of {length}")
            return data

        return self._retrying(read_range)

    def open(self) -> _Reader:
        if not self.is_url:
            return open(self.location, "rb")
        return _Download(self)

    def _retrying(self, request: Callable[[], T]) -> T:
        """One small request under the policy's retry layer (body read included)."""
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return request()
            except _NETWORK_ERRORS as e:
                fault = TransientError(f"{self.location}: {_describe(e)}")
            except TransientError as e:
                fault = e
            self.faults.append(str(fault))
            if attempt == self.policy.attempts:
                raise TransientError(f"{fault} (after {attempt} attempts)") from fault
            time.sleep(self.policy.pause(attempt))
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def send(self, method: str, url: str | None = None, **kw: Any) -> requests.Response:
        """One request, no retry: 5xx, 408, 425, 429 and network errors are transient."""
        self.requests += 1
        timeout = (self.policy.connect_timeout, self.policy.read_timeout)
        try:
            r = self.session.request(
                method, url or self.location, timeout=timeout, verify=self.verify, **kw
            )
        except requests.TooManyRedirects:
            raise InputError(f"{self.location}: too many redirects") from None
        except requests.RequestException as e:
            raise TransientError(f"{self.location}: {_describe(e)}") from e
        if r.status_code >= 500 or r.status_code in _TRANSIENT_STATUSES:
            r.close()
            raise TransientError(f"{self.location}: HTTP {r.status_code}")
        if r.status_code >= 400:
            r.close()
            raise InputError(f"{self.location}: HTTP {r.status_code}")
        return r

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


# The bytes as published: a server must not compress them again on the way (ranges count these).
_IDENTITY = {"Accept-Encoding": "identity"}


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class _NoRanges(Exception):
    """The server ignores Range requests."""


class _SourceChanged(Exception):
    """The file on the server is not the one whose first bytes were already handed out."""


class _Download:
    """The body of one GET, resumed where it broke, so that the reader never notices.

    Each read returns the next bytes of the file, never a byte twice, never one skipped. When the
    connection breaks (reset, a stall past the read timeout, a body shorter than its
    Content-Length, a trickle under the policy's floor, 5xx on reopening), the next attempt asks
    for ``Range: bytes=N-`` from the last byte handed out, at the URL the first answer came from
    (after redirects: the same mirror), with ``If-Range`` so a changed file is sent whole instead.
    It accepts a 206 only when its Content-Range starts at N and has the first answer's length,
    and its validators (ETag, Last-Modified) are the first answer's.

    A server that cannot resume (no ``Accept-Ranges: bytes``, or it answers a Range with 200)
    is read again from the start and the first N bytes are dropped: correct because the file is
    the same one (same validators and length), and the SHA-256 of every byte handed out is still
    checked at the end; the cost is reading N bytes again. If the file changed (other validators
    or length) once bytes were handed out, the download fails with a TransientError: a new run
    reads the new file from its start. A server that sends neither validator leaves the length
    and the end-to-end SHA-256 as the only checks. All attempts used up: TransientError. 4xx:
    InputError.
    """

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.policy = origin.policy
        self.url = origin.location
        self.offset = 0  # bytes handed out
        self.attempts = 0
        self.total: int | None = None  # the whole file's length, from the first answer
        self.validators: tuple[str, str] | None = None  # (ETag, Last-Modified)
        self.ranges = False
        self._response: requests.Response | None = None
        self._waited = 0.0  # seconds spent waiting on the network in this rate window
        self._arrived = 0  # bytes that arrived in it

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes (all that is left for ``n < 0``); b"" only at the end of the file."""
        parts: list[bytes] = []
        want = n if n >= 0 else 1 << 62
        while want > 0:
            piece = self._next_piece(min(want, 1 << 20))
            if not piece:
                break
            parts.append(piece)
            want -= len(piece)
        return b"".join(parts)

    def close(self) -> None:
        self._drop()

    def _next_piece(self, want: int) -> bytes:
        # Bounded: every pass that does not return opens a new attempt, and _failed raises once
        # the policy's attempts are used up.
        for _ in range(self.policy.attempts + 1):
            try:
                if self._response is None:
                    self._open()
                piece = self._receive(want)
                if not piece and self.total is not None and self.offset < self.total:
                    raise TransientError(f"body ended at byte {self.offset} of {self.total}")
                self.offset += len(piece)
                return piece
            except TransientError as e:
                self._failed(e)
            except _SourceChanged as e:
                self._drop()
                raise TransientError(f"{self.origin.location}: {e}") from None
        raise AssertionError(
            "unreachable: _failed raises after the last attempt"
        )  # pragma: no cover

    def _failed(self, fault: TransientError) -> None:
        self._drop()
        self.origin.faults.append(str(fault))
        log.info(
            "%s: attempt %d/%d at byte %d: %s",
            self.origin.location,
            self.attempts,
            self.policy.attempts,
            self.offset,
            fault,
        )
        if self.attempts >= self.policy.attempts:
            raise TransientError(
                f"{self.origin.location}: download failed at byte {self.offset} after "
                f"{self.attempts} attempts: {fault}"
            ) from fault
        time.sleep(self.policy.pause(self.attempts))

    def _open(self) -> None:
        self.attempts += 1
        self._waited, self._arrived = 0.0, 0
        headers = dict(_IDENTITY)
        resuming = self.offset > 0 and self.ranges
        if resuming:
            headers["Range"] = f"bytes={self.offset}-"
            headers |= self._if_range()
        r = self.origin.send("GET", self.url, headers=headers, stream=True)
        self._response = r
        if r.status_code == 206 and resuming:
            self._check_resumed(r)
        elif r.status_code == 200:
            self._check_whole(r)
            self._discard(self.offset)
        else:
            raise TransientError(f"unexpected HTTP {r.status_code} to a download")

    def _if_range(self) -> dict[str, str]:
        """If-Range takes a strong validator: an ETag that is not weak, else the date."""
        assert self.validators is not None
        etag, modified = self.validators
        if etag and not etag.startswith("W/"):
            return {"If-Range": etag}
        return {"If-Range": modified} if modified else {}

    def _check_resumed(self, r: requests.Response) -> None:
        assert self.total is not None  # ranges are used only when the length is known
        expected = f"bytes {self.offset}-{self.total - 1}/{self.total}"
        got = r.headers.get("Content-Range", "").strip()
        if got != expected:
            self.ranges = False  # from now on: read from the start, drop what was handed out
            raise TransientError(f"asked for {expected} but got Content-Range {got!r}")
        if not _same_file(self.validators, _validators(r)):
            raise _SourceChanged("the file changed on the server during the download")

    def _check_whole(self, r: requests.Response) -> None:
        length = _content_length(r)
        if self.validators is None or self.offset == 0:
            # Nothing handed out yet: this answer defines the file.
            self.validators, self.total = _validators(r), length
            self.url = r.url or self.url
            accepts = r.headers.get("Accept-Ranges", "").strip().lower() == "bytes"
            self.ranges = accepts and length is not None
            return
        if length != self.total or not _same_file(self.validators, _validators(r)):
            raise _SourceChanged("the file changed on the server during the download")
        self.ranges = False  # it answered a Range with the whole file: it cannot resume

    def _discard(self, count: int) -> None:
        """Reads and drops the first ``count`` bytes of a whole answer (already handed out)."""
        left = count
        while left > 0:
            piece = self._receive(min(left, 1 << 20))
            if not piece:
                raise TransientError(f"body ended at byte {count - left} while skipping to {count}")
            left -= len(piece)

    def _receive(self, want: int) -> bytes:
        """At most one read from the connection, so a trickle is seen between pieces."""
        assert self._response is not None
        started = time.monotonic()
        try:
            piece = self._response.raw.read1(want)
        except _NETWORK_ERRORS as e:
            raise TransientError(_describe(e)) from e
        self._watch_rate(len(piece), time.monotonic() - started)
        return piece

    def _watch_rate(self, arrived: int, waited: float) -> None:
        self._waited += waited
        self._arrived += arrived
        if self._waited < self.policy.rate_window:
            return
        rate = self._arrived / self._waited
        seconds = self._waited
        self._waited, self._arrived = 0.0, 0
        if rate < self.policy.min_bytes_per_second:
            raise TransientError(
                f"trickle: {rate:.0f} bytes/s over {seconds:.1f} s, under the floor of "
                f"{self.policy.min_bytes_per_second}"
            )

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None


def _validators(r: requests.Response) -> tuple[str, str]:
    return r.headers.get("ETag", ""), r.headers.get("Last-Modified", "")


def _same_file(first: tuple[str, str] | None, now: tuple[str, str]) -> bool:
    """Whether no validator the server sends now differs from the one it sent first."""
    return first is not None and all(not b or a == b for a, b in zip(first, now, strict=True))


def _content_length(r: requests.Response) -> int | None:
    try:
        return int(r.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


class _Hashing(io.RawIOBase):
    """Counts and hashes the bytes as published while the decompressor reads them."""

    def __init__(self, inner: _Reader) -> None:
        super().__init__()
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1, /) -> bytes:
        try:
            data = self.inner.read(n)
        except (requests.RequestException, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise TransientError(f"reading the image failed: {e}") from e
        self.sha256.update(data)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


class ImageSource:
    """One pass over an image; use as a context manager, then ``blocks()`` once."""

    def __init__(
        self,
        location: str,
        *,
        sha256: str | None = None,
        max_bytes: int = 32 * 1024**3,
        policy: DownloadPolicy | None = None,
        trusted: Sequence[str] = (),
        ca_bundle: str = "",
        decompress_threads: int | None = None,
    ) -> None:
        """``trusted``: where redirects may lead besides under ``location``; ``ca_bundle``: a PEM
        file of CA certificates ("": the system's); ``decompress_threads``: at most this many
        threads decode a multi-block xz file (None: the usable cores, at most 4)."""
        self.location = location
        self.format = format_of(location)
        self.image_name = image_name_of(location)
        self.expected_sha256 = sha256.lower() if sha256 else None
        if self.expected_sha256 is not None and not _is_hex64(self.expected_sha256):
            raise InputError(f"--sha256: {sha256!r} is not a SHA-256 hex digest")
        self.max_bytes = max_bytes
        self._origin = _Origin(location, policy or DownloadPolicy(), trusted, ca_bundle)
        self._hashing: _Hashing | None = None
        self._raw_size: int | None = None
        self._xz_layout: xzblocks.XzLayout | None = None
        self._threads_wanted = decompress_threads
        self.raw_bytes = 0

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._origin.close()

    @property
    def http_requests(self) -> int:
        """HTTP requests made so far, retries and resumes included (0 for a local file)."""
        return self._origin.requests

    @property
    def faults(self) -> list[str]:
        """Each network fault a later attempt got past, in order (the last one may have won)."""
        return list(self._origin.faults)

    @property
    def bytes_read(self) -> int:
        """Bytes of the published file read so far."""
        return self._hashing.count if self._hashing else 0

    @property
    def decompress_threads(self) -> int:
        """Threads that decompress this image: more than 1 only for an xz file of several
        blocks whose layout could be read (from the file, or by HTTP range requests)."""
        _ = self.raw_size
        return self._xz_plan().threads

    @property
    def raw_size(self) -> int:
        """Decompressed size in bytes, validated as a disk image, before any block is read."""
        if self._raw_size is None:
            size = self._declared_raw_size()
            if size is None:
                size = self._count_raw_bytes()
            _check_disk_size(self.location, size, self.max_bytes)
            self._raw_size = size
        return self._raw_size

    def blocks(self) -> Iterator[Block]:
        """Every 512 KiB block that is not all zeros, in order; verifies size and checksum."""
        expected = self.raw_size
        self._hashing = _Hashing(self._origin.open())
        stream = self._decompressor(self._hashing)
        try:
            index = 0
            while True:
                data = self._read_block(stream)
                if not data:
                    break
                self.raw_bytes += len(data)
                if self.raw_bytes > expected:
                    raise ImageTooLarge(
                        f"{self.location}: decompresses to more than the {expected} bytes declared"
                    )
                if len(data) < BLOCK_SIZE:
                    data = data + bytes(BLOCK_SIZE - len(data))
                if data != _ZERO_BLOCK:
                    yield Block(index, data)
                index += 1
        finally:
            stream.close()
        if self.raw_bytes != expected:
            raise InputError(
                f"{self.location}: decompressed to {self.raw_bytes} bytes, expected {expected}"
            )
        self.verify_checksum()

    def verify_checksum(self) -> None:
        assert self._hashing is not None
        actual = self._hashing.sha256.hexdigest()
        if self.expected_sha256 and actual != self.expected_sha256:
            raise ChecksumMismatch(
                f"{self.location}: SHA-256 is {actual}, expected {self.expected_sha256}"
            )

    def _read_block(self, stream: _Reader) -> bytes:
        try:
            return stream.read(BLOCK_SIZE)
        except lzma.LZMAError as e:
            raise InputError(f"{self.location}: corrupt xz data: {e}") from e
        except EOFError as e:
            raise InputError(f"{self.location}: truncated archive: {e}") from e
        except (gzip.BadGzipFile, zlib.error) as e:
            raise InputError(f"{self.location}: corrupt gzip data: {e}") from e
        except _ZstdError as e:
            raise InputError(f"{self.location}: corrupt zstd data: {e}") from e

    def _decompressor(self, raw: _Hashing) -> _Reader:
        # Buffered so that every read but the last returns a whole block.
        if self.format == ".raw.xz":
            plan = self._xz_plan()
            if plan.threads > 1:
                assert self._xz_layout is not None
                return xzblocks.ParallelXzReader(raw, self._xz_layout, plan, BLOCK_SIZE)
            return xzblocks.SequentialXzReader(raw)
        if self.format == ".raw.gz":
            return gzip.GzipFile(fileobj=raw, mode="rb")
        if self.format == ".raw.zst":
            return io.BufferedReader(_zstd_reader(raw), BLOCK_SIZE)
        return io.BufferedReader(raw, BLOCK_SIZE)

    def _declared_raw_size(self) -> int | None:
        if self.format == ".raw":
            return self._origin.size()
        try:
            if self.format == ".raw.xz":
                o = self._origin
                self._xz_layout = xzblocks.read_layout(o.size(), o.tail, o.location)
                return self._xz_layout.uncompressed
        except _NoRanges:
            return None
        # gzip's ISIZE is modulo 4 GiB and a zstd header declares one frame only: count instead.
        return None

    def _xz_plan(self) -> xzblocks.Plan:
        return xzblocks.plan(self._xz_layout, self._threads_wanted)

    def _count_raw_bytes(self) -> int:
        """A first pass that only counts (used when no header declares the size)."""
        total = 0
        hashing = _Hashing(self._origin.open())
        stream = self._decompressor(hashing)
        try:
            while data := self._read_block(stream):
                total += len(data)
                if total > self.max_bytes:
                    raise ImageTooLarge(
                        f"{self.location}: decompresses to more than {self.max_bytes} bytes"
                    )
        finally:
            stream.close()
        return total


_ZERO_BLOCK = xzblocks.zero_piece(BLOCK_SIZE)  # the object the parallel xz decoder hands out


def _check_disk_size(location: str, size: int, max_bytes: int) -> None:
    if size == 0:
        raise InputError(f"{location}: image is empty (zero bytes)")
    if size % SECTOR:
        raise InputError(f"{location}: {size} bytes is not a whole number of 512-byte sectors")
    if size > max_bytes:
        raise ImageTooLarge(f"{location}: {size} bytes exceeds the maximum of {max_bytes}")


def _is_hex64(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


# --- zstd (optional: needs the zstandard package)


class _ZstdError(Exception):
    pass


def _zstd_reader(raw: _Hashing) -> io.RawIOBase:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - the dev extra installs it
        raise InputError(".raw.zst images need the 'zstandard' package") from None

    class Reader(io.RawIOBase):
        def __init__(self) -> None:
            self._inner = zstandard.ZstdDecompressor().stream_reader(
                raw,  # type: ignore[arg-type]
                read_across_frames=True,
            )

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            try:
                data = self._inner.read(len(b))
            except zstandard.ZstdError as e:
                raise _ZstdError(str(e)) from e
            b[: len(data)] = data
            return len(data)

    return Reader()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
