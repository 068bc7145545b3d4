"""Synthetic sparse disk images with a chosen share of non-zero 512 KiB blocks (tests, benchmarks).

Non-zero blocks hold partly compressible data (a run of random bytes, then repeated text), like a
real filesystem, so xz has work to do; which blocks are non-zero is fixed by the seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from fedimg.source import BLOCK_SIZE

_TEXT = b"Fedora cloud image payload: /usr/lib/systemd/system/cloud-init.service\n" * 64


def nonzero_block(rng: random.Random) -> bytes:
    head = rng.randbytes(BLOCK_SIZE // 4)
    tail = (_TEXT * (BLOCK_SIZE // len(_TEXT) + 1))[: BLOCK_SIZE - len(head)]
    return head + tail


def write_sparse_image(path: Path, size: int, nonzero_fraction: float, seed: int = 1) -> list[int]:
    """Writes a sparse raw image; returns the indexes of its non-zero blocks."""
    rng = random.Random(seed)
    blocks = -(-size // BLOCK_SIZE)
    chosen = sorted(rng.sample(range(blocks), round(blocks * nonzero_fraction)))
    with open(path, "wb") as f:
        f.truncate(size)
        for index in chosen:
            data = nonzero_block(rng)
            f.seek(index * BLOCK_SIZE)
            f.write(data[: size - index * BLOCK_SIZE])
    return chosen
