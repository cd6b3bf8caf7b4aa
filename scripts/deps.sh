#!/usr/bin/env bash
# Install what vmemspect and its real-kernel test bed need: QEMU, busybox,
# cpio, makedumpfile, a C compiler for the guest helpers (Debian packages),
# and vmemspect itself with its Python dependencies (editable).
# Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in qemu-system-x86 busybox-static cpio makedumpfile xz-utils zstd gcc libc6-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  echo "deps: installing ${need[*]}" >&2
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >&2
fi
python3 -m pip install -q -e '.[test]' >&2
