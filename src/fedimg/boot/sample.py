"""fedimg's own sample disk image: a 42 MiB raw disk that really boots, for the demo and the tests.

Fedora's cloud images cannot be downloaded everywhere fedimg is tested, yet the boot tests need an
image that boots the way an EC2 image does. This one is a GPT disk with

* p1, an EFI system partition (FAT16: FAT32 does not fit so small a partition) holding Debian's
  cloud kernel, an initramfs and SYSLINUX for both BIOS (``gptmbr.bin`` + ``ldlinux.sys``) and
  UEFI (``/EFI/BOOT/BOOTX64.EFI``);
* p2, an ext4 root labelled ``root`` holding busybox, dropbear and ``/sbin/init``
  (``data/rootfs-init``), which reads a cloud-init NoCloud seed, installs its SSH keys for root and
  starts dropbear.

Everything is built without root and without loop devices or mounts: file systems are made in place
at their offsets (``mkfs.vfat --offset``, mtools, ``mkfs.ext4 -d``). Images are cached in
``BUILD_DIR/sample/<key>/``, the key being a hash of this builder's inputs (its own source, the init
scripts, the kernel package), so a changed builder rebuilds and an unchanged one never does.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import IO

from fedimg.config import Check
from fedimg.errors import FedimgError

MIB = 1024 * 1024
ESP_MIB = 24
ROOT_MIB = 16
ESP_OFFSET = 1 * MIB
ROOT_OFFSET = ESP_OFFSET + ESP_MIB * MIB
# One spare MiB at the end for the backup GPT.
DISK_BYTES = ROOT_OFFSET + ROOT_MIB * MIB + MIB
ROOT_LABEL = "root"

# The user the sample image lets in with the seed's key, and checks it passes (Fedora's own checks
# need systemd, cloud-init and SELinux, which the sample has not).
SAMPLE_USER = "root"
SAMPLE_CHECKS = (
    Check("true", "/bin/true"),
    Check("root-is-ext4", "awk '$2 == \"/\" {t = $3} END {print t}' /proc/mounts", "ext4"),
    Check("root-by-label", f"findfs LABEL={ROOT_LABEL}", "/dev/vda2"),
    Check("root-has-space", "df -k / | awk 'NR == 2 {exit !($4 > 1024)}'"),
    Check("sample-id", "cat /etc/fedimg-sample-id"),
)

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# Drivers the sample needs that Debian's cloud kernel builds as modules; ext4, FAT and the serial
# console are built in. Their dependencies are read from the modules themselves.
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "isofs")
KERNEL_CMDLINE = f"console=ttyS0,115200 root=LABEL={ROOT_LABEL} panic=-1 quiet"

BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
DROPBEARKEY = Path("/usr/bin/dropbearkey")
GPTMBR = Path("/usr/lib/syslinux/mbr/gptmbr.bin")
SYSLINUX_EFI = Path("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi")
LDLINUX_E64 = Path("/usr/lib/syslinux/modules/efi64/ldlinux.e64")

# qexit: a 416-byte static x86-64 program, assembled by us (``as qexit.S && ld -s -n``) from a
# 20-instruction source: parse argv[1] as a decimal N, ioperm(0xf4), outb N to port 0xf4, exit(1).
# With QEMU's ``-device isa-debug-exit,iobase=0xf4`` the outb ends QEMU with status (N << 1) | 1, so
# a guest can report a result without a network. Only the serial-only self-test uses it.
QEXIT_ELF = base64.b64decode(
    "f0VMRgIBAQAAAAAAAAAAAAIAPgABAAAAeABAAAAAAABAAAAAAAAAAOAAAAAAAAAAAAAAAEAAOAABAEAAAwACAAEAAAAF"
    "AAAAeAAAAAAAAAB4AEAAAAAAAHgAQAAAAAAAUQAAAAAAAABRAAAAAAAAAAEAAAAAAAAASIsMJDHbSIP5AnwcSIt0JBAP"
    "tgaD6DByD4P4CXcKa9sKAcNI/8br6bitAAAAv/QAAAC+AQAAALoBAAAADwWJ2Ga69ADuuDwAAAC/AQAAAA8FAC5zaHN0"
    "cnRhYgAudGV4dAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAACwAAAAEAAAAGAAAAAAAAAHgAQAAAAAAAeAAAAAAAAABRAAAAAAAAAAAAAAAAAAAAAQAAAAAAAAAA"
    "AAAAAAAAAAEAAAADAAAAAAAAAAAAAAAAAAAAAAAAAMkAAAAAAAAAEQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAA"
    "AAA="
)

# Tool timeouts: each step takes well under a second here; the limits only stop a hung tool.
STEP_TIMEOUT_S = 60
APT_TIMEOUT_S = 600


class SampleImageError(FedimgError):
    """The sample image could not be built (a tool or the kernel is missing). Not retryable."""


def sample_image(build_dir: Path) -> Path:
    """The sample raw image, built on first use and whenever the builder's inputs change."""
    with _locked(build_dir) as home:
        kernel_deb = _kernel_deb(home / "kernel")
        out = home / _cache_key(kernel_deb) / "disk.raw"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            _build(kernel_deb, out)
        return out


def sample_image_xz(build_dir: Path) -> Path:
    """The sample image compressed with xz (as Fedora ships its ``.raw.xz``), cached beside it."""
    raw = sample_image(build_dir)
    out = raw.with_name(raw.name + ".xz")
    with _locked(build_dir):
        if not out.exists():
            partial = out.with_name(out.name + ".partial")
            with partial.open("wb") as f:
                # Preset 0: the kernel, compressed already, dominates; higher ones take 3x longer.
                _run(["xz", "-T0", "-0", "-c", str(raw)], stdout=f)
            partial.replace(out)
    return out


def corrupt_variants(build_dir: Path) -> dict[str, Path]:
    """Images that must fail a boot test, each next to the sample it was made from.

    ``broken-boot-sector``: sector 0 (boot code, protective MBR, signature) zeroed, so no firmware
    finds anything to boot. ``root-not-mountable``: the root file system's superblock zeroed, so the
    initramfs cannot find ``LABEL=root`` and powers off with ``@@FAIL cannot-mount-root``.
    """
    raw = sample_image(build_dir)
    damage = {
        "broken-boot-sector": (0, 512),
        "root-not-mountable": (ROOT_OFFSET + 1024, 1024),  # the ext4 superblock
    }
    variants = {}
    with _locked(build_dir):
        for name, (offset, length) in damage.items():
            out = raw.with_name(f"{name}.raw")
            if not out.exists():
                partial = out.with_name(out.name + ".partial")
                shutil.copyfile(raw, partial)
                with partial.open("r+b") as f:
                    f.seek(offset)
                    f.write(bytes(length))
                partial.replace(out)
            variants[name] = out
    return variants


@contextlib.contextmanager
def _locked(build_dir: Path) -> Iterator[Path]:
    """The sample cache folder, held exclusively: parallel test runs must not build it twice."""
    home = build_dir / "sample"
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield home
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cache_key(kernel_deb: Path) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for name in ("initramfs-init", "rootfs-init"):
        digest.update(_data(name))
    digest.update(kernel_deb.name.encode())
    return digest.hexdigest()[:16]


def _data(name: str) -> bytes:
    return (resources.files("fedimg.boot") / "data" / name).read_bytes()


# --- the kernel -------------------------------------------------------------------------------


def _kernel_deb(cache: Path) -> Path:
    """Debian's cloud kernel package, downloaded once; a cached one is used without asking apt."""
    cached = sorted(cache.glob("linux-image-*-cloud-amd64_*.deb"))
    if cached:
        return cached[-1]
    cache.mkdir(parents=True, exist_ok=True)
    package = _kernel_package()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _run(["apt-get", "download", package], cwd=Path(tmp), timeout=APT_TIMEOUT_S)
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise SampleImageError(f"apt-get download {package} gave no single .deb in {tmp}")
        target = cache / debs[0].name
        debs[0].replace(target)
    return target


def _kernel_package() -> str:
    """The versioned package the cloud kernel meta-package depends on.

    E.g. linux-image-6.1.0-56-cloud-amd64; runs ``apt-get update`` first when apt has no lists.
    """
    package = _kernel_package_from_apt()
    if package:
        return package
    if os.geteuid() != 0:
        raise SampleImageError(
            f"apt knows no {KERNEL_META_PACKAGE}: its package lists are missing. Run "
            "`apt-get update` as root once (the sample image's kernel comes from apt-get download)."
        )
    _run(["apt-get", "update", "-qq"], timeout=APT_TIMEOUT_S)
    package = _kernel_package_from_apt()
    if not package:
        raise SampleImageError(f"apt knows no {KERNEL_META_PACKAGE} even after apt-get update")
    return package


def _kernel_package_from_apt() -> str | None:
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        return None
    # The record's Depends field (deb822), e.g. "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)".
    match = re.search(r"^Depends:.*?\b(linux-image-[^\s,(]+)", proc.stdout, re.MULTILINE)
    return match.group(1) if match else None


def _module_load_order(modules_root: Path, wanted: Sequence[str]) -> list[Path]:
    """The .ko files of ``wanted`` and of everything they depend on, dependencies first.

    Debian's package ships no modules.dep (depmod makes it on install), so the ``depends=`` entry
    of each module's .modinfo section is read instead.
    """
    files = {p.name.removesuffix(".ko"): p for p in modules_root.rglob("*.ko")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        path = files.get(name) or files.get(name.replace("_", "-"))
        if path is None:
            raise SampleImageError(f"kernel module {name}.ko not found under {modules_root}")
        match = re.search(rb"\0depends=([\w,-]*)\0", path.read_bytes())
        for dep in match.group(1).decode().split(",") if match else []:
            if dep:
                visit(dep)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


# --- the build --------------------------------------------------------------------------------


def _build(kernel_deb: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix="build-") as tmp:
        work = Path(tmp)
        _run(["dpkg-deb", "-x", str(kernel_deb), str(work / "kernel")])
        vmlinuz = next((work / "kernel" / "boot").glob("vmlinuz-*"), None)
        if vmlinuz is None:
            raise SampleImageError(f"{kernel_deb.name} holds no /boot/vmlinuz-*")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        modules = _module_load_order(work / "kernel" / "lib" / "modules" / release, GUEST_MODULES)
        initrd = _make_initramfs(work / "initramfs", modules, work / "initrd.gz")
        rootfs = _make_rootfs(work / "rootfs", sample_id=out.parent.name)
        disk = work / "disk.raw"
        _make_disk(disk, vmlinuz, initrd, rootfs, work)
        disk.replace(out)


def _make_initramfs(tree: Path, modules: Sequence[Path], out: Path) -> Path:
    for sub in ("bin", "proc", "sys", "dev", "newroot", "lib/modules"):
        (tree / sub).mkdir(parents=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    for module in modules:
        shutil.copy2(module, tree / "lib" / "modules" / module.name)
    names = "".join(m.name.removesuffix(".ko") + "\n" for m in modules)
    (tree / "lib" / "modules" / "load-order").write_text(names)
    _write_executable(tree / "init", _data("initramfs-init"))
    listing = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    archive = _run(
        ["cpio", "--create", "--format=newc", "--owner=0:0", "--quiet"],
        cwd=tree,
        stdin="\n".join(listing) + "\n",
    )
    out.write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))
    return out


def _make_rootfs(tree: Path, sample_id: str) -> Path:
    dirs = ("bin", "sbin", "lib64", "proc", "sys", "dev", "etc/dropbear", "tmp", "root", "mnt")
    for sub in dirs:
        (tree / sub).mkdir(parents=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    shutil.copy2(DROPBEAR, tree / "sbin" / "dropbear")
    shutil.copy2(DROPBEARKEY, tree / "bin" / "dropbearkey")
    _write_executable(tree / "bin" / "qexit", QEXIT_ELF)
    for lib in _shared_libraries([DROPBEAR, DROPBEARKEY]):
        target = tree / lib.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, target)  # follows symlinks and keeps the mode: the loader must be +x
    _write_executable(tree / "sbin" / "init", _data("rootfs-init"))
    etc = tree / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "shadow").chmod(0o600)
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shells").write_text("/bin/sh\n")
    (etc / "hostname").write_text("fedimg-sample\n")
    (etc / "fedimg-sample-id").write_text(sample_id + "\n")
    (tree / "root").chmod(0o700)
    return tree


def _shared_libraries(programs: Sequence[Path]) -> set[Path]:
    """Libraries (and the dynamic loader) the programs need, as ldd resolves them on this host."""
    libs: set[Path] = set()
    for program in programs:
        for line in _run(["ldd", str(program)]).decode().splitlines():
            words = line.split()
            # "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x..)" or "/lib64/ld-linux.so.2 (0x..)"
            path = words[words.index("=>") + 1] if "=>" in words else (words[0] if words else "")
            if path.startswith("/"):
                libs.add(Path(path))
    return libs


def _make_disk(disk: Path, vmlinuz: Path, initrd: Path, rootfs: Path, work: Path) -> None:
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)
    esp_type = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    linux_type = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    # LegacyBIOSBootable tells gptmbr.bin which partition's boot sector to chain to.
    table = (
        "label: gpt\n"
        f"start={ESP_OFFSET // 512}, size={ESP_MIB * MIB // 512}, type={esp_type}, name=ESP, "
        "attrs=LegacyBIOSBootable\n"
        f"start={ROOT_OFFSET // 512}, size={ROOT_MIB * MIB // 512}, type={linux_type}, name=root\n"
    )
    _run(["sfdisk", "--quiet", str(disk)], stdin=table)
    with disk.open("r+b") as f:
        f.write(GPTMBR.read_bytes()[:440])  # boot code only: the partition table stays

    esp_kib = ESP_MIB * 1024
    esp_sector = str(ESP_OFFSET // 512)
    _run(
        [
            "mkfs.vfat",
            "-F",
            "16",
            "-n",
            "ESP",
            "-h",
            esp_sector,
            "--offset",
            esp_sector,
            *[str(disk), str(esp_kib)],
        ]
    )
    config = work / "syslinux.cfg"
    config.write_text(
        "SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT linux\nLABEL linux\n"
        f"  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND {KERNEL_CMDLINE}\n"
    )
    esp = f"{disk}@@{ESP_OFFSET}"
    _mtools(["mmd", "-i", esp, "::/syslinux", "::/EFI", "::/EFI/BOOT"])
    for source, target in (
        (vmlinuz, "::/vmlinuz"),
        (initrd, "::/initrd.gz"),
        (config, "::/syslinux/syslinux.cfg"),
        (SYSLINUX_EFI, "::/EFI/BOOT/BOOTX64.EFI"),
        (LDLINUX_E64, "::/EFI/BOOT/ldlinux.e64"),
        (config, "::/EFI/BOOT/syslinux.cfg"),
    ):
        _mtools(["mcopy", "-i", esp, str(source), target])
    _run(["syslinux", "--offset", str(ESP_OFFSET), "--directory", "/syslinux", "-i", str(disk)])

    root_fs = work / "root.ext4"
    _run(
        ["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(rootfs), str(root_fs), f"{ROOT_MIB}M"]
    )
    with root_fs.open("rb") as src, disk.open("r+b") as dst:
        dst.seek(ROOT_OFFSET)
        shutil.copyfileobj(src, dst, MIB)


def _mtools(args: list[str]) -> None:
    # mtools refuses a FAT whose geometry does not match a floppy's unless told not to check.
    _run(args, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def _write_executable(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    path.chmod(0o755)


def _run(
    args: list[str],
    *,
    cwd: Path | None = None,
    stdin: str | None = None,
    stdout: IO[bytes] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = STEP_TIMEOUT_S,
) -> bytes:
    """Runs one build tool; a missing tool or a failure becomes a SampleImageError naming it."""
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            input=stdin.encode() if stdin is not None else None,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise SampleImageError(
            f"{args[0]} not found: install the sample image's tools: scripts/install-system-deps.sh"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise SampleImageError(f"{args[0]} did not finish within {timeout:.0f} s") from e
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SampleImageError(
            f"{' '.join(args[:3])}: exit status {proc.returncode}: {detail[-1] if detail else ''}"
        )
    return proc.stdout or b""
