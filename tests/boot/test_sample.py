"""The sample image builder: cached GPT disks that boot (x86_64 and aarch64), and their deliberately
broken twins."""

from __future__ import annotations

import hashlib
import lzma
import os
import subprocess
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
    assert raw.parent.name == sample._cache_key("x86_64", kernel_debs[-1:])
    assert (raw.parent / "disk.raw") == raw


def test_image_is_a_gpt_disk_with_bios_boot_code_and_an_ext4_root(raw: Path) -> None:
    data = raw.read_bytes()
    layout = sample.LAYOUTS["x86_64"]
    assert len(data) == layout.disk_bytes
    assert data[510:512] == b"\x55\xaa"  # protective MBR
    assert data[:440] == sample.GPTMBR.read_bytes()[:440]  # SYSLINUX's GPT boot code
    assert data[512:520] == b"EFI PART"  # primary GPT header
    superblock = data[layout.root_offset + 1024 : layout.root_offset + 2048]
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
    root_offset = sample.LAYOUTS["x86_64"].root_offset
    superblock = slice(root_offset + 1024, root_offset + 2048)
    assert no_root[superblock] == bytes(1024)
    assert good[superblock] != bytes(1024)
    assert no_root[: superblock.start] == good[: superblock.start]
    assert no_root[superblock.stop :] == good[superblock.stop :]


def test_qexit_helper_is_a_small_static_x86_64_program() -> None:
    elf = sample.QEXIT_ELF
    assert len(elf) == 416
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # 64-bit
    assert int.from_bytes(elf[18:20], "little") == 62  # EM_X86_64


@pytest.fixture(scope="module")
def aarch64_raw(build_dir: Path) -> Path:
    return sample.sample_image(build_dir, "aarch64")


def _esp_file(raw: Path, path: str) -> bytes:
    esp = f"{raw}@@{sample.ESP_OFFSET}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(
        ["mtype", "-i", esp, path], capture_output=True, check=True, env=env, timeout=30
    ).stdout


def test_aarch64_image_is_cached_by_its_arm64_packages(build_dir: Path, aarch64_raw: Path) -> None:
    before = aarch64_raw.stat()
    assert sample.sample_image(build_dir, "aarch64") == aarch64_raw
    assert aarch64_raw.stat().st_mtime_ns == before.st_mtime_ns
    cache = aarch64_raw.parent.parent / "arm64"
    debs = [cache / name for name in (cache / sample.ARM64_MANIFEST).read_text().split()]
    assert all(d.name.endswith("_arm64.deb") and d.exists() for d in debs)
    assert {"busybox-static", "dropbear-bin", "systemd-boot-efi", "libc6"} <= {
        d.name.split("_")[0] for d in debs
    }
    assert aarch64_raw.parent.name == sample._cache_key("aarch64", debs)


def test_aarch64_image_boots_systemd_boot_from_its_esp(aarch64_raw: Path) -> None:
    data = aarch64_raw.read_bytes()
    layout = sample.LAYOUTS["aarch64"]
    assert len(data) == layout.disk_bytes
    assert data[:440] == bytes(440)  # no BIOS boot code: aarch64 boots only with UEFI
    assert data[512:520] == b"EFI PART"
    assert data[sample.ESP_OFFSET + 54 : sample.ESP_OFFSET + 62] == b"FAT16   "
    superblock = data[layout.root_offset + 1024 : layout.root_offset + 2048]
    assert superblock[0x38:0x3A] == b"\x53\xef"
    loader = _esp_file(aarch64_raw, "::/EFI/BOOT/BOOTAA64.EFI")
    assert loader[:2] == b"MZ"  # a PE image
    pe = int.from_bytes(loader[0x3C:0x40], "little")
    assert int.from_bytes(loader[pe + 4 : pe + 6], "little") == 0xAA64  # IMAGE_FILE_MACHINE_ARM64
    entry = _esp_file(aarch64_raw, "::/loader/entries/fedimg-sample.conf").decode()
    assert f"options {sample.kernel_cmdline('aarch64')}" in entry
    assert "console=ttyAMA0" in entry
    kernel = _esp_file(aarch64_raw, "::/vmlinuz")
    assert kernel[0x38:0x3C] == b"ARM\x64"  # the arm64 Image header's magic


def test_aarch64_twins_are_damaged_where_the_x86_64_ones_are(
    build_dir: Path, aarch64_raw: Path
) -> None:
    variants = sample.corrupt_variants(build_dir, "aarch64")
    assert set(variants) == set(sample.corrupt_variants(build_dir))
    assert all(v.parent == aarch64_raw.parent for v in variants.values())
    assert variants["broken-boot-sector"].read_bytes()[:512] == bytes(512)
    root = sample.LAYOUTS["aarch64"].root_offset
    no_root = variants["root-not-mountable"].read_bytes()
    assert no_root[root + 1024 : root + 2048] == bytes(1024)
