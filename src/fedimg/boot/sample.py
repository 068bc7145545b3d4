"""fedimg's own sample disk images, x86_64 and aarch64: small raw disks that really boot, for the
demo and the tests.

Fedora's cloud images cannot be downloaded everywhere fedimg is tested, yet the boot tests need an
image that boots the way an EC2 image does. Each is a GPT disk with

* p1, an EFI system partition (FAT16: FAT32 does not fit so small a partition) holding Debian's
  cloud kernel and an initramfs, and a boot loader: for x86_64 SYSLINUX, for both BIOS
  (``gptmbr.bin`` + ``ldlinux.sys``) and UEFI (``/EFI/BOOT/BOOTX64.EFI``); for aarch64, which boots
  only with UEFI, systemd-boot (``/EFI/BOOT/BOOTAA64.EFI``) and a Boot Loader Specification entry;
* p2, an ext4 root labelled ``root`` holding busybox, dropbear and ``/sbin/init``
  (``data/rootfs-init``), which reads a cloud-init NoCloud seed, installs its SSH keys for root and
  starts dropbear.

The x86_64 image takes busybox, dropbear and its libraries from this (x86_64) host. The aarch64
one takes everything from Debian's arm64 packages, fetched with ``apt-get download PKG:arm64`` and
unpacked with ``dpkg-deb -x``: nothing is installed or run for arm64, so no emulation is needed.

Why systemd-boot for aarch64: SYSLINUX has no arm64 EFI build. The kernel's own EFI stub could be
``BOOTAA64.EFI`` itself, but the firmware's fallback boot passes it no command line, and Debian's
kernel has none built in (no ``root=``, no console, no initrd); a unified kernel image would need an
aarch64-capable objcopy or ukify. systemd-boot is one 120 KiB file from ``systemd-boot-efi:arm64``
plus a text entry, the same Boot Loader Specification entries Fedora itself boots from.

Everything is built without root and without loop devices or mounts: file systems are made in place
at their offsets (``mkfs.vfat --offset``, mtools, ``mkfs.ext4 -d``). Images are cached in
``BUILD_DIR/sample/<key>/``, the key being a hash of this builder's inputs (its own source, the init
scripts, the architecture, the Debian packages), so a changed builder rebuilds and an unchanged one
never does.
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
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

from fedimg.config import Check
from fedimg.errors import FedimgError

MIB = 1024 * 1024
ROOT_MIB = 16
ESP_OFFSET = 1 * MIB
ROOT_LABEL = "root"
ARCHES = ("x86_64", "aarch64")


@dataclass(frozen=True)
class Layout:
    """Where the partitions of one architecture's sample disk are."""

    esp_mib: int

    @property
    def root_offset(self) -> int:
        return ESP_OFFSET + self.esp_mib * MIB

    @property
    def disk_bytes(self) -> int:
        return self.root_offset + ROOT_MIB * MIB + MIB  # one spare MiB at the end: the backup GPT


# arm64's kernel has no self-decompressor: its 27 MB Image needs the larger ESP.
LAYOUTS = {"x86_64": Layout(esp_mib=24), "aarch64": Layout(esp_mib=40)}

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

# Drivers the sample needs that Debian's cloud kernels build as modules (on both architectures);
# ext4, FAT and the serial console are built in. Their dependencies are read from the modules.
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "isofs")
CONSOLES = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}  # the 8250 UART; the virt machine's PL011


def kernel_cmdline(arch: str) -> str:
    return f"console={CONSOLES[arch]},115200 root=LABEL={ROOT_LABEL} panic=-1 quiet"


# x86_64: from this host.
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
DROPBEARKEY = Path("/usr/bin/dropbearkey")
GPTMBR = Path("/usr/lib/syslinux/mbr/gptmbr.bin")
SYSLINUX_EFI = Path("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi")
LDLINUX_E64 = Path("/usr/lib/syslinux/modules/efi64/ldlinux.e64")

# aarch64: Debian's arm64 packages, unpacked. The kernel is the version the meta-package names and
# the libraries are the ones dropbear-bin depends on, both resolved by apt when first downloaded.
ARM64_KERNEL_META_PACKAGE = "linux-image-cloud-arm64"
ARM64_PACKAGES = ("busybox-static", "dropbear-bin", "systemd-boot-efi")
ARM64_LIBRARY_DIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib")
SYSTEMD_BOOT_AA64 = Path("usr/lib/systemd/boot/efi/systemd-bootaa64.efi")
ARM64_MANIFEST = "debs.txt"  # the .deb files of the last complete download

# qexit: a 416-byte static x86-64 program, assembled by us (``as qexit.S && ld -s -n``) from a
# 20-instruction source: parse argv[1] as a decimal N, ioperm(0xf4), outb N to port 0xf4, exit(1).
# With QEMU's ``-device isa-debug-exit,iobase=0xf4`` the outb ends QEMU with status (N << 1) | 1, so
# a guest can report a result without a network. Only the serial-only self-test uses it. The
# aarch64 image has none (the virt machine has no such device): its init powers off through PSCI
# and the ``@@RESULT`` line on the serial console carries the result.
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
    """The sample image could not be built (a tool or a package is missing). Not retryable."""


def sample_image(build_dir: Path, arch: str = "x86_64") -> Path:
    """The sample raw image for ``arch``, built on first use and whenever its inputs change."""
    if arch not in ARCHES:
        raise SampleImageError(f"no sample image for {arch!r}: one of {', '.join(ARCHES)}")
    with _locked(build_dir) as home:
        x86 = arch == "x86_64"
        debs = [_kernel_deb(home / "kernel")] if x86 else _arm64_debs(home / "arm64")
        out = home / _cache_key(arch, debs) / "disk.raw"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            if x86:
                _build_x86_64(debs[0], out)
            else:
                _build_aarch64(debs, out)
        return out


def sample_image_xz(build_dir: Path, arch: str = "x86_64") -> Path:
    """The sample image compressed with xz (as Fedora ships its ``.raw.xz``), cached beside it."""
    raw = sample_image(build_dir, arch)
    out = raw.with_name(raw.name + ".xz")
    with _locked(build_dir):
        if not out.exists():
            partial = out.with_name(out.name + ".partial")
            with partial.open("wb") as f:
                # Preset 0: the kernel, compressed already, dominates; higher ones take 3x longer.
                _run(["xz", "-T0", "-0", "-c", str(raw)], stdout=f)
            partial.replace(out)
    return out


def corrupt_variants(build_dir: Path, arch: str = "x86_64") -> dict[str, Path]:
    """Images that must fail a boot test, each next to the sample it was made from.

    ``broken-boot-sector``: sector 0 (boot code, protective MBR, signature) zeroed, so no firmware
    finds anything to boot (UEFI firmware reads no GPT without its protective MBR: on aarch64, which
    has no boot code there, this is how the disk loses its bootable partition).
    ``root-not-mountable``: the root file system's superblock zeroed, so the initramfs cannot find
    ``LABEL=root`` and powers off with ``@@FAIL cannot-mount-root``.
    """
    raw = sample_image(build_dir, arch)
    damage = {
        "broken-boot-sector": (0, 512),
        "root-not-mountable": (LAYOUTS[arch].root_offset + 1024, 1024),  # the ext4 superblock
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


def _cache_key(arch: str, debs: Sequence[Path]) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for name in ("initramfs-init", "rootfs-init"):
        digest.update(_data(name))
    digest.update(arch.encode())
    for deb in debs:
        digest.update(deb.name.encode())
    return digest.hexdigest()[:16]


def _data(name: str) -> bytes:
    return (resources.files("fedimg.boot") / "data" / name).read_bytes()


# --- Debian packages --------------------------------------------------------------------------


def _kernel_deb(cache: Path) -> Path:
    """Debian's x86_64 cloud kernel package, downloaded once; a cached one is used without apt."""
    cached = sorted(cache.glob("linux-image-*-cloud-amd64_*.deb"))
    if cached:
        return cached[-1]
    package = _depends_of(KERNEL_META_PACKAGE, prefix="linux-image-")[0]
    return _download([package], cache)[0]


def _arm64_debs(cache: Path) -> list[Path]:
    """The arm64 packages the aarch64 image is made of, downloaded once and listed in a manifest;
    while every file the manifest names is there, apt is not asked."""
    manifest = cache / ARM64_MANIFEST
    if manifest.exists():
        debs = [cache / name for name in manifest.read_text().split()]
        if debs and all(d.exists() for d in debs):
            return debs
    kernel = _depends_of(f"{ARM64_KERNEL_META_PACKAGE}:arm64", prefix="linux-image-")[0]
    packages = [kernel, *_with_dependencies(ARM64_PACKAGES)]
    debs = _download([f"{p}:arm64" for p in packages], cache)
    manifest.write_text("".join(f"{d.name}\n" for d in debs))
    return debs


def _download(packages: Sequence[str], cache: Path) -> list[Path]:
    """``apt-get download`` of ``packages`` into ``cache`` (no root needed), in that order."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _run(["apt-get", "download", *packages], cwd=Path(tmp), timeout=APT_TIMEOUT_S)
        fetched = {p.name.split("_")[0]: p for p in Path(tmp).glob("*.deb")}
        debs = []
        for package in packages:
            deb = fetched.get(package.split(":")[0])
            if deb is None:
                raise SampleImageError(f"apt-get download {package} gave no .deb in {tmp}")
            target = cache / deb.name
            deb.replace(target)
            debs.append(target)
    return debs


def _with_dependencies(packages: Sequence[str]) -> list[str]:
    """``packages`` and everything they depend on, recursively (for arm64: the libraries)."""
    found = list(packages)
    for package in found:  # grows while it is walked
        found += [d for d in _depends_of(f"{package}:arm64") if d not in found]
    return found


def _depends_of(package: str, prefix: str = "") -> list[str]:
    """The packages ``package`` depends on (first alternatives; only names with ``prefix``), e.g.
    linux-image-6.1.0-56-cloud-amd64 for the cloud kernel meta-package."""
    record = _apt_record(package)
    if record is None:
        if os.geteuid() != 0 or package.endswith(":arm64"):
            raise SampleImageError(
                f"apt knows no {package}: its package lists are missing. Run "
                "scripts/install-system-deps.sh as root once (it runs `apt-get update` and adds "
                "the arm64 architecture; the sample images' packages come from apt-get download)."
            )
        _run(["apt-get", "update", "-qq"], timeout=APT_TIMEOUT_S)
        record = _apt_record(package)
        if record is None:
            raise SampleImageError(f"apt knows no {package} even after apt-get update")
    # The record's (Pre-)Depends fields (deb822), e.g. "libc6 (>= 2.34), libz1 | zlib1g, ...".
    fields = re.findall(r"^(?:Pre-)?Depends: *(.*)$", record, re.MULTILINE)
    items = [item for field in fields for item in field.split(",") if item.strip()]
    names = [item.split("|")[0].split()[0].split(":")[0] for item in items]
    found = [name for name in names if name.startswith(prefix)]
    if prefix and not found:
        raise SampleImageError(f"{package} depends on no {prefix}* package")
    return found


def _apt_record(package: str) -> str | None:
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", package],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


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


@dataclass(frozen=True)
class _Parts:
    """What goes into the root file system, wherever it came from."""

    busybox: Path
    dropbear: Path
    dropbearkey: Path
    libraries: dict[Path, Path]  # absolute path in the image -> file to copy there
    extra_bin: dict[str, bytes]  # /bin/NAME -> program


def _build_x86_64(kernel_deb: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix="build-") as tmp:
        work = Path(tmp)
        _run(["dpkg-deb", "-x", str(kernel_deb), str(work / "kernel")])
        vmlinuz, initrd = _kernel_and_initramfs(work / "kernel", BUSYBOX, work)
        libraries = {lib: lib for lib in _host_libraries([DROPBEAR, DROPBEARKEY])}
        parts = _Parts(BUSYBOX, DROPBEAR, DROPBEARKEY, libraries, {"qexit": QEXIT_ELF})
        rootfs = _make_rootfs(work / "rootfs", parts, sample_id=out.parent.name)
        disk = work / "disk.raw"
        _make_disk(disk, LAYOUTS["x86_64"], vmlinuz, initrd, rootfs)
        _install_syslinux(disk, work)
        disk.replace(out)


def _build_aarch64(debs: Sequence[Path], out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix="build-") as tmp:
        work = Path(tmp)
        sysroot = work / "arm64"
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(sysroot)])
        busybox = sysroot / "bin" / "busybox"
        vmlinuz, initrd = _kernel_and_initramfs(sysroot, busybox, work)
        dropbear, dropbearkey = sysroot / "usr/sbin/dropbear", sysroot / "usr/bin/dropbearkey"
        libraries = _sysroot_libraries(sysroot, [dropbear, dropbearkey])
        parts = _Parts(busybox, dropbear, dropbearkey, libraries, {})
        rootfs = _make_rootfs(work / "rootfs", parts, sample_id=out.parent.name)
        disk = work / "disk.raw"
        _make_disk(disk, LAYOUTS["aarch64"], vmlinuz, initrd, rootfs)
        _install_systemd_boot(disk, sysroot / SYSTEMD_BOOT_AA64, work)
        disk.replace(out)


def _kernel_and_initramfs(unpacked: Path, busybox: Path, work: Path) -> tuple[Path, Path]:
    vmlinuz = next((unpacked / "boot").glob("vmlinuz-*"), None)
    if vmlinuz is None:
        raise SampleImageError(f"no /boot/vmlinuz-* in the kernel package under {unpacked}")
    release = vmlinuz.name.removeprefix("vmlinuz-")
    modules = _module_load_order(unpacked / "lib" / "modules" / release, GUEST_MODULES)
    return vmlinuz, _make_initramfs(work / "initramfs", busybox, modules, work / "initrd.gz")


def _make_initramfs(tree: Path, busybox: Path, modules: Sequence[Path], out: Path) -> Path:
    for sub in ("bin", "proc", "sys", "dev", "newroot", "lib/modules"):
        (tree / sub).mkdir(parents=True)
    shutil.copy2(busybox, tree / "bin" / "busybox")
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


def _make_rootfs(tree: Path, parts: _Parts, sample_id: str) -> Path:
    for sub in ("bin", "sbin", "proc", "sys", "dev", "etc/dropbear", "tmp", "root", "mnt"):
        (tree / sub).mkdir(parents=True)
    shutil.copy2(parts.busybox, tree / "bin" / "busybox")
    shutil.copy2(parts.dropbear, tree / "sbin" / "dropbear")
    shutil.copy2(parts.dropbearkey, tree / "bin" / "dropbearkey")
    for name, program in parts.extra_bin.items():
        _write_executable(tree / "bin" / name, program)
    for in_image, source in parts.libraries.items():
        target = tree / in_image.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)  # follows symlinks and keeps the mode: the loader must be +x
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


def _host_libraries(programs: Sequence[Path]) -> set[Path]:
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


def _sysroot_libraries(sysroot: Path, programs: Sequence[Path]) -> dict[Path, Path]:
    """The dynamic loader and the libraries ``programs`` need, found in the unpacked packages
    (ldd cannot run arm64 programs here): their ELF headers name them."""
    wanted: dict[Path, Path] = {}
    queue = list(programs)
    while queue:
        elf = _Elf(queue.pop().read_bytes())
        paths = [Path(elf.interpreter)] if elf.interpreter else []
        for soname in elf.needed:
            found = [Path("/", d, soname) for d in ARM64_LIBRARY_DIRS]
            found = [p for p in found if _in_sysroot(sysroot, p).exists()]
            if not found:
                raise SampleImageError(f"{soname} is in none of the arm64 packages unpacked")
            paths.append(found[0])
        for path in paths:
            if path not in wanted:
                wanted[path] = _in_sysroot(sysroot, path)
                queue.append(wanted[path])
    return wanted


def _in_sysroot(sysroot: Path, path: Path) -> Path:
    """``path`` inside ``sysroot``, with symlinks resolved there (never on this host)."""
    current = sysroot / path.relative_to("/")
    for _ in range(40):  # the kernel's own limit on symlinks followed
        if not current.is_symlink():
            return current
        target = Path(os.readlink(current))
        current = (
            sysroot / target.relative_to("/") if target.is_absolute() else current.parent / target
        )
    raise SampleImageError(f"{path}: too many levels of symbolic links in the arm64 packages")


class _Elf:
    """The dynamic-linking facts of a 64-bit little-endian ELF file: its loader, its libraries."""

    def __init__(self, data: bytes) -> None:
        if data[:6] != b"\x7fELF\x02\x01":
            raise SampleImageError("not a 64-bit little-endian ELF file")
        phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
        self.interpreter = ""
        self.needed: list[str] = []
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
                "<IIQQQQ", data, phoff + i * phentsize
            )
            if p_type == 3:  # PT_INTERP
                self.interpreter = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
        sections = [
            struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
        ]
        for _, sh_type, _, _, offset, size, link, *_ in sections:
            if sh_type != 6:  # SHT_DYNAMIC; sh_link names its string table
                continue
            strings = sections[link][4]
            for entry in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, entry)
                if tag == 1:  # DT_NEEDED
                    end = data.index(b"\0", strings + value)
                    self.needed.append(data[strings + value : end].decode())


def _make_disk(disk: Path, layout: Layout, vmlinuz: Path, initrd: Path, rootfs: Path) -> None:
    """The GPT disk: an ESP holding the kernel and initramfs (boot loaders are added after), and
    the ext4 root made from ``rootfs``."""
    with disk.open("wb") as f:
        f.truncate(layout.disk_bytes)
    esp_type = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    linux_type = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    # LegacyBIOSBootable tells gptmbr.bin which partition's boot sector to chain to (x86_64 BIOS).
    table = (
        "label: gpt\n"
        f"start={ESP_OFFSET // 512}, size={layout.esp_mib * MIB // 512}, type={esp_type}, "
        "name=ESP, attrs=LegacyBIOSBootable\n"
        f"start={layout.root_offset // 512}, size={ROOT_MIB * MIB // 512}, type={linux_type}, "
        "name=root\n"
    )
    _run(["sfdisk", "--quiet", str(disk)], stdin=table)
    esp_kib, esp_sector = str(layout.esp_mib * 1024), str(ESP_OFFSET // 512)
    fat16 = ["mkfs.vfat", "-F", "16", "-n", "ESP", "-h", esp_sector, "--offset", esp_sector]
    _run([*fat16, str(disk), esp_kib])
    _mtools(["mmd", "-i", _esp(disk), "::/EFI", "::/EFI/BOOT"])
    _esp_copy(disk, [(vmlinuz, "::/vmlinuz"), (initrd, "::/initrd.gz")])

    root_fs = disk.with_name("root.ext4")
    mkfs = ["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(rootfs), str(root_fs)]
    _run([*mkfs, f"{ROOT_MIB}M"])
    with root_fs.open("rb") as src, disk.open("r+b") as dst:
        dst.seek(layout.root_offset)
        shutil.copyfileobj(src, dst, MIB)


def _install_syslinux(disk: Path, work: Path) -> None:
    """SYSLINUX for BIOS (GPT boot code in sector 0, ldlinux.sys in the ESP) and UEFI."""
    with disk.open("r+b") as f:
        f.write(GPTMBR.read_bytes()[:440])  # boot code only: the partition table stays
    config = work / "syslinux.cfg"
    config.write_text(
        "SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT linux\nLABEL linux\n"
        f"  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND {kernel_cmdline('x86_64')}\n"
    )
    _mtools(["mmd", "-i", _esp(disk), "::/syslinux"])
    _esp_copy(
        disk,
        [
            (config, "::/syslinux/syslinux.cfg"),
            (SYSLINUX_EFI, "::/EFI/BOOT/BOOTX64.EFI"),
            (LDLINUX_E64, "::/EFI/BOOT/ldlinux.e64"),
            (config, "::/EFI/BOOT/syslinux.cfg"),
        ],
    )
    _run(["syslinux", "--offset", str(ESP_OFFSET), "--directory", "/syslinux", "-i", str(disk)])


def _install_systemd_boot(disk: Path, systemd_boot: Path, work: Path) -> None:
    """systemd-boot as the removable-media loader UEFI firmware starts, with one entry, chosen at
    once (timeout 0)."""
    loader = work / "loader.conf"
    loader.write_text("timeout 0\ndefault fedimg-sample.conf\n")
    entry = work / "fedimg-sample.conf"
    entry.write_text(
        "title fedimg sample\nlinux /vmlinuz\ninitrd /initrd.gz\n"
        f"options {kernel_cmdline('aarch64')}\n"
    )
    _mtools(["mmd", "-i", _esp(disk), "::/loader", "::/loader/entries"])
    _esp_copy(
        disk,
        [
            (systemd_boot, "::/EFI/BOOT/BOOTAA64.EFI"),
            (loader, "::/loader/loader.conf"),
            (entry, "::/loader/entries/fedimg-sample.conf"),
        ],
    )


def _esp(disk: Path) -> str:
    return f"{disk}@@{ESP_OFFSET}"  # mtools' syntax for a file system at an offset


def _esp_copy(disk: Path, files: Sequence[tuple[Path, str]]) -> None:
    for source, target in files:
        _mtools(["mcopy", "-i", _esp(disk), str(source), target])


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
