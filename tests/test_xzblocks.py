from __future__ import annotations

import io
import lzma
import subprocess
from pathlib import Path

import pytest

from fedimg import xzblocks
from fedimg.errors import InputError
from fedimg.source import BLOCK_SIZE, ImageSource, sha256_file
from fedimg.standins.synthetic import write_sparse_image

SIZE = 24 * BLOCK_SIZE + 3 * 512  # the last 512 KiB block is partial
MiB = 1024**2


def xz_tool(raw: Path, target: Path, block_size: str) -> Path:
    """``raw`` compressed as multi-threaded xz writes it: independent blocks, sizes in the index."""
    with open(target, "wb") as out:
        subprocess.run(
            ["xz", "-c", "-0", "-T2", f"--block-size={block_size}", str(raw)],
            stdout=out,
            check=True,
            timeout=60,
        )
    return target


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("xzblocks") / "img.x86_64.raw"
    write_sparse_image(path, SIZE, 0.5)
    return path


@pytest.fixture(scope="module")
def multi(raw: Path) -> Path:
    """Blocks of 1 MiB: two image blocks each, 13 of them."""
    return xz_tool(raw, raw.with_name("multi.x86_64.raw.xz"), "1MiB")


def expected_blocks(data: bytes) -> dict[int, bytes]:
    data += bytes(-len(data) % BLOCK_SIZE)
    blocks = (data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE))
    return {i: b for i, b in enumerate(blocks) if any(b)}


def decode(path: Path, threads: int) -> tuple[dict[int, bytes], int]:
    with ImageSource(str(path), sha256=sha256_file(path), decompress_threads=threads) as src:
        return {b.index: b.data for b in src.blocks()}, src.decompress_threads


def layout_of(data: bytes) -> xzblocks.XzLayout:
    return xzblocks.read_layout(len(data), lambda offset, n: data[offset : offset + n], "test")


# Block sizes that cut image blocks in two (300 KiB) and ones that do not (1 MiB).
@pytest.mark.parametrize("block_size", ["1MiB", "300KiB"])
def test_multi_block_xz_decodes_in_parallel_to_the_same_blocks(
    raw: Path, tmp_path: Path, block_size: str
) -> None:
    xz = xz_tool(raw, tmp_path / "m.x86_64.raw.xz", block_size)
    assert layout_of(xz.read_bytes()).block_count > 2
    got, threads = decode(xz, threads=2)
    assert threads == 2
    assert got == expected_blocks(raw.read_bytes())


def test_concatenated_multi_block_streams_with_padding(
    raw: Path, multi: Path, tmp_path: Path
) -> None:
    both = tmp_path / "both.x86_64.raw.xz"
    both.write_bytes(multi.read_bytes() + bytes(8) + multi.read_bytes())
    assert len(layout_of(both.read_bytes()).streams) == 2
    got, threads = decode(both, threads=2)
    assert threads == 2
    assert got == expected_blocks(raw.read_bytes() * 2)


def test_a_single_block_file_takes_the_sequential_path(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = tmp_path / "one.x86_64.raw.xz"
    one.write_bytes(lzma.compress(raw.read_bytes()))

    def refuse(*args: object) -> None:
        raise AssertionError("the parallel decoder was used for one block")

    monkeypatch.setattr(xzblocks, "ParallelXzReader", refuse)
    got, threads = decode(one, threads=4)
    assert threads == 1
    assert got == expected_blocks(raw.read_bytes())


def test_one_block_tail_rebuilds_what_xz_writes(raw: Path) -> None:
    data = lzma.compress(raw.read_bytes()[: 3 * BLOCK_SIZE])
    (stream,) = layout_of(data).streams
    (block,) = stream.blocks
    assert xzblocks.one_block_tail(data[6:8], block) == stream.tail


def corrupt_second_block(multi: Path, tmp_path: Path) -> tuple[Path, int]:
    """A copy of ``multi`` with bytes in the middle of its second block overwritten; returns it
    and the uncompressed offset where that block starts."""
    data = bytearray(multi.read_bytes())
    first, second = layout_of(bytes(data)).streams[0].blocks[:2]
    middle = 12 + first.stored + second.stored // 2
    data[middle : middle + 16] = bytes(b ^ 0x55 for b in data[middle : middle + 16])
    bad = tmp_path / "bad.x86_64.raw.xz"
    bad.write_bytes(bytes(data))
    return bad, first.uncompressed


@pytest.mark.parametrize("threads", [1, 2])
def test_a_corrupt_block_is_the_same_input_error_after_the_blocks_before_it(
    raw: Path, multi: Path, tmp_path: Path, threads: int
) -> None:
    bad, second_starts = corrupt_second_block(multi, tmp_path)
    handed_out = []
    with ImageSource(str(bad), decompress_threads=threads) as src:
        assert src.decompress_threads == threads
        with pytest.raises(InputError, match="corrupt xz data"):
            for block in src.blocks():
                handed_out.append(block.index)
    before = [i for i in expected_blocks(raw.read_bytes()) if i < second_starts // BLOCK_SIZE]
    assert handed_out[: len(before)] == before


@pytest.mark.parametrize("threads", [1, 2])
def test_a_file_cut_short_while_streaming_is_a_truncated_archive(
    multi: Path, tmp_path: Path, threads: int
) -> None:
    xz = tmp_path / "shrinks.x86_64.raw.xz"
    data = multi.read_bytes()
    xz.write_bytes(data)
    with ImageSource(str(xz), decompress_threads=threads) as src:
        assert src.raw_size == SIZE  # the layout is read; then the file loses its second half
        xz.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match="truncated archive"):
            list(src.blocks())


@pytest.mark.parametrize("threads", [1, 2])
def test_a_truncated_file_is_refused_before_any_block(
    multi: Path, tmp_path: Path, threads: int
) -> None:
    cut = tmp_path / "cut.x86_64.raw.xz"
    cut.write_bytes(multi.read_bytes()[:-100])
    with (
        ImageSource(str(cut), decompress_threads=threads) as src,
        pytest.raises(InputError, match="truncated or corrupt xz"),
    ):
        _ = src.raw_size


def test_a_corrupt_index_is_refused_before_any_block(multi: Path, tmp_path: Path) -> None:
    data = bytearray(multi.read_bytes())
    data[-12 - 6] ^= 0xFF  # inside the index, before its CRC32
    bad = tmp_path / "badindex.x86_64.raw.xz"
    bad.write_bytes(bytes(data))
    with ImageSource(str(bad)) as src, pytest.raises(InputError, match="corrupt xz index"):
        _ = src.raw_size


def test_blocks_in_flight_never_exceed_the_plan(multi: Path) -> None:
    data = multi.read_bytes()
    layout = layout_of(data)
    (stream,) = layout.streams
    plan = xzblocks.Plan(threads=2, in_flight=2)
    raw = io.BytesIO(data)  # tell(): how far the reader has read
    reader = xzblocks.ParallelXzReader(raw, layout, plan, BLOCK_SIZE)
    starts, ends, offset, out = [], [], 12, 0
    for block in stream.blocks:
        starts.append(offset)
        offset += block.stored
        out += block.uncompressed
        ends.append(out)
    handed_out, most = 0, 0
    try:
        while piece := reader.read(BLOCK_SIZE):
            handed_out += len(piece)
            read = sum(1 for s in starts if s < raw.tell())
            done = sum(1 for e in ends if e <= handed_out)
            most = max(most, read - done)
    finally:
        reader.close()
    assert handed_out == layout.uncompressed
    assert most == plan.in_flight == reader.peak_in_flight  # reached, never exceeded


def synthetic_layout(block_bytes: int, count: int) -> xzblocks.XzLayout:
    blocks = tuple(xzblocks.XzBlock(1000, block_bytes) for _ in range(count))
    return xzblocks.XzLayout((xzblocks.XzStream(0, blocks, b""),))


@pytest.mark.parametrize(
    ("block_mib", "count", "threads", "expected"),
    [
        (24, 200, 4, xzblocks.Plan(2, 2)),  # Fedora's blocks: the 64 MiB budget holds 2
        (12, 200, 4, xzblocks.Plan(4, 4)),
        (12, 200, 2, xzblocks.Plan(2, 2)),
        (12, 3, 8, xzblocks.Plan(3, 3)),  # no more threads than blocks
        (48, 200, 4, xzblocks.SEQUENTIAL),  # two such blocks do not fit the budget
        (12, 1, 4, xzblocks.SEQUENTIAL),
        (12, 200, 1, xzblocks.SEQUENTIAL),
    ],
)
def test_plan_keeps_the_decoded_bytes_in_flight_under_the_budget(
    block_mib: int, count: int, threads: int, expected: xzblocks.Plan
) -> None:
    got = xzblocks.plan(synthetic_layout(block_mib * MiB, count), threads)
    assert got == expected
    assert got.in_flight * block_mib * MiB <= xzblocks.DECODED_BUDGET


def test_no_layout_means_sequential() -> None:
    assert xzblocks.plan(None, 4) == xzblocks.SEQUENTIAL


def test_an_index_claiming_huge_stored_blocks_means_sequential() -> None:
    # Stored bytes are held in memory too: a block can not be read whole past the budget.
    blocks = (xzblocks.XzBlock(40 * MiB, MiB), xzblocks.XzBlock(1000, MiB))
    layout = xzblocks.XzLayout((xzblocks.XzStream(0, blocks, b""),))
    assert xzblocks.plan(layout, 4) == xzblocks.SEQUENTIAL
