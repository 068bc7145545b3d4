#!/usr/bin/env bash
# Installs the Debian packages fedimg's demo and tests need (QEMU, the sample-image toolchain,
# RabbitMQ), only when something is missing. Needs root (or sudo) on a machine without them.
set -euo pipefail

packages=(
  qemu-system-x86 qemu-utils ovmf cloud-image-utils openssh-client
  busybox-static dropbear-bin syslinux syslinux-common syslinux-efi mtools dosfstools fdisk
  e2fsprogs cpio gzip xz-utils zstd rabbitmq-server
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "fedimg: need root to install: ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
echo "fedimg: installing Debian packages: ${missing[*]}"
"${as_root[@]}" apt-get update -qq
# rabbitmq-server's postinst would start a system node; the tests start their own throwaway one.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
