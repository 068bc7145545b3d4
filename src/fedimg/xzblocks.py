"""xz decompression: the file's layout from its indexes, and two decoders that hand out its bytes.

Multi-threaded xz (``xz -T0``; kiwi, which builds Fedora's disk images, runs it so) cuts its
input into independent blocks — 3 times the LZMA2 dictionary by default: 24 MiB at the default
preset 6, 12 MiB at preset 3 — and each stream's index lists every block's stored and
uncompressed size. With the layout read first (from the end of the file, or by HTTP range
requests), the compressed bytes are still read once and in order through the caller's reader
(which hashes them), cut at block boundaries, and each block is decoded on a small thread pool:
liblzma releases the GIL while it works. The bytes come out strictly in order.

Each block is decoded as a one-block xz stream: the stream's own header, the block's stored bytes
verbatim, and an index and footer written here for that one block. liblzma then checks all it
would check in the whole file: the header's CRC32, the block header, whatever filter chain the
block declares, the block's integrity check (CRC32, CRC64 or SHA-256) and its sizes against the
index record. (A raw LZMA2 decoder fed the filters parsed from the block header would leave the
header parsing and the checks to us, and Python has no CRC64.) The file's real indexes and
footers are checked when the layout is read (CRC32s) and compared byte for byte when streamed.

Memory: at most ``Plan.in_flight`` blocks (one per thread) are read and not yet fully handed
out, the oldest one being handed out while the others decode: that keeps every thread busy when
decoding is the bottleneck, and when the consumer is, waiting blocks are what costs memory.
Their sizes together stay under ``DECODED_BUDGET`` (64 MiB): for Fedora's 24 MiB blocks, 2
threads and at most 48 MiB of decoded bytes, plus each thread's liblzma state (about the
dictionary size: 8 MiB at preset 6) and the blocks' compressed bytes. A file with larger blocks,
a single block, or no readable layout is decoded by ``SequentialXzReader`` instead.
"""

from __future__ import annotations

import lzma
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from fedimg.errors import InputError

MiB = 1024**2
MAX_THREADS = 4
DECODED_BUDGET = 64 * MiB  # bytes of all blocks in flight, at most
INPUT_SLICE = MiB  # liblzma is given a block this much at a time: it copies what it cannot use
HEADER_SIZE = FOOTER_SIZE = 12
_HEADER_MAGIC = b"\xfd7zXZ\x00"
_FOOTER_MAGIC = b"YZ"


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


# --- the layout, from the end of the file


@dataclass(frozen=True)
class XzBlock:
    unpadded: int  # block header + compressed data + check, as the index records it
    uncompressed: int

    @property
    def stored(self) -> int:
        """Bytes in the file: the unpadded size rounded up to a multiple of 4."""
        return (self.unpadded + 3) & ~3


@dataclass(frozen=True)
class XzStream:
    offset: int  # of the stream header in the file
    blocks: tuple[XzBlock, ...]
    tail: bytes  # the index and the footer, exactly as in the file

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + sum(b.stored for b in self.blocks) + len(self.tail)

    @property
    def flags(self) -> bytes:
        return self.tail[-4:-2]


@dataclass(frozen=True)
class XzLayout:
    streams: tuple[XzStream, ...]

    @property
    def uncompressed(self) -> int:
        return sum(b.uncompressed for s in self.streams for b in s.blocks)

    @property
    def block_count(self) -> int:
        return sum(len(s.blocks) for s in self.streams)

    @property
    def largest_block(self) -> int:
        """The most bytes one block holds, stored or decoded (an index may lie about either)."""
        sizes = (max(b.stored, b.uncompressed) for s in self.streams for b in s.blocks)
        return max(sizes, default=0)


def read_layout(size: int, tail: Callable[[int, int], bytes], location: str) -> XzLayout:
    """Every stream and block of an xz file of ``size`` bytes, walking back from its end.

    ``tail(offset, length)`` reads bytes of the file (a seek, or an HTTP range request).
    """
    end = size
    streams: list[XzStream] = []
    while end > 0:
        if end < HEADER_SIZE + 8 + FOOTER_SIZE:
            raise InputError(f"{location}: truncated xz file")
        footer = tail(end - FOOTER_SIZE, FOOTER_SIZE)
        if footer[-2:] != _FOOTER_MAGIC:
            if footer[-4:] == b"\0\0\0\0" and streams:  # stream padding between streams
                end -= 4
                continue
            raise InputError(f"{location}: truncated or corrupt xz file (no stream footer)")
        if footer[:4] != _crc32(footer[4:10]):
            raise InputError(f"{location}: corrupt xz stream footer")
        index_size = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
        index = tail(end - FOOTER_SIZE - index_size, index_size)
        blocks = _index_records(index, location)
        start = end - FOOTER_SIZE - index_size - sum(b.stored for b in blocks) - HEADER_SIZE
        if start < 0 or tail(start, len(_HEADER_MAGIC)) != _HEADER_MAGIC:
            raise InputError(f"{location}: corrupt xz file (index does not match)")
        streams.append(XzStream(start, blocks, index + footer))
        end = start
    return XzLayout(tuple(reversed(streams)))


def _index_records(index: bytes, location: str) -> tuple[XzBlock, ...]:
    corrupt = InputError(f"{location}: corrupt xz index")
    if len(index) < 8 or index[0] != 0:
        raise corrupt
    if index[-4:] != _crc32(index[:-4]):
        raise corrupt
    pos = 1

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while pos < len(index) - 4 and shift < 63:
            byte = index[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise corrupt

    count = varint()
    if count > len(index):
        raise corrupt
    return tuple(XzBlock(varint(), varint()) for _ in range(count))


# --- how many threads, how many blocks in flight


@dataclass(frozen=True)
class Plan:
    threads: int  # 1: the sequential decoder
    in_flight: int  # blocks read and not yet fully handed out, at most (0: sequential)


SEQUENTIAL = Plan(threads=1, in_flight=0)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def plan(layout: XzLayout | None, threads: int | None = None) -> Plan:
    """Threads for this layout: ``threads`` (default: the usable cores, at most 4), fewer if
    the budget cannot hold one block per thread."""
    if layout is None or layout.block_count < 2:
        return SEQUENTIAL
    by_memory = DECODED_BUDGET // max(layout.largest_block, 1)
    wanted = threads if threads is not None else min(usable_cores(), MAX_THREADS)
    count = min(wanted, by_memory, layout.block_count)
    return Plan(count, count) if count >= 2 else SEQUENTIAL


# --- the block-parallel decoder


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def one_block_tail(flags: bytes, block: XzBlock) -> bytes:
    """The index and footer of a stream holding only ``block``."""
    index = b"\0" + _varint(1) + _varint(block.unpadded) + _varint(block.uncompressed)
    index += bytes(-len(index) % 4)
    index += _crc32(index)
    footer = struct.pack("<I", len(index) // 4 - 1) + flags
    return index + _crc32(footer) + footer + _FOOTER_MAGIC


def _crc32(data: bytes) -> bytes:
    """As xz stores a CRC32: four bytes, little-endian."""
    return struct.pack("<I", zlib.crc32(data))


def decode_block(header: bytes, stored: bytes, block: XzBlock, piece: int) -> list[bytes]:
    """One block's bytes, in pieces of ``piece`` bytes (the last may be shorter).

    Runs on a pool thread. Pieces that are all zeros are one shared object, so the mostly
    empty blocks of a disk image cost no memory while they wait.
    """
    decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    # Given in parts, never joined: liblzma copies only the rest of a part it cannot use yet.
    view = memoryview(stored)
    slices = (view[i : i + INPUT_SLICE] for i in range(0, len(stored), INPUT_SLICE))
    inputs: Iterator[bytes | memoryview] = iter(
        (header, *slices, one_block_tail(header[6:8], block))
    )
    zeros = zero_piece(piece)
    pieces: list[bytes] = []
    total = 0
    while not decoder.eof:
        data: bytes | memoryview = b""
        if decoder.needs_input:
            data = next(inputs, b"")
            if not data:
                raise EOFError("compressed data ended before the end-of-stream marker")
        out = decoder.decompress(data, max_length=piece)
        total += len(out)
        if total > block.uncompressed:  # liblzma would say so only at the end of the block
            raise lzma.LZMAError("a block decodes to more than its index records")
        if out:
            pieces.append(zeros if out == zeros else out)
    if decoder.unused_data:
        raise lzma.LZMAError("data after the end of a block")
    return pieces


_ZERO_PIECES: dict[int, bytes] = {}


def zero_piece(size: int) -> bytes:
    """The one shared all-zero piece of ``size`` bytes."""
    return _ZERO_PIECES.setdefault(size, bytes(size))


class ParallelXzReader:
    """Reads an xz file of a known layout once, in order, and hands out its decoded bytes.

    ``read(n)`` returns ``n`` bytes (fewer only at the end), the same bytes in the same order
    as the sequential decoder. An error — in a block, or reading the file — is raised when the
    reader reaches the place it belongs, after every byte before it was handed out.
    """

    def __init__(self, raw: Reader, layout: XzLayout, plan: Plan, piece: int) -> None:
        assert plan.threads >= 2 and plan.in_flight >= plan.threads
        self.raw = raw
        self.layout = layout
        self.plan = plan
        self.piece = piece
        self.peak_in_flight = 0  # the most blocks ever read and not yet handed out
        self._pool = ThreadPoolExecutor(plan.threads, thread_name_prefix="fedimg-unxz")
        self._cut = self._cut_blocks()
        self._cut_done = False
        self._queue: deque[Future[list[bytes]]] = deque()
        self._pieces: deque[bytes] = deque()  # of the block being handed out

    def read(self, n: int = -1, /) -> bytes:
        parts: list[bytes] = []
        want = n if n >= 0 else 1 << 62
        while want > 0:
            if not self._pieces:
                if not self._next_block():
                    break
                continue
            part = self._pieces.popleft()
            if len(part) > want:
                self._pieces.appendleft(part[want:])
                part = part[:want]
            parts.append(part)
            want -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        for future in self._queue:
            future.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._cut.close()
        self.raw.close()

    def _next_block(self) -> bool:
        """Tops up the blocks in flight, then takes the oldest one's pieces (or its error)."""
        while len(self._queue) < self.plan.in_flight and not self._cut_done:
            self._queue.append(self._submit_next())
        self.peak_in_flight = max(self.peak_in_flight, len(self._queue))
        if not self._queue:
            return False
        self._pieces.extend(self._queue.popleft().result())
        return True

    def _submit_next(self) -> Future[list[bytes]]:
        try:
            header, stored, block = next(self._cut)
        except Exception as e:  # StopIteration included: raised in its place in the order
            self._cut_done = True
            failed: Future[list[bytes]] = Future()
            if isinstance(e, StopIteration):
                failed.set_result([])
            else:
                failed.set_exception(e)
            return failed
        return self._pool.submit(decode_block, header, stored, block, self.piece)

    def _cut_blocks(self) -> Generator[tuple[bytes, bytes, XzBlock], None, None]:
        """(stream header, stored bytes, index record) of every block, reading the file in order."""
        position = 0
        for stream in self.layout.streams:
            if any(self._read_exactly(stream.offset - position)):
                raise lzma.LZMAError("stream padding is not zeros")
            header = self._read_exactly(HEADER_SIZE)
            if header[:6] != _HEADER_MAGIC or header[8:] != _crc32(header[6:8]):
                raise lzma.LZMAError("corrupt stream header")
            if header[6:8] != stream.flags:
                raise lzma.LZMAError("stream header and footer disagree")
            for block in stream.blocks:
                yield header, self._read_exactly(block.stored), block
            if self._read_exactly(len(stream.tail)) != stream.tail:
                raise lzma.LZMAError("the index read now is not the one read first")
            position = stream.end
        if self.raw.read(1):
            raise lzma.LZMAError("data after the last stream")

    def _read_exactly(self, n: int) -> bytes:
        data = self.raw.read(n)
        while len(data) < n:
            more = self.raw.read(n - len(data))
            if not more:
                raise EOFError("compressed data ended before the end-of-stream marker")
            data += more
        return data


# --- the sequential decoder: any xz file, one thread


class SequentialXzReader:
    """xz decompression that hands out whole blocks.

    lzma.LZMAFile feeds liblzma 8 KiB at a time; with 1 MiB reads and output capped at one block,
    decompression runs at the speed of ``xz -dc`` (measured: 5.4 s vs 7.4 s for 2 GiB). Handles
    concatenated streams and stream padding; truncation raises EOFError as LZMAFile does.
    """

    READ = 1 << 20

    def __init__(self, raw: Reader) -> None:
        self.raw = raw
        self.decompressor = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        self.pending = b""  # compressed input not yet given to the decompressor
        self.started = False  # whether the current stream has consumed any input
        self.done = False

    def read(self, n: int = -1, /) -> bytes:
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
