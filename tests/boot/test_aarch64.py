"""The aarch64 sample image under qemu-system-aarch64 (virt machine, AAVMF, TCG): a real boot with
checks over SSH, its broken twins, and how the architecture is told from the image.

TCG emulation of arm64 is the slow part of the suite: the good image is booted once for the whole
module (measured here: 12-15 s on the shared 2-core machine), each broken twin once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedimg import config
from fedimg.boot import qemu, sample
from fedimg.boot.ssh import FAILED, PASSED

USER = sample.SAMPLE_USER
ARCH = "aarch64"


def _qemu_pids_using(path: Path | str) -> list[int]:
    """PIDs of running QEMU processes whose command line names ``path``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if str(path).encode() in cmdline and b"qemu-system" in cmdline:
            pids.append(int(entry.name))
    return pids


def _fedimg(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """The real command line, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "fedimg.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"TMPDIR": str(tmp)},
    )


@pytest.fixture(scope="module")
def image(build_dir: Path) -> Path:
    return sample.sample_image(build_dir, ARCH)


@pytest.fixture(scope="module")
def passed(
    build_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, list[dict[str, Any]]]:
    """The one boot of the good image: ``fedimg test-image`` on its .raw.xz with the sample checks,
    no ``--arch`` and the default ``--firmware both``; (exit status, JSON list)."""
    xz = sample.sample_image_xz(build_dir, ARCH)
    settings = config.TestSettings(checks=sample.SAMPLE_CHECKS)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = qemu.test_image_command(
            str(xz), "both", settings, USER, as_json=True, log_dir=tmp_path_factory.mktemp("logs")
        )
    return status, json.loads(out.getvalue())


def test_sample_passes_under_uefi_the_only_firmware_both_means(
    image: Path, passed: tuple[int, list[dict[str, Any]]]
) -> None:
    status, results = passed
    assert status == 0
    [result] = results  # "both" is UEFI alone for aarch64
    assert (result["arch"], result["firmware"], result["outcome"]) == (ARCH, "uefi", PASSED)
    assert [c["name"] for c in result["checks"]] == [c.name for c in sample.SAMPLE_CHECKS]
    assert {c["outcome"] for c in result["checks"]} == {PASSED}
    # The disk that answered is the aarch64 sample: its id is its cache folder's name.
    assert result["checks"][-1]["output"].strip() == image.parent.name


def test_serial_log_shows_the_arm64_kernel_booted_by_uefi(
    passed: tuple[int, list[dict[str, Any]]],
) -> None:
    serial = Path(passed[1][0]["serial_log"]).read_text(errors="replace")
    assert "@@INFO boot-mode=uefi" in serial
    assert "kernel=" in serial and "-cloud-arm64" in serial
    assert "@@MARK sshd-ready" in serial
    assert not _qemu_pids_using(passed[1][0]["serial_log"])


@pytest.mark.parametrize(
    ("variant", "sign"),
    [
        ("broken-boot-sector", "UEFI found no bootable disk"),
        ("root-not-mountable", "cannot-mount-root"),
    ],
)
def test_broken_twin_fails_with_its_reason_and_serial_log(
    build_dir: Path, tmp_path: Path, variant: str, sign: str
) -> None:
    broken = sample.corrupt_variants(build_dir, ARCH)[variant]
    result = qemu.boot_test(
        broken, "uefi", sample.SAMPLE_CHECKS, USER, deadline_s=90, log_dir=tmp_path
    )
    assert (result.outcome, result.arch) == (FAILED, ARCH)
    assert sign in result.reason
    assert result.checks == []
    assert Path(result.serial_log).is_file()
    assert result.seconds < 60, "a fatal sign ends the wait before the SSH deadline"
    assert not _qemu_pids_using(result.serial_log)


def test_architecture_is_read_from_the_efi_loader(build_dir: Path, image: Path) -> None:
    assert qemu.image_arch(image) == ARCH
    assert qemu.image_arch(sample.sample_image(build_dir, "x86_64")) == "x86_64"
    # A lost sector 0 (protective MBR) leaves the GPT, the ESP and so the architecture readable.
    assert qemu.image_arch(sample.corrupt_variants(build_dir, ARCH)["broken-boot-sector"]) == ARCH


def test_an_image_without_gpt_or_efi_loader_is_taken_as_x86_64(tmp_path: Path) -> None:
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(1024 * 1024))
    assert qemu.image_arch(blank) == "x86_64"


def test_bios_for_an_aarch64_image_is_one_error_line(image: Path, tmp_path: Path) -> None:
    r = _fedimg("test-image", str(image), "--firmware", "bios", tmp=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "fedimg: error: aarch64 images boot only with uefi firmware, not bios"
    )
    assert list(tmp_path.iterdir()) == []


def test_arch_option_overrides_what_the_image_says(build_dir: Path, tmp_path: Path) -> None:
    x86_image = sample.sample_image(build_dir, "x86_64")
    r = _fedimg("test-image", str(x86_image), "--arch", ARCH, "--firmware", "bios", tmp=tmp_path)
    assert r.returncode == 1
    assert "fedimg: error: aarch64 images boot only with uefi" in r.stderr


def test_boot_test_with_a_firmware_the_arch_lacks_raises_input_error(image: Path) -> None:
    with pytest.raises(qemu.InputError, match="aarch64 images boot only with uefi"):
        qemu.boot_test(image, "bios", [], USER)
