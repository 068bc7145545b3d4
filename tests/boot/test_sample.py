"""The sample image builder: a cached GPT disk that boots, and its deliberately broken twins."""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path

import pytest

from fedimg.boot import sample


@pytest.fixture(scope="module")
def raw(build_dir: Path) -> Path:
    return sample.sample_image(build_dir)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_second_call_returns_the_cached_image_without_rebuilding(
    build_dir: Path, raw: Path
) -> None:
    before = raw.stat()
    again = sample.sample_image(build_dir)
    after = again.stat()
    assert again == raw
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_cache_folder_is_named_by_the_builder_inputs(raw: Path) -> None:
    kernel_debs = sorted((raw.parent.parent / "kernel").glob("*.deb"))
    assert kernel_debs, "the kernel package is cached beside the images"
    assert raw.parent.name == sample._cache_key(kernel_debs[-1])
    assert (raw.parent / "disk.raw") == raw


def test_image_is_a_gpt_disk_with_bios_boot_code_and_an_ext4_root(raw: Path) -> None:
    data = raw.read_bytes()
    assert len(data) == sample.DISK_BYTES
    assert data[510:512] == b"\x55\xaa"  # protective MBR
    assert data[:440] == sample.GPTMBR.read_bytes()[:440]  # SYSLINUX's GPT boot code
    assert data[512:520] == b"EFI PART"  # primary GPT header
    superblock = data[sample.ROOT_OFFSET + 1024 : sample.ROOT_OFFSET + 2048]
    assert superblock[0x38:0x3A] == b"\x53\xef"  # ext4 magic
    assert superblock[0x78:0x88].rstrip(b"\0") == sample.ROOT_LABEL.encode()
    # The ESP is a FAT16 file system at 1 MiB.
    assert data[sample.ESP_OFFSET + 54 : sample.ESP_OFFSET + 62] == b"FAT16   "


def test_xz_image_decompresses_to_the_raw_image_and_is_cached(build_dir: Path, raw: Path) -> None:
    xz = sample.sample_image_xz(build_dir)
    assert xz.name.endswith(".raw.xz")
    mtime = xz.stat().st_mtime_ns
    assert sample.sample_image_xz(build_dir).stat().st_mtime_ns == mtime
    assert hashlib.sha256(lzma.decompress(xz.read_bytes())).hexdigest() == _sha256(raw)


def test_corrupt_variants_differ_from_the_sample_only_where_damaged(
    build_dir: Path, raw: Path
) -> None:
    variants = sample.corrupt_variants(build_dir)
    good = raw.read_bytes()
    broken_boot = variants["broken-boot-sector"].read_bytes()
    assert broken_boot[:512] == bytes(512)
    assert broken_boot[512:] == good[512:]
    no_root = variants["root-not-mountable"].read_bytes()
    superblock = slice(sample.ROOT_OFFSET + 1024, sample.ROOT_OFFSET + 2048)
    assert no_root[superblock] == bytes(1024)
    assert good[superblock] != bytes(1024)
    assert no_root[: superblock.start] == good[: superblock.start]
    assert no_root[superblock.stop :] == good[superblock.stop :]


def test_qexit_helper_is_a_small_static_x86_64_program() -> None:
    elf = sample.QEXIT_ELF
    assert len(elf) == 416
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # 64-bit
    assert int.from_bytes(elf[18:20], "little") == 62  # EM_X86_64
