#!/usr/bin/env bash
# Install what vmemspect and its real-kernel test bed need: QEMU, busybox,
# cpio, makedumpfile, kexec-tools, a C compiler for the guest helpers,
# python3-venv, and for the monitoring tests promtool (package prometheus),
# prometheus-node-exporter and systemd-analyze (package systemd) (Debian
# packages), then vmemspect itself with its Python
# dependencies, editable, into the virtual environment .venv of this
# checkout (Debian's and Ubuntu's own python3 refuse `pip install` outside
# one: PEP 668). The Python is Debian's /usr/bin/python3 where it exists
# (VMEMSPECT_PYTHON chooses another). Idempotent: installs only what is
# missing. Prints nothing on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in qemu-system-x86 busybox-static cpio makedumpfile kexec-tools xz-utils zstd gcc \
           libc6-dev python3-venv prometheus prometheus-node-exporter systemd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  echo "deps: installing ${need[*]}" >&2
  $sudo_ apt-get update -qq >&2
  # prometheus and prometheus-node-exporter are installed for their programs
  # (promtool, the exporter the tests start on 127.0.0.1); their services
  # must not start: on a host run by systemd, mask them before they exist.
  if [ -d /run/systemd/system ]; then
    $sudo_ systemctl mask -q prometheus.service prometheus-node-exporter.service >&2 || true
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >&2
fi
python=${VMEMSPECT_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "deps: creating .venv with $python" >&2
  "$python" -m venv .venv >&2
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >&2
