#!/usr/bin/env bash
# Installs the Debian packages fedimg's demo and tests need (QEMU for x86_64 and aarch64, the
# sample-image toolchain, RabbitMQ, Chromium and chromedriver for the catalog's browser test,
# Node.js and npm for the IAM policy evaluator), only when something is missing. Needs root (or
# sudo) on a machine without them. It also makes apt know Debian's arm64 packages (dpkg
# --add-architecture arm64): the aarch64 sample image is built from them with `apt-get download
# pkg:arm64`, which needs no root and installs nothing for arm64.
set -euo pipefail

packages=(
  qemu-system-x86 qemu-system-arm qemu-utils ovmf qemu-efi-aarch64 cloud-image-utils openssh-client
  busybox-static dropbear-bin syslinux syslinux-common syslinux-efi mtools dosfstools fdisk
  e2fsprogs cpio gzip xz-utils zstd rabbitmq-server
  chromium chromium-driver
)

# Node.js and npm run the tests' IAM policy evaluator (tests/iam); any node already on PATH will do.
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
need_arm64=0
dpkg --print-foreign-architectures | grep -qx arm64 || need_arm64=1
[ ${#missing[@]} -eq 0 ] && [ "$need_arm64" -eq 0 ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || {
    echo "fedimg: need root to install: ${missing[*]} (and to add the arm64 architecture)" >&2
    exit 1
  }
  as_root=(sudo)
fi
if [ "$need_arm64" -eq 1 ]; then
  echo "fedimg: adding the arm64 architecture to apt (for the aarch64 sample image's packages)"
  "${as_root[@]}" dpkg --add-architecture arm64
fi
"${as_root[@]}" apt-get update -qq
[ ${#missing[@]} -eq 0 ] && exit 0
echo "fedimg: installing Debian packages: ${missing[*]}"
# rabbitmq-server's postinst would start a system node; the tests start their own throwaway one.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
