"""The local QEMU boot test, on the real sample image and its broken variants (real QEMU, TCG)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from fedimg import config
from fedimg.boot import qemu, sample
from fedimg.boot.ssh import FAILED, PASSED, run_checks, wait_for_ssh
from fedimg.config import Check
from fedimg.errors import BootTestFailed, ConfigError, InputError

USER = sample.SAMPLE_USER
# The target on the project's 2-core machines (measured: ~7 s BIOS, ~12 s UEFI).
TARGET_SECONDS = 30


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _qemu_pids_using(path: Path | str) -> list[int]:
    """PIDs of running processes whose command line names ``path`` (each boot's logs are unique)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline and b"qemu-system" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def image(build_dir: Path) -> Path:
    return sample.sample_image(build_dir)


@pytest.fixture(scope="module")
def bios_result(image: Path, tmp_path_factory: pytest.TempPathFactory) -> qemu.LocalBootResult:
    logs = tmp_path_factory.mktemp("logs")
    return qemu.boot_test(image, "bios", sample.SAMPLE_CHECKS, USER, deadline_s=60, log_dir=logs)


def test_sample_passes_under_bios_within_target(bios_result: qemu.LocalBootResult) -> None:
    assert bios_result.outcome == PASSED, bios_result.reason
    assert [c.outcome for c in bios_result.checks] == [PASSED] * len(sample.SAMPLE_CHECKS)
    assert bios_result.seconds < TARGET_SECONDS
    assert "@@INFO boot-mode=bios" in Path(bios_result.serial_log).read_text(errors="replace")
    assert not _qemu_pids_using(bios_result.serial_log)


def test_sample_passes_under_uefi_within_target(image: Path, tmp_path: Path) -> None:
    result = qemu.boot_test(
        image, "uefi", sample.SAMPLE_CHECKS, USER, deadline_s=60, log_dir=tmp_path
    )
    assert result.outcome == PASSED, result.reason
    assert result.seconds < TARGET_SECONDS
    assert "@@INFO boot-mode=uefi" in Path(result.serial_log).read_text(errors="replace")
    assert not _qemu_pids_using(result.serial_log)


def test_to_json_has_the_agreed_shape(bios_result: qemu.LocalBootResult) -> None:
    payload = bios_result.to_json()
    assert {"image", "firmware", "outcome", "checks", "seconds"} <= payload.keys()
    assert payload["firmware"] == "bios"
    assert payload["outcome"] == "PASSED"
    assert isinstance(payload["seconds"], float)
    assert payload["checks"][0] == {"name": "true", "outcome": "PASSED", "output": ""}
    assert all(set(c) == {"name", "outcome", "output"} for c in payload["checks"])
    assert payload["serial_log"] == bios_result.serial_log


def test_image_is_byte_identical_after_a_guest_overwrote_its_disk(
    image: Path, tmp_path: Path
) -> None:
    before, mtime = _sha256(image), image.stat().st_mtime_ns
    scribble = Check("scribble", "dd if=/dev/zero of=/dev/vda bs=1M count=2 && sync")
    proof = Check(
        "scribbled", "dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\\0' | wc -c", "0"
    )
    result = qemu.boot_test(image, "bios", [scribble, proof], USER, deadline_s=60, log_dir=tmp_path)
    assert result.outcome == PASSED, result.reason
    assert result.checks[1].outcome == PASSED  # the guest saw its own write: sector 0 is zeros
    assert _sha256(image) == before
    assert image.stat().st_mtime_ns == mtime


def test_raw_xz_image_boots_and_is_left_unchanged(build_dir: Path, tmp_path: Path) -> None:
    xz = sample.sample_image_xz(build_dir)
    before = _sha256(xz)
    checks = [Check("true", "/bin/true")]
    result = qemu.boot_test(xz, "bios", checks, USER, deadline_s=60, log_dir=tmp_path)
    assert result.outcome == PASSED, result.reason
    assert _sha256(xz) == before


def test_failing_checks_fail_the_test_and_qemu_is_stopped(image: Path, tmp_path: Path) -> None:
    checks = [
        Check("exit-3", "exit 3"),
        Check("wrong-output", "echo hello", expect="goodbye"),
        Check("right-output", "echo hello", expect="hello"),
    ]
    result = qemu.boot_test(image, "bios", checks, USER, deadline_s=60, log_dir=tmp_path)
    assert result.outcome == FAILED
    assert result.reason == "checks failed: exit-3, wrong-output"
    assert [c.outcome for c in result.checks] == [FAILED, FAILED, PASSED]
    assert not _qemu_pids_using(result.serial_log)


@pytest.mark.parametrize(
    ("variant", "firmware", "sign"),
    [
        ("broken-boot-sector", "bios", "no bootable device"),
        ("broken-boot-sector", "uefi", "UEFI found no bootable disk"),
        ("root-not-mountable", "bios", "cannot-mount-root"),
    ],
)
def test_broken_image_fails_with_reason_and_serial_log(
    build_dir: Path, tmp_path: Path, variant: str, firmware: str, sign: str
) -> None:
    broken = sample.corrupt_variants(build_dir)[variant]
    before = _sha256(broken)
    result = qemu.boot_test(
        broken, firmware, sample.SAMPLE_CHECKS, USER, deadline_s=60, log_dir=tmp_path
    )
    assert result.outcome == FAILED
    assert sign in result.reason
    assert result.checks == []
    assert Path(result.serial_log).is_file()
    assert Path(result.serial_log).parent.parent == tmp_path
    assert result.seconds < 45, "a fatal sign ends the wait before the SSH deadline"
    assert not _qemu_pids_using(result.serial_log)
    assert _sha256(broken) == before


def test_running_guest_answers_ssh_and_qemu_stops_even_on_keyboard_interrupt(
    image: Path, tmp_path: Path
) -> None:
    guest_in = qemu.running_guest(image, "bios", USER, deadline_s=60, log_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt), guest_in as guest:
        assert guest.host == "127.0.0.1"
        assert _qemu_pids_using(guest.serial_log) == [guest.qemu_pid]
        client = wait_for_ssh(guest.host, guest.port, guest.user, guest.pkey, deadline_s=10)
        with client:
            [hostname] = run_checks(client, [Check("hostname", "hostname")], timeout_s=10)
        assert hostname.output.strip() == "fedimg-boottest"
        raise KeyboardInterrupt
    assert not _qemu_pids_using(guest.serial_log)


def test_running_guest_raises_boot_test_failed_when_nothing_boots(
    build_dir: Path, tmp_path: Path
) -> None:
    broken = sample.corrupt_variants(build_dir)["broken-boot-sector"]
    guest_in = qemu.running_guest(broken, "bios", USER, deadline_s=60, log_dir=tmp_path)
    with pytest.raises(BootTestFailed, match="no bootable device"), guest_in:
        pytest.fail("a guest that cannot boot must not be yielded")
    assert not _qemu_pids_using(tmp_path)


def test_qemu_that_cannot_start_needs_inspection(image: Path, tmp_path: Path) -> None:
    result = qemu.boot_test(
        image,
        "bios",
        [Check("true", "/bin/true")],
        USER,
        deadline_s=30,
        log_dir=tmp_path,
        accel=("-accel", "no-such-accelerator"),
    )
    assert result.outcome == qemu.NEEDS_INSPECTION
    assert result.reason.startswith("QEMU exited with status 1")
    assert not _qemu_pids_using(result.serial_log)


def test_missing_image_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such image file"):
        qemu.boot_test(tmp_path / "absent.raw", "bios", [], USER)


def test_accelerator_can_be_forced_and_otherwise_probes_in_bounded_time(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "_kvm_probes", {})
    monkeypatch.setenv(qemu.ACCEL_ENV, "tcg")
    assert qemu.accelerator(image) == qemu.TCG
    monkeypatch.setenv(qemu.ACCEL_ENV, "fast")
    with pytest.raises(ConfigError, match="kvm or tcg"):
        qemu.accelerator(image)
    monkeypatch.delenv(qemu.ACCEL_ENV)
    assert qemu.accelerator(None) == qemu.TCG  # nothing has proven KVM yet
    started = time.monotonic()
    chosen = qemu.accelerator(image)
    assert time.monotonic() - started < qemu.KVM_PROBE_TIMEOUT_S + 2 * qemu.STOP_TIMEOUT_S + 5
    assert chosen in (qemu.KVM, qemu.TCG)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert chosen == qemu.TCG
    assert qemu.accelerator(None) == chosen  # the probe's answer is remembered
    assert not _qemu_pids_using("fedimg-kvm-probe-")


def test_test_image_command_prints_json_and_returns_the_exit_status(
    build_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    broken = sample.corrupt_variants(build_dir)["broken-boot-sector"]
    status = qemu.test_image_command(str(broken), "bios", config.TestSettings(), USER, as_json=True)
    assert status == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["outcome"] == FAILED
    assert payload["firmware"] == "bios"
    assert "no bootable device" in payload["reason"]
    # After a failure only the logs folder is left, where the result says.
    (kept,) = tmp_path.iterdir()
    assert Path(payload["serial_log"]).parent == kept
    assert kept.name.startswith("fedimg-boot-")


def test_truncated_xz_is_an_input_error_and_leaves_nothing_behind(
    build_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truncated = tmp_path / "cut.raw.xz"
    truncated.write_bytes(sample.sample_image_xz(build_dir).read_bytes()[:-4096])
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))

    with pytest.raises(InputError, match=r"cut\.raw\.xz: not a valid xz file"):
        qemu.test_image_command(str(truncated), "both", config.TestSettings(), USER, as_json=True)
    assert list(work.iterdir()) == []


def test_an_image_url_is_downloaded_decompressed_and_removed_after(
    image: Path, build_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedimg.standins.samplecompose import serve_directory

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    xz = sample.sample_image_xz(build_dir)
    with serve_directory(xz.parent) as base, qemu._local_image(f"{base}/{xz.name}") as local:
        assert local.read_bytes() == image.read_bytes()
        assert local.stat().st_blocks * 512 < local.stat().st_size  # zeros stay holes
    assert list(tmp_path.iterdir()) == []
