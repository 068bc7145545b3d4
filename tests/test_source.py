from __future__ import annotations

import gzip
import hashlib
import http.server
import lzma
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from fedimg.errors import ChecksumMismatch, ImageTooLarge, InputError
from fedimg.source import BLOCK_SIZE, ImageSource, image_name_of, sha256_file
from fedimg.standins.synthetic import write_sparse_image

SIZE = 6 * BLOCK_SIZE + 3 * 512  # not a whole number of blocks: the last one is padded


@pytest.fixture
def raw(tmp_path: Path) -> tuple[Path, list[int]]:
    path = tmp_path / "img.x86_64.raw"
    return path, write_sparse_image(path, SIZE, 0.5)


def blocks_of(location: str, **kw: object) -> dict[int, bytes]:
    with ImageSource(location, **kw) as src:  # type: ignore[arg-type]
        return {b.index: b.data for b in src.blocks()}


def expected_blocks(path: Path) -> dict[int, bytes]:
    data = path.read_bytes()
    data += bytes(-len(data) % BLOCK_SIZE)
    out = {}
    for i in range(len(data) // BLOCK_SIZE):
        block = data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
        if any(block):
            out[i] = block
    return out


@pytest.mark.parametrize("fmt", [".raw", ".raw.xz", ".raw.gz", ".raw.zst"])
def test_every_format_yields_the_nonzero_blocks(raw: tuple[Path, list[int]], fmt: str) -> None:
    path, nonzero = raw
    data = path.read_bytes()
    target = path.with_name("img.x86_64" + fmt)
    if fmt == ".raw.xz":
        target.write_bytes(lzma.compress(data))
    elif fmt == ".raw.gz":
        target.write_bytes(gzip.compress(data))
    elif fmt == ".raw.zst":
        import zstandard

        target.write_bytes(zstandard.ZstdCompressor().compress(data))
    got = blocks_of(str(target), sha256=sha256_file(target))
    assert sorted(got) == nonzero
    assert got == expected_blocks(path)
    assert all(len(b) == BLOCK_SIZE for b in got.values())


def test_multi_stream_xz_counts_every_stream(raw: tuple[Path, list[int]], tmp_path: Path) -> None:
    path, _ = raw
    one = lzma.compress(path.read_bytes())
    two = tmp_path / "double.x86_64.raw.xz"
    two.write_bytes(one + one)  # xz concatenation = the raw image twice
    both = tmp_path / "double.raw"
    both.write_bytes(path.read_bytes() * 2)
    with ImageSource(str(two)) as src:
        assert src.raw_size == 2 * SIZE
        assert {b.index: b.data for b in src.blocks()} == expected_blocks(both)


def test_multi_block_xz_from_the_xz_tool(raw: tuple[Path, list[int]]) -> None:
    path, _ = raw
    subprocess.run(["xz", "-k", "-T2", "--block-size=1MiB", str(path)], check=True, timeout=60)
    with ImageSource(str(path) + ".xz") as src:
        assert src.raw_size == SIZE


def test_checksum_mismatch_is_detected(raw: tuple[Path, list[int]]) -> None:
    path, _ = raw
    with pytest.raises(ChecksumMismatch, match="SHA-256 is"):
        blocks_of(str(path), sha256="0" * 64)


def test_checksum_is_of_the_published_bytes(raw: tuple[Path, list[int]], tmp_path: Path) -> None:
    path, _ = raw
    xz = tmp_path / "img.x86_64.raw.xz"
    xz.write_bytes(lzma.compress(path.read_bytes()))
    raw_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ChecksumMismatch):
        blocks_of(str(xz), sha256=raw_digest)


def test_truncated_xz_is_refused_before_any_block(
    raw: tuple[Path, list[int]], tmp_path: Path
) -> None:
    path, _ = raw
    data = lzma.compress(path.read_bytes())
    cut = tmp_path / "cut.x86_64.raw.xz"
    cut.write_bytes(data[: len(data) // 2])
    with ImageSource(str(cut)) as src, pytest.raises(InputError, match="truncated or corrupt xz"):
        _ = src.raw_size


def test_corrupt_xz_payload_is_an_input_error(raw: tuple[Path, list[int]], tmp_path: Path) -> None:
    path, _ = raw
    data = bytearray(lzma.compress(path.read_bytes()))
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    bad = tmp_path / "bad.x86_64.raw.xz"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"corrupt xz|truncated"):
        blocks_of(str(bad))


def test_truncated_gzip_is_an_input_error(raw: tuple[Path, list[int]], tmp_path: Path) -> None:
    path, _ = raw
    data = gzip.compress(path.read_bytes())
    cut = tmp_path / "cut.x86_64.raw.gz"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match=r"truncated|corrupt"):
        blocks_of(str(cut))


@pytest.mark.parametrize(("size", "message"), [(0, "empty"), (1000, "512-byte sectors")])
def test_not_a_disk_image(tmp_path: Path, size: int, message: str) -> None:
    p = tmp_path / "odd.x86_64.raw"
    p.write_bytes(b"x" * size)
    with ImageSource(str(p)) as src, pytest.raises(InputError, match=message):
        _ = src.raw_size


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bomb.x86_64.raw.xz"
    p.write_bytes(lzma.compress(bytes(64 * BLOCK_SIZE)))
    with ImageSource(str(p), max_bytes=8 * BLOCK_SIZE) as src, pytest.raises(ImageTooLarge):
        _ = src.raw_size


def test_gzip_bomb_is_refused_while_counting(tmp_path: Path) -> None:
    p = tmp_path / "bomb.x86_64.raw.gz"
    p.write_bytes(gzip.compress(bytes(64 * BLOCK_SIZE)))
    with ImageSource(str(p), max_bytes=8 * BLOCK_SIZE) as src, pytest.raises(ImageTooLarge):
        _ = src.raw_size


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a disk image"):
        ImageSource(str(tmp_path / "x.qcow2"))
    with pytest.raises(InputError, match="no such file"):
        ImageSource(str(tmp_path / "x.raw.xz"))
    with pytest.raises(InputError, match="only local paths and http"):
        ImageSource("ftp://example/x.raw.xz")
    with pytest.raises(InputError, match="not a SHA-256"):
        ImageSource(str(tmp_path / "x.raw"), sha256="abc")


def test_image_name_strips_the_format() -> None:
    url = (
        "https://host/compose/Cloud/x86_64/images/Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64.raw.xz"
    )
    assert image_name_of(url) == "Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64"


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[str]:
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_source_streams_and_verifies(raw: tuple[Path, list[int]], http_dir: str) -> None:
    path, nonzero = raw
    xz = path.with_name("img.x86_64.raw.xz")
    subprocess.run(["xz", "-k", "-T2", "--block-size=1MiB", str(path)], check=True, timeout=60)
    # SimpleHTTPRequestHandler has no Range support: the size comes from a counting pass, and
    # without the layout the blocks of this multi-block file are decoded one after the other.
    url = f"{http_dir}/{xz.name}"
    with ImageSource(url, sha256=sha256_file(xz), decompress_threads=2) as src:
        assert sorted(b.index for b in src.blocks()) == nonzero
        assert src.decompress_threads == 1


def test_url_404_is_an_input_error(http_dir: str) -> None:
    with (
        ImageSource(f"{http_dir}/missing.x86_64.raw.xz") as src,
        pytest.raises(InputError, match="404"),
    ):
        _ = src.raw_size


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves single byte ranges, as Fedora's mirrors do (http.server alone ignores Range)."""

    requested_ranges: list[str] = []

    def do_GET(self) -> None:
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes="):
            return super().do_GET()
        self.requested_ranges.append(spec)
        path = self.translate_path(self.path)
        data = Path(path).read_bytes()
        start, end = (int(x) for x in spec[len("bytes=") :].split("-"))
        part = data[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Content-Range", f"bytes {start}-{start + len(part) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(part)
        return None

    def log_message(self, *args: object) -> None:
        pass


def test_url_xz_size_comes_from_the_index_by_range_requests(
    raw: tuple[Path, list[int]], tmp_path: Path
) -> None:
    path, _ = raw
    xz = path.with_name("img.x86_64.raw.xz")
    subprocess.run(["xz", "-k", "-T2", "--block-size=1MiB", str(path)], check=True, timeout=60)
    handler = partial(_RangeHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{xz.name}"
        with ImageSource(url, sha256=sha256_file(xz), decompress_threads=2) as src:
            assert src.raw_size == SIZE
            assert _RangeHandler.requested_ranges  # read from the index, no counting pass
            # The blocks arrive over one connection and are decoded two at a time.
            assert src.decompress_threads == 2
            assert {b.index: b.data for b in src.blocks()} == expected_blocks(path)
    finally:
        server.shutdown()
        server.server_close()
