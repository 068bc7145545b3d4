"""The local boot test (Autocloud/tunir style): boot an image under QEMU and run checks over SSH.

x86_64 images boot under BIOS (SeaBIOS) or UEFI (OVMF) on the q35 machine; aarch64 images under
UEFI (AAVMF, Debian's qemu-efi-aarch64) on the virt machine, always emulated (TCG): this host is
x86_64, so there is no KVM for them. The architecture is read from the image: the removable-media
loader in its EFI system partition is ``BOOTX64.EFI`` or ``BOOTAA64.EFI``.

The image under test is never written: QEMU runs on a qcow2 overlay backed by it (a ``.raw.xz`` is
first decompressed, sparsely, into the work folder; an http(s) URL is first downloaded, verified and
decompressed the way uploads read it). A NoCloud seed made by ``cloud-localds`` carries a throwaway
SSH key; the guest's port 22 is forwarded to a free loopback port. The serial console and the
firmware's debug console are kept as logs; when the image does not boot, they say why. Nothing is
left behind in the temporary directory except, after a failed or uncertain test, its logs folder,
whose path the result names.

Outcomes: PASSED (SSH answered and every check passed), FAILED (the image is at fault: it did not
boot, or a check failed), NEEDS_INSPECTION (the test itself could not run, e.g. QEMU failed to
start: the image was not judged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import lzma
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import paramiko

from fedimg.boot.ssh import (
    CheckResult,
    SshUnreachable,
    run_checks,
    throwaway_key,
    wait_for_ssh,
)
from fedimg.config import Check, TestSettings
from fedimg.errors import BootTestFailed, ConfigError, InputError, TransientError
from fedimg.outcomes import FAILED, NEEDS_INSPECTION, PASSED

log = logging.getLogger(__name__)

FIRMWARES = ("bios", "uefi")
ARCHES = ("x86_64", "aarch64")
QEMU = "qemu-system-x86_64"
OVMF = Path("/usr/share/ovmf/OVMF.fd")
AAVMF = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")
LOOPBACK = "127.0.0.1"
GUEST_MEMORY_MIB = 1024  # what a Fedora cloud image needs; the sample needs far less
GUEST_CPUS = 2
TCG = ("-accel", "tcg", "-cpu", "qemu64")  # under TCG, qemu64 is faster than -cpu max
KVM = ("-accel", "kvm", "-cpu", "host")
# Measured here: the aarch64 sample's serial self-test takes 8 s as cortex-a57, 18 s as max
# (pointer authentication is slow to emulate), 10 s as max,pauth-impdef=on.
TCG_AARCH64 = ("-accel", "tcg", "-cpu", "cortex-a57")
ACCEL_ENV = "FEDIMG_QEMU_ACCEL"
# The sample's serial self-test ends in ~4 s under TCG and faster under KVM; KVM that has not
# finished it by then hangs (as on the project's machines, where nested KVM stalls in SYSLINUX).
KVM_PROBE_TIMEOUT_S = 15.0
CHECK_TIMEOUT_S = 60.0
# Bound for QEMU to exit after SIGTERM before it gets SIGKILL, and for SIGKILL to take effect.
STOP_TIMEOUT_S = 5.0
TOOL_TIMEOUT_S = 60.0
XZ_MAGIC = b"\xfd7zXZ\x00"
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Machine:
    """How QEMU runs guests of one architecture."""

    qemu: str
    qemu_package: str
    machine: str
    firmwares: tuple[str, ...]
    uefi: Path
    uefi_package: str
    debug_console: bool  # an ISA debug console at 0x402, where SeaBIOS (and OVMF) write their log


MACHINES = {
    "x86_64": Machine(QEMU, "qemu-system-x86", "q35", FIRMWARES, OVMF, "ovmf", True),
    "aarch64": Machine(
        "qemu-system-aarch64",
        "qemu-system-arm",
        "virt",
        ("uefi",),
        AAVMF,
        "qemu-efi-aarch64",
        False,
    ),
}


@dataclass
class LocalBootResult:
    image: str
    firmware: str
    outcome: str  # PASSED, FAILED or NEEDS_INSPECTION
    checks: list[CheckResult]
    seconds: float
    reason: str = ""
    serial_log: str = ""
    arch: str = ""  # "" when the test stopped before the image was read

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "arch": self.arch,
            "firmware": self.firmware,
            "outcome": self.outcome,
            "checks": [asdict(c) for c in self.checks],
            "seconds": round(self.seconds, 1),
            "reason": self.reason,
            "serial_log": self.serial_log,
        }


@dataclass(frozen=True)
class Guest:
    """A booted guest that answers SSH at ``host:port`` as ``user`` with ``pkey``."""

    host: str
    port: int
    user: str
    pkey: paramiko.PKey = field(repr=False)
    serial_log: Path
    qemu_pid: int


class BootInfrastructureError(TransientError):
    """The boot test could not run (a tool is missing, QEMU failed): the image was not judged."""


def boot_test(
    image: Path,
    firmware: str,
    checks: Sequence[Check],
    user: str,
    deadline_s: float = 120,
    log_dir: Path | None = None,
    *,
    accel: Sequence[str] | None = None,
    check_timeout_s: float = CHECK_TIMEOUT_S,
    arch: str | None = None,
) -> LocalBootResult:
    """Boots ``image`` with ``firmware`` ("bios" or "uefi"), waits up to ``deadline_s`` for SSH as
    ``user`` and runs ``checks``. QEMU is stopped before this returns, whatever happened.
    ``arch`` (x86_64 or aarch64) overrides the architecture read from the image.

    The logs are kept in a new folder under ``log_dir``. Without ``log_dir`` they go to a
    temporary folder that is removed after a pass (``serial_log`` is then "") and kept, for
    reading, after a failed or uncertain test.
    """
    started = time.monotonic()
    results: list[CheckResult] = []
    with _log_folder(image, firmware, log_dir) as logs, _prepared(image, firmware, arch) as disk:
        serial_log = logs.path / "serial.log"

        def result(outcome: str, reason: str = "") -> LocalBootResult:
            seconds = time.monotonic() - started
            logs.keep = outcome != PASSED or log_dir is not None
            kept_log = str(serial_log) if logs.keep else ""
            return LocalBootResult(
                str(image), firmware, outcome, results, seconds, reason, kept_log, disk.arch
            )

        try:
            with _booted(disk, firmware, user, deadline_s, logs.path, accel) as (_, client):
                results = run_checks(client, checks, check_timeout_s)
        except BootTestFailed as e:
            return result(FAILED, str(e))
        except BootInfrastructureError as e:
            return result(NEEDS_INSPECTION, str(e))
        failed = [c.name for c in results if c.outcome != PASSED]
        if failed:
            return result(FAILED, f"checks failed: {', '.join(failed)}")
        return result(PASSED)


@contextlib.contextmanager
def running_guest(
    image: Path,
    firmware: str,
    user: str,
    deadline_s: float = 120,
    *,
    log_dir: Path | None = None,
    accel: Sequence[str] | None = None,
    key: tuple[paramiko.PKey, str] | None = None,
    arch: str | None = None,
) -> Iterator[Guest]:
    """Boots ``image`` and yields once SSH answers; QEMU is stopped when the block ends.
    ``arch`` overrides the architecture read from the image.

    ``key`` (a paramiko key and its public ``authorized_keys`` line) replaces the throwaway key,
    for a caller that must hand the key to another process.

    Raises BootTestFailed when the image does not boot (the reason names what the serial log shows)
    and BootInfrastructureError when QEMU could not run it. Without ``log_dir``, the logs are
    removed when the block ends, and kept (the path is logged) when the boot failed.
    """
    with _log_folder(image, firmware, log_dir) as logs:
        try:
            with (
                _prepared(image, firmware, arch) as disk,
                _booted(disk, firmware, user, deadline_s, logs.path, accel, key) as (guest, client),
            ):
                client.close()
                yield guest
        except (BootTestFailed, BootInfrastructureError):
            if log_dir is None:
                logs.keep = True
                log.warning("%s (%s): boot logs kept in %s", image, firmware, logs.path)
            raise


def accelerator(probe_image: Path | None = None) -> tuple[str, ...]:
    """QEMU's accelerator arguments: KVM only when it is proven to work, else TCG.

    ``FEDIMG_QEMU_ACCEL=kvm|tcg`` decides outright. Otherwise KVM needs a usable ``/dev/kvm`` and
    a probe: ``probe_image`` (the sample image, see ``fedimg.boot.sample``) must finish its serial
    self-test under KVM within KVM_PROBE_TIMEOUT_S. A trivial guest is no proof: on the project's
    machines KVM runs the firmware fine, then stalls in the bootloader. Each probe image is probed
    once per process; without one, KVM is used only if an earlier probe proved it. TCG is slower
    but never hangs.
    """
    forced = os.environ.get(ACCEL_ENV, "")
    if forced in ("kvm", "tcg"):
        return KVM if forced == "kvm" else TCG
    if forced:
        raise ConfigError(f"{ACCEL_ENV} must be kvm or tcg, not {forced!r}")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return TCG
    if probe_image is not None:
        key = probe_image.resolve()
        if key not in _kvm_probes:
            _kvm_probes[key] = _kvm_boots(key)
            log.info("KVM %s the probe boot", "passed" if _kvm_probes[key] else "failed")
        return KVM if _kvm_probes[key] else TCG
    return KVM if any(_kvm_probes.values()) else TCG


def _accel_for(arch: str) -> tuple[str, ...]:
    """x86_64: what ``accelerator`` decides; aarch64: TCG, the only choice on an x86_64 host."""
    return accelerator() if arch == "x86_64" else TCG_AARCH64


# Probe image -> whether it booted under KVM, for this process.
_kvm_probes: dict[Path, bool] = {}


def _kvm_boots(probe_image: Path) -> bool:
    with tempfile.TemporaryDirectory(prefix="fedimg-kvm-probe-") as tmp:
        overlay = _overlay(probe_image, Path(tmp))
        args = [QEMU, "-machine", "q35", *KVM, "-m", "256", "-nodefaults", "-display", "none"]
        args += ["-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        args += ["-drive", f"file={_qemu_path(overlay)},format=qcow2,if=virtio"]
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            status = proc.wait(KVM_PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            _stop(proc)
    # Without a seed the sample runs /bin/true and reports through qexit: status (0 << 1) | 1.
    return status == 1


def test_image_command(
    image: str,
    firmware: str,
    settings: TestSettings,
    user: str,
    as_json: bool,
    *,
    arch: str | None = None,
    checks: Sequence[Check] | None = None,
    log_dir: Path | None = None,
) -> int:
    """``fedimg test-image``: boots IMAGE (a path or an http(s) URL) under each firmware asked for
    ("bios", "uefi" or "both": every firmware its architecture has, so only UEFI for aarch64),
    prints the results (JSON: one object, or a list for "both") and returns the exit status: 0 all
    passed, 1 a test failed, 2 a test could not be run (NEEDS_INSPECTION). ``arch`` overrides the
    architecture read from the image. A bad image file, or a firmware the architecture does not
    have, raises InputError, as everywhere in fedimg."""
    with _local_image(image) as local:
        guest_arch = arch or image_arch(local)
        machine = _machine(guest_arch)
        firmwares = list(machine.firmwares) if firmware == "both" else [firmware]
        for fw in firmwares:
            _check_firmware(guest_arch, fw)
        results = [
            boot_test(
                local,
                fw,
                settings.checks if checks is None else checks,
                user,
                deadline_s=settings.ssh_seconds,
                log_dir=log_dir,
                check_timeout_s=settings.check_seconds,
                arch=guest_arch,
            )
            for fw in firmwares
        ]
    for r in results:
        r.image = image  # as the user named it, not the downloaded copy
    if as_json:
        payload = [r.to_json() for r in results]
        print(json.dumps(payload if firmware == "both" else payload[0], indent=2))
    else:
        for r in results:
            print(f"{r.arch} {r.firmware}: {r.outcome} in {r.seconds:.1f} s  {r.image}")
            for c in r.checks:
                print(f"  {c.outcome:6} {c.name}")
            if r.reason:
                print(f"  reason: {r.reason}")
            if r.serial_log:
                print(f"  serial log: {r.serial_log}")
    outcomes = {r.outcome for r in results}
    if outcomes == {PASSED}:
        return 0
    return 1 if FAILED in outcomes else 2


# --- one boot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Disk:
    """The image under test, ready for QEMU: its architecture and a qcow2 overlay in ``work``."""

    name: str
    arch: str
    overlay: Path
    work: Path


@contextlib.contextmanager
def _prepared(image: Path, firmware: str, arch: str | None) -> Iterator[_Disk]:
    """The image as a disk QEMU may write to, in a work folder removed afterwards; its
    architecture read from it unless ``arch`` says. Raises InputError for a bad image, an unknown
    architecture or a firmware the architecture does not have."""
    if firmware not in FIRMWARES:
        raise InputError(f"firmware must be one of {', '.join(FIRMWARES)}, not {firmware!r}")
    if not image.is_file():
        raise InputError(f"{image}: no such image file")
    with tempfile.TemporaryDirectory(prefix="fedimg-work-") as tmp:
        work = Path(tmp)
        raw = _raw(image, work)
        guest_arch = arch or image_arch(raw)
        _check_firmware(guest_arch, firmware)
        yield _Disk(image.name, guest_arch, _overlay(raw, work), work)


def _machine(arch: str) -> Machine:
    if arch not in MACHINES:
        raise InputError(f"architecture must be one of {', '.join(ARCHES)}, not {arch!r}")
    return MACHINES[arch]


def _check_firmware(arch: str, firmware: str) -> None:
    if firmware not in _machine(arch).firmwares:
        raise InputError(
            f"{arch} images boot only with {' or '.join(_machine(arch).firmwares)} firmware, "
            f"not {firmware}"
        )


@contextlib.contextmanager
def _booted(
    disk: _Disk,
    firmware: str,
    user: str,
    deadline_s: float,
    logs: Path,
    accel: Sequence[str] | None,
    key: tuple[paramiko.PKey, str] | None = None,
) -> Iterator[tuple[Guest, paramiko.SSHClient]]:
    machine = _machine(disk.arch)
    if firmware == "uefi" and not machine.uefi.is_file():
        raise BootInfrastructureError(
            f"{machine.uefi} is missing: install the Debian package {machine.uefi_package}"
        )
    pkey, public_key = key or throwaway_key()
    seed = _seed(disk.work, public_key)
    port = _free_port()
    serial_log, firmware_log = logs / "serial.log", logs / "firmware.log"
    args = [machine.qemu, "-machine", machine.machine, *(accel or _accel_for(disk.arch))]
    args += ["-smp", str(GUEST_CPUS), "-m", str(GUEST_MEMORY_MIB)]
    args += ["-bios", str(machine.uefi)] if firmware == "uefi" else []
    args += ["-nodefaults", "-display", "none", "-no-reboot"]
    args += ["-serial", f"file:{_qemu_path(serial_log)}"]
    if machine.debug_console:
        # SeaBIOS (and OVMF debug builds) write their messages to port 0x402, not the serial.
        args += ["-chardev", f"file,id=fw,path={_qemu_path(firmware_log)}"]
        args += ["-device", "isa-debugcon,iobase=0x402,chardev=fw"]
    args += ["-drive", f"file={_qemu_path(disk.overlay)},format=qcow2,if=virtio"]
    args += ["-drive", f"file={_qemu_path(seed)},format=raw,if=virtio,readonly=on"]
    args += ["-netdev", f"user,id=n0,hostfwd=tcp:{LOOPBACK}:{port}-:22"]
    # romfile= drops the network boot ROM: the test boots the disk, never the network.
    args += ["-device", "virtio-net-pci,netdev=n0,romfile="]
    started = time.monotonic()
    with (logs / "qemu.log").open("wb") as qemu_log:
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches us, and we stop QEMU ourselves
            )
        except FileNotFoundError as e:
            raise BootInfrastructureError(
                f"{machine.qemu} not found: install {machine.qemu_package}"
            ) from e
    try:
        watch = _Watch(proc, logs, started)
        try:
            client = wait_for_ssh(LOOPBACK, port, user, pkey, deadline_s, abort_if=watch.check)
        except SshUnreachable as e:
            raise BootTestFailed(
                f"no SSH after {deadline_s:.0f} s ({e.last_error}); {watch.diagnosis()}"
            ) from e
        log.info("%s (%s): SSH answered after %.1f s", disk.name, firmware, watch.elapsed())
        try:
            guest = Guest(LOOPBACK, port, user, pkey, serial_log, proc.pid)
            yield guest, client
        finally:
            client.close()
    finally:
        _stop(proc)


class _Watch:
    """Stops the wait for SSH early when the guest cannot come up any more."""

    def __init__(self, proc: subprocess.Popen[bytes], logs: Path, started: float) -> None:
        self.proc, self.logs, self.started = proc, logs, started

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check(self) -> None:
        status = self.proc.poll()
        if status is not None and status != 0:
            qemu_says = _last_line(_read(self.logs / "qemu.log")) or "no message"
            raise BootInfrastructureError(f"QEMU exited with status {status}: {qemu_says}")
        if status == 0:  # -no-reboot: the guest powered off or tried to reboot
            raise BootTestFailed(
                f"guest stopped after {self.elapsed():.0f} s without SSH; {self.diagnosis()}"
            )
        fatal = _fatal_sign(_read(self.logs / "serial.log"), _read(self.logs / "firmware.log"))
        if fatal:
            raise BootTestFailed(f"boot failed after {self.elapsed():.0f} s; {fatal}")

    def diagnosis(self) -> str:
        serial, firmware = _read(self.logs / "serial.log"), _read(self.logs / "firmware.log")
        fatal = _fatal_sign(serial, firmware)
        if fatal:
            return fatal
        if serial.strip():
            return f"serial log ends with {_last_line(serial)!r}"
        if firmware.strip():
            return f"serial log is empty; firmware log ends with {_last_line(firmware)!r}"
        return "serial and firmware logs are empty"


# Signs, in the serial or firmware log, that the guest will never answer SSH.
_FATAL_SIGNS = (
    ("serial", re.compile(r"@@FAIL (\S+)([^\r\n]*)"), "{0} ({1})"),
    ("serial", re.compile(r"Kernel panic - not syncing: ([^\r\n]*)"), "kernel panic: {0}"),
    ("serial", re.compile(r"Entering emergency mode[^\r\n]*"), "the initramfs gave up: {0}"),
    ("firmware", re.compile(r"No bootable device"), "no bootable device (BIOS)"),
    (
        "serial",
        re.compile(r'starting Boot\w+ "EFI Internal Shell"'),
        "UEFI found nothing to boot and started its shell",
    ),
    (
        "serial",
        re.compile(r"Start (PXE|HTTP Boot) over IPv[46]|iPXE \S+ -- Open Source Network Boot"),
        "UEFI found no bootable disk and tried the network",
    ),
)
_HINTS = (
    re.compile(r"Boot failed: [^\r\n]*"),
    re.compile(r"failed to load Boot\w+ [^\r\n]*"),
)
_ESCAPES = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]|\r")


def _fatal_sign(serial: str, firmware: str) -> str:
    for source, pattern, template in _FATAL_SIGNS:
        text = serial if source == "serial" else firmware
        match = pattern.search(text)
        if match:
            found = template.format(*(g.strip() for g in match.groups()), match.group(0).strip())
            hints = [h.group(0).strip() for p in _HINTS for h in [p.search(text)] if h]
            detail = f" [{'; '.join(hints)}]" if hints else ""
            return f"{source} log shows {found.replace(' ()', '')}{detail}"
    return ""


def _read(path: Path) -> str:
    try:
        return _ESCAPES.sub("", path.read_bytes().decode(errors="replace"))
    except FileNotFoundError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


# --- the pieces -------------------------------------------------------------------------------


@dataclass
class _Logs:
    path: Path
    keep: bool  # whether the folder outlives the boot


@contextlib.contextmanager
def _log_folder(image: Path, firmware: str, log_dir: Path | None) -> Iterator[_Logs]:
    """A new folder for one boot's logs. One under ``log_dir`` is always kept; a temporary one
    only when the caller sets ``keep`` (so a failure can be read)."""
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"fedimg-boot-{image.name}.{firmware}.", dir=log_dir))
    logs = _Logs(folder, keep=log_dir is not None)
    try:
        yield logs
    finally:
        if not logs.keep:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _local_image(image: str) -> Iterator[Path]:
    """``image`` as a local raw file: a path as it is (xz decompressed); a URL downloaded into a
    temporary folder that is removed afterwards, decompressed and verified by the reader uploads
    use."""
    if "://" not in image:
        if not Path(image).is_file():
            raise InputError(f"{image}: no such image file")
        # Decompressed once here, not once per firmware (and its architecture can be read).
        with tempfile.TemporaryDirectory(prefix="fedimg-work-") as tmp:
            yield _raw(Path(image), Path(tmp))
        return
    from fedimg.source import BLOCK_SIZE, ImageSource, image_name_of

    with tempfile.TemporaryDirectory(prefix="fedimg-download-") as tmp:
        raw = Path(tmp) / f"{image_name_of(image)}.raw"
        log.info("downloading %s", image)
        with ImageSource(image) as source, raw.open("wb") as out:
            for block in source.blocks():  # only blocks with data: zeros stay holes
                out.seek(block.index * BLOCK_SIZE)
                out.write(block.data)
            out.truncate(source.raw_size)
        yield raw


ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
# The removable-media paths UEFI firmware boots (UEFI specification, "Removable Media Boot").
EFI_LOADERS = {"BOOTX64.EFI": "x86_64", "BOOTAA64.EFI": "aarch64"}
SECTOR = 512


def image_arch(raw: Path) -> str:
    """The architecture of the raw disk image ``raw``, from the loader in its EFI system partition
    (``/EFI/BOOT/BOOTX64.EFI`` or ``BOOTAA64.EFI``). An image without a GPT, an ESP or such a
    loader is taken as x86_64: only x86_64 boots without UEFI. Both Fedora's and fedimg's sample
    images have one, so ``fedimg test-image --arch`` is seldom needed."""
    for offset in _esp_offsets(raw):
        for path in _esp_listing(raw, offset, "::/EFI/BOOT"):
            arch = EFI_LOADERS.get(path.rsplit("/", 1)[-1].upper())
            if arch:
                return arch
    log.info("%s: no EFI loader found; taking it as x86_64 (--arch overrides)", raw.name)
    return "x86_64"


def _esp_listing(raw: Path, offset: int, folder: str) -> list[str]:
    """The paths in ``folder`` of the FAT file system at ``offset``; [] if it has no such folder."""
    try:
        # -b: one path per line, meant for scripts.
        listing = subprocess.run(
            ["mdir", "-b", "-i", f"{raw}@@{offset}", folder],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},  # any FAT geometry, not only a floppy's
            check=False,
        )
    except FileNotFoundError as e:
        raise BootInfrastructureError("mdir not found: install mtools") from e
    except subprocess.TimeoutExpired as e:
        raise BootInfrastructureError(f"mdir did not finish in {TOOL_TIMEOUT_S:.0f} s") from e
    return listing.stdout.splitlines() if listing.returncode == 0 else []


def _esp_offsets(raw: Path) -> list[int]:
    """Byte offsets of the EFI system partitions in the GPT of ``raw`` (512-byte sectors).

    The protective MBR is not needed: a disk whose sector 0 was lost still has its architecture."""
    with raw.open("rb") as f:
        f.seek(SECTOR)
        header = f.read(92)
        if header[:8] != b"EFI PART":
            return []
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        if not 128 <= entry_size <= 4096 or count > 1024:  # beyond what any GPT holds
            return []
        f.seek(entries_lba * SECTOR)
        table = f.read(count * entry_size)
    offsets = []
    for start in range(0, len(table) - entry_size + 1, entry_size):
        if uuid.UUID(bytes_le=table[start : start + 16]) == ESP_TYPE:
            first_lba = struct.unpack_from("<Q", table, start + 32)[0]
            offsets.append(first_lba * SECTOR)
    return offsets


def _raw(image: Path, work: Path) -> Path:
    """The image as raw bytes QEMU can read: itself, or its sparse decompression when it is xz."""
    with image.open("rb") as f:
        if f.read(len(XZ_MAGIC)) != XZ_MAGIC:
            return image
    raw = work / image.name.removesuffix(".xz")
    try:
        with lzma.open(image) as src, raw.open("wb") as dst:
            _copy_sparse(src, dst)
    except lzma.LZMAError as e:
        raise InputError(f"{image}: not a valid xz file: {e}") from e
    except EOFError as e:  # what lzma raises for a file cut short
        raise InputError(f"{image}: not a valid xz file: it is truncated") from e
    return raw


def _copy_sparse(src: IO[bytes], dst: IO[bytes]) -> None:
    # Zero chunks become holes: a 5 GiB Fedora image is mostly zeros and must not fill the disk.
    zeros = bytes(CHUNK)
    size = 0
    while chunk := src.read(CHUNK):
        size += len(chunk)
        if chunk == zeros[: len(chunk)]:
            dst.seek(len(chunk), os.SEEK_CUR)
        else:
            dst.write(chunk)
    dst.truncate(size)


def _overlay(raw: Path, work: Path) -> Path:
    """A qcow2 overlay backed by ``raw``: the guest writes there, never into the image."""
    overlay = work / "overlay.qcow2"
    backing = ["-F", "raw", "-b", str(raw.resolve())]
    _tool(["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(overlay)], package="qemu-utils")
    return overlay


def _seed(work: Path, public_key: str) -> Path:
    """A NoCloud seed (volume label cidata) that authorizes ``public_key``."""
    user_data, meta_data, seed = work / "user-data", work / "meta-data", work / "seed.iso"
    user_data.write_text(f"#cloud-config\nssh_authorized_keys:\n  - {public_key}\n")
    instance_id = f"iid-fedimg-{os.getpid()}-{time.time_ns()}"
    meta_data.write_text(f"instance-id: {instance_id}\nlocal-hostname: fedimg-boottest\n")
    _tool(["cloud-localds", str(seed), str(user_data), str(meta_data)], package="cloud-image-utils")
    return seed


def _free_port() -> int:
    # The port is free now; QEMU binds it a moment later (a rare clash shows as QEMU failing).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _qemu_path(path: Path) -> str:
    if "," in str(path):  # QEMU's option syntax would split the path there
        raise BootInfrastructureError(f"{path}: QEMU cannot take a path containing a comma")
    return str(path)


def _tool(args: list[str], package: str) -> None:
    try:
        subprocess.run(args, capture_output=True, timeout=TOOL_TIMEOUT_S, check=True)
    except FileNotFoundError as e:
        raise BootInfrastructureError(f"{args[0]} not found: install {package}") from e
    except subprocess.TimeoutExpired as e:
        raise BootInfrastructureError(f"{args[0]} did not finish in {TOOL_TIMEOUT_S:.0f} s") from e
    except subprocess.CalledProcessError as e:
        message = _last_line(e.stderr.decode(errors="replace")) or f"exit status {e.returncode}"
        raise BootInfrastructureError(f"{args[0]} failed: {message}") from e


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stops QEMU by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("QEMU (pid %d) did not exit after SIGKILL", proc.pid)
