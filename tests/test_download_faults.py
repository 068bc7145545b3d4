"""Image downloads against a server that misbehaves on purpose (tests/flakyserver.py).

Every fault on the download path either is got past by a resume (``Range: bytes=N-`` from the
last byte handed out, checked by the published SHA-256 at the end) or ends, once the attempts
are used up, in a retryable TransientError; only 4xx and a wrong checksum are InputErrors.
"""

from __future__ import annotations

import hashlib
import lzma
import random
import socket
from dataclasses import replace

import pytest
import urllib3.exceptions

from fedimg.errors import ChecksumMismatch, InputError, TransientError
from fedimg.source import BLOCK_SIZE, DownloadPolicy, ImageSource
from tests.flakyserver import Fault, flaky_server

# Fast but real: a short read timeout that a stall really outlasts, almost no backoff.
POLICY = DownloadPolicy(connect_timeout=1.0, read_timeout=0.3, attempts=4, backoff_seconds=0.01)


def _raw_image(blocks: int) -> bytes:
    """Half zero blocks, half pseudo-random ones (so xz cannot shrink them to nothing)."""
    rng = random.Random(blocks)
    return b"".join(
        rng.randbytes(BLOCK_SIZE) if i % 2 else bytes(BLOCK_SIZE) for i in range(blocks)
    )


RAW = _raw_image(6)
XZ = lzma.compress(RAW, preset=0)
SMALL_RAW = RAW[BLOCK_SIZE : BLOCK_SIZE + 64 * 1024]  # 64 KiB, for the slow-rate tests


def read_all(url: str, data: bytes, policy: DownloadPolicy = POLICY) -> ImageSource:
    """Reads every block of ``url``; asserts they are the image's; returns the spent source."""
    sha = hashlib.sha256(data).hexdigest()
    with ImageSource(url, sha256=sha, policy=policy) as src:
        got = b"".join(b.data for b in src.blocks())  # verifies the size and the SHA-256
    raw = RAW if data is XZ else data
    assert got == b"".join(
        raw[i : i + BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0")
        for i in range(0, len(raw), BLOCK_SIZE)
        if any(raw[i : i + BLOCK_SIZE])
    )
    assert src.bytes_read == len(data)  # the hash saw every published byte exactly once
    return src


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "short-body"])
def test_a_cut_download_resumes_from_the_last_byte_handed_out(reset: bool) -> None:
    cut = len(XZ) // 2
    with flaky_server(XZ, [Fault(cut_at=cut, reset=reset)]) as server:
        src = read_all(server.url, XZ)
        first, resumed = server.downloads
    assert first.range == ""
    offset = int(resumed.range.removeprefix("bytes=").removesuffix("-"))
    assert resumed.range == f"bytes={offset}-"
    assert resumed.if_range == '"v1"'  # a changed file would come back whole
    if reset:
        assert 0 < offset <= cut  # an RST may drop what the client had not read yet
    else:
        assert offset == cut  # a clean close delivers everything up to the cut
    assert len(src.faults) == 1


def test_a_stall_longer_than_the_read_timeout_is_cut_and_resumed() -> None:
    stall = 5 * POLICY.read_timeout
    with flaky_server(XZ, [Fault(stall_at=len(XZ) // 3, stall=stall)]) as server:
        src = read_all(server.url, XZ)
        [record] = server.stalls
        _, resumed = server.downloads
    # The client really gave up on its read timeout: not before it, and before the stall ended.
    assert record.client_hung_up
    assert POLICY.read_timeout <= record.seconds < stall
    assert resumed.at - record.started >= POLICY.read_timeout
    assert resumed.range == f"bytes={len(XZ) // 3}-"
    [fault] = src.faults
    assert "ReadTimeoutError" in fault


def test_5xx_answers_are_retried_by_the_one_loop_then_it_succeeds() -> None:
    with flaky_server(XZ, [Fault(status=503), Fault(status=500)]) as server:
        src = read_all(server.url, XZ)
        assert len(server.downloads) == 3  # fedimg's own attempts, no hidden layer
    assert [f.rsplit(" ", 2)[-2:] for f in src.faults] == [["HTTP", "503"], ["HTTP", "500"]]


@pytest.mark.parametrize("advertised", [True, False], ids=["200-to-range", "no-accept-ranges"])
def test_a_server_that_cannot_resume_is_read_again_and_the_read_part_dropped(
    advertised: bool,
) -> None:
    cut = len(RAW) // 2
    script = [Fault(cut_at=cut, reset=False), Fault(ignore_range=True)]
    with flaky_server(RAW, script, name="image.x86_64.raw", ranges=advertised) as server:
        src = read_all(server.url, RAW)  # no byte twice: the checksum and blocks would differ
        _, again = server.downloads
    # Without Accept-Ranges fedimg does not even ask for a range.
    assert again.range == (f"bytes={cut}-" if advertised else "")
    assert len(src.faults) == 1


def test_a_file_changed_after_bytes_were_handed_out_is_a_transient_error() -> None:
    script = [Fault(cut_at=len(XZ) // 2, reset=False), Fault(etag='"v2"')]
    with flaky_server(XZ, script) as server, ImageSource(server.url, policy=POLICY) as src:
        with pytest.raises(TransientError, match="changed on the server") as caught:
            list(src.blocks())
        assert caught.value.retryable
        assert len(server.downloads) == 2  # no attempt left to spend on a file that changed


def test_a_trickle_under_the_floor_is_cut_and_resumed_without_any_read_timeout() -> None:
    policy = replace(POLICY, min_bytes_per_second=50_000, rate_window=0.2)
    trickle = (256, 0.05)  # 5 KB/s; each gap far below the 0.3 s read timeout
    assert trickle[1] < policy.read_timeout
    with flaky_server(SMALL_RAW, [Fault(trickle=trickle)], name="small.x86_64.raw") as server:
        src = read_all(server.url, SMALL_RAW, policy)
        _, resumed = server.downloads
    [fault] = src.faults
    assert fault.startswith("trickle:")
    assert resumed.range.startswith("bytes=")


def test_a_slow_download_above_the_floor_finishes_untouched() -> None:
    policy = replace(POLICY, min_bytes_per_second=50_000, rate_window=0.1)
    slow = (4096, 0.02)  # about 200 KB/s: slow, but above the floor
    with flaky_server(SMALL_RAW, [Fault(trickle=slow)], name="small.x86_64.raw") as server:
        src = read_all(server.url, SMALL_RAW, policy)
        assert len(server.downloads) == 1
    assert src.faults == []


@pytest.mark.parametrize("status", [404, 403, 410])
def test_a_missing_or_forbidden_image_is_an_input_error_at_once(status: int) -> None:
    with (
        flaky_server(XZ, [Fault(status=status)]) as server,
        ImageSource(server.url, policy=POLICY) as src,
    ):
        with pytest.raises(InputError, match=f"HTTP {status}"):
            list(src.blocks())
        assert len(server.downloads) == 1


def test_a_wrong_checksum_after_a_resume_is_still_an_input_error() -> None:
    with (
        flaky_server(XZ, [Fault(cut_at=1000)]) as server,
        ImageSource(server.url, sha256="0" * 64, policy=POLICY) as src,
        pytest.raises(ChecksumMismatch),
    ):
        list(src.blocks())


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        (Fault(cut_at=1000), urllib3.exceptions.ProtocolError),
        (Fault(cut_at=1000, reset=False), urllib3.exceptions.ProtocolError),
        (Fault(stall_at=1000, stall=1.0), urllib3.exceptions.ReadTimeoutError),
        (Fault(status=503), None),
    ],
    ids=["reset", "short-body", "stall", "503"],
)
def test_every_fault_ends_retryable_after_exactly_the_policys_attempts(
    fault: Fault, cause: type[BaseException] | None
) -> None:
    policy = replace(POLICY, attempts=3)
    with flaky_server(XZ, [fault] * 3) as server, ImageSource(server.url, policy=policy) as src:
        with pytest.raises(TransientError, match="after 3 attempts") as caught:
            list(src.blocks())
        assert len(server.downloads) == 3
    assert caught.value.retryable
    last = caught.value.__cause__
    assert isinstance(last, TransientError)
    if cause is not None:
        assert isinstance(last.__cause__, cause)


def test_connection_refused_is_retried_then_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/image.x86_64.raw"
    with ImageSource(url, policy=POLICY) as src:
        with pytest.raises(TransientError, match="ConnectionError") as caught:
            _ = src.raw_size
        assert src.http_requests == POLICY.attempts
    assert caught.value.retryable
