"""An image file or URL becomes a verified, decompressed stream of 512 KiB blocks, in one pass.

read → SHA-256 of the bytes as published (verified at the end of the stream) → decompress → blocks.
Nothing is written to disk. The raw size must be known before the first block (it sizes the
snapshot): it comes from the file size (``.raw``), the xz index (``.raw.xz``), or a counting
pass over the stream (gzip, zstd). Every way an input can be bad ends in an ``InputError``
naming the problem; network trouble ends in a ``TransientError``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

import requests

from fedimg.errors import ChecksumMismatch, ImageTooLarge, InputError, TransientError

BLOCK_SIZE = 524288  # EBS direct's block size; never trust the one an emulator reports
SECTOR = 512
FORMATS = (".raw.xz", ".raw.gz", ".raw.zst", ".raw")
HTTP_TIMEOUT = (10.0, 60.0)
MAX_REDIRECTS = 5


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


class _Origin:
    """Where the published bytes come from: a local file or an http(s) URL, read by range."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.is_url = location.startswith(("http://", "https://"))
        self._session: requests.Session | None = None
        if location.startswith("file://"):
            self.location = location[len("file://") :]
        elif not self.is_url and "://" in location:
            raise InputError(f"{location}: only local paths and http(s) URLs are supported")
        if not self.is_url and not os.path.isfile(self.location):
            raise InputError(f"{self.location}: no such file")

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
            self._session.max_redirects = MAX_REDIRECTS
        return self._session

    def size(self) -> int:
        if not self.is_url:
            return os.path.getsize(self.location)
        r = self._request("HEAD", allow_redirects=True)
        r.close()
        try:
            return int(r.headers["Content-Length"])
        except (KeyError, ValueError):
            raise InputError(f"{self.location}: server gives no Content-Length") from None

    def tail(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (for reading an xz index)."""
        if not self.is_url:
            with open(self.location, "rb") as f:
                f.seek(offset)
                return f.read(length)
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        r = self._request("GET", headers=headers)
        if r.status_code != 206:
            r.close()
            raise _NoRanges
        return r.content

    def open(self) -> IO[bytes]:
        if not self.is_url:
            return open(self.location, "rb")
        r = self._request("GET", stream=True)
        return r.raw  # type: ignore[return-value]

    def _request(self, method: str, **kw: object) -> requests.Response:
        try:
            r = self.session.request(method, self.location, timeout=HTTP_TIMEOUT, **kw)  # type: ignore[arg-type]
        except requests.TooManyRedirects:
            raise InputError(f"{self.location}: too many redirects") from None
        except requests.RequestException as e:
            raise TransientError(f"{self.location}: {type(e).__name__}: {e}") from e
        if r.status_code >= 500:
            r.close()
            raise TransientError(f"{self.location}: HTTP {r.status_code}")
        if r.status_code >= 400:
            r.close()
            raise InputError(f"{self.location}: HTTP {r.status_code}")
        return r

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class _NoRanges(Exception):
    """The server ignores Range requests."""


class _Hashing(io.RawIOBase):
    """Counts and hashes the bytes as published while the decompressor reads them."""

    def __init__(self, inner: IO[bytes]) -> None:
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
    ) -> None:
        self.location = location
        self.format = format_of(location)
        self.image_name = image_name_of(location)
        self.expected_sha256 = sha256.lower() if sha256 else None
        if self.expected_sha256 is not None and not _is_hex64(self.expected_sha256):
            raise InputError(f"--sha256: {sha256!r} is not a SHA-256 hex digest")
        self.max_bytes = max_bytes
        self._origin = _Origin(location)
        self._hashing: _Hashing | None = None
        self._raw_size: int | None = None
        self.raw_bytes = 0

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._origin.close()

    @property
    def bytes_read(self) -> int:
        """Bytes of the published file read so far."""
        return self._hashing.count if self._hashing else 0

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
            return _XzBlocks(raw)
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
                return xz_uncompressed_size(self._origin)
        except _NoRanges:
            return None
        # gzip's ISIZE is modulo 4 GiB and a zstd header declares one frame only: count instead.
        return None

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


_ZERO_BLOCK = bytes(BLOCK_SIZE)


def _check_disk_size(location: str, size: int, max_bytes: int) -> None:
    if size == 0:
        raise InputError(f"{location}: image is empty (zero bytes)")
    if size % SECTOR:
        raise InputError(f"{location}: {size} bytes is not a whole number of 512-byte sectors")
    if size > max_bytes:
        raise ImageTooLarge(f"{location}: {size} bytes exceeds the maximum of {max_bytes}")


def _is_hex64(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


# --- xz: the uncompressed size is in each stream's index, found from the end of the file.

_XZ_FOOTER_MAGIC = b"YZ"
_XZ_HEADER_MAGIC = b"\xfd7zXZ\x00"


def xz_uncompressed_size(origin: _Origin) -> int:
    """Sum of the uncompressed sizes in the indexes of every stream, walking back from the end."""
    end = origin.size()
    total = 0
    streams = 0
    while end > 0:
        if end < 32:
            raise InputError(f"{origin.location}: truncated xz file")
        footer = origin.tail(end - 12, 12)
        if footer[-2:] != _XZ_FOOTER_MAGIC:
            if footer[-4:] == b"\0\0\0\0" and streams:  # stream padding between streams
                end -= 4
                continue
            raise InputError(f"{origin.location}: truncated or corrupt xz file (no stream footer)")
        index_size = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
        index = origin.tail(end - 12 - index_size, index_size)
        records = _xz_index_records(index, origin.location)
        total += sum(u for _, u in records)
        blocks = sum((p + 3) // 4 * 4 for p, _ in records)
        end -= 12 + index_size + blocks + 12
        if end < 0 or origin.tail(end, 6) != _XZ_HEADER_MAGIC:
            raise InputError(f"{origin.location}: corrupt xz file (index does not match)")
        streams += 1
    return total


def _xz_index_records(index: bytes, location: str) -> list[tuple[int, int]]:
    if not index or index[0] != 0:
        raise InputError(f"{location}: corrupt xz index")
    pos = 1

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while pos < len(index) and shift < 63:
            byte = index[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise InputError(f"{location}: corrupt xz index")

    count = varint()
    if count > len(index):
        raise InputError(f"{location}: corrupt xz index")
    return [(varint(), varint()) for _ in range(count)]


class _XzBlocks:
    """xz decompression that hands out whole blocks.

    lzma.LZMAFile feeds liblzma 8 KiB at a time; with 1 MiB reads and output capped at one block,
    decompression runs at the speed of ``xz -dc`` (measured: 5.4 s vs 7.4 s for 2 GiB). Handles
    concatenated streams and stream padding; truncation raises EOFError as LZMAFile does.
    """

    READ = 1 << 20

    def __init__(self, raw: _Hashing) -> None:
        self.raw = raw
        self.decompressor = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        self.pending = b""  # compressed input not yet given to the decompressor
        self.started = False  # whether the current stream has consumed any input
        self.done = False

    def read(self, n: int = BLOCK_SIZE, /) -> bytes:
        parts: list[bytes] = []
        want = n
        while want and not self.done:
            out = self._decompress(want)
            if out:
                parts.append(out)
                want -= len(out)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _decompress(self, limit: int) -> bytes:
        d = self.decompressor
        if d.eof:
            self._next_stream(d.unused_data)
            return b""
        data = b""
        if d.needs_input:
            data, self.pending = self.pending or self.raw.read(self.READ), b""
            if not data:
                if self.started:
                    raise EOFError("compressed data ended before the end-of-stream marker")
                self.done = True
                return b""
            self.started = True
        return d.decompress(data, max_length=limit)

    def _next_stream(self, rest: bytes) -> None:
        """After a stream: skip zero padding; another stream may follow."""
        rest = rest.lstrip(b"\0")
        while not rest:
            rest = self.raw.read(self.READ)
            if not rest:
                self.done = True
                return
            rest = rest.lstrip(b"\0")
        self.decompressor = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        self.pending, self.started = rest, False

    def close(self) -> None:
        self.raw.close()


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
