#!/usr/bin/env bash
# Install what vmemspect and its real-kernel test bed need: QEMU (x86_64
# and, in qemu-system-misc, riscv64), busybox,
# cpio, makedumpfile, kexec-tools, a C compiler for the guest helpers (and a
# riscv64 cross compiler with its static C library for riscv64 guests),
# python3-venv, and for the monitoring tests promtool (package prometheus),
# prometheus-node-exporter and systemd-analyze (package systemd) (Debian
# packages), then vmemspect itself with its Python dependencies, editable,
# into the virtual environment .venv of this checkout, the test bed beside it
# (scripts/testbed, a package of its own: scripts/pyproject.toml) (Debian's
# and Ubuntu's own python3 refuse `pip install` outside one: PEP 668). The
# Python is Debian's /usr/bin/python3 where it exists (VMEMSPECT_PYTHON
# chooses another). Idempotent: installs only what is
# missing. Prints nothing on stdout.
#
# What riscv64 guests run besides (busybox-static, kexec-tools, makedumpfile
# of Debian's riscv64 packages) is not installed: the test bed downloads
# those packages with `apt-get download` into ~/.cache/vmemspect/guest-debs/
# and unpacks them there (scripts/testbed/guestdebs.py; no
# `dpkg --add-architecture` on this machine).
#
#   scripts/deps.sh                 everything (the test bed too)
#   scripts/deps.sh --python-only   only .venv (vmemspect on dumps and fixtures)
#
# Without root and without sudo the Debian packages are skipped with a note
# (apt needs root): vmemspect on dumps and on fixtures/ needs none of them,
# only a Python with venv (python3-venv on Debian and Ubuntu).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${VMEMSPECT_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
fi
pkgs=(python3-venv)
[ "${1:-}" = --python-only ] || pkgs+=(qemu-system-x86 busybox-static cpio makedumpfile kexec-tools \
                                      xz-utils zstd gcc libc6-dev \
                                      qemu-system-misc gcc-riscv64-linux-gnu libc6-dev-riscv64-cross \
                                      prometheus prometheus-node-exporter systemd)
need=()
if command -v dpkg-query >/dev/null; then
  for pkg in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
  done
fi
# A venv already made, or a Python that can make one, needs no python3-venv.
if [ -x .venv/bin/python ] || "$python" -c "import ensurepip, venv" 2>/dev/null; then
  need=("${need[@]/python3-venv}")
  read -r -a need <<<"${need[*]}"
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo_=""
  if [ "$(id -u)" != 0 ]; then
    # sudo only if it lets us (asks for the password on a terminal).
    if command -v sudo >/dev/null && sudo -v 2>/dev/null; then sudo_=sudo; else sudo_=none; fi
  fi
  if [ "$sudo_" = none ]; then
    echo "deps: not root and no usable sudo: skipping the Debian packages ${need[*]}" >&2
    echo "deps: (the QEMU test bed and 'scripts/demo.sh --boot' need them; vmemspect on" \
         "dumps and on fixtures/ does not)" >&2
  else
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
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$python" -c "import ensurepip, venv" 2>/dev/null; then
    echo "deps: $python cannot make a virtual environment (no venv/ensurepip module):" \
         "install python3-venv (as root: apt-get install python3-venv), or point" \
         "VMEMSPECT_PYTHON at a Python that has it" >&2
    exit 2
  fi
  echo "deps: creating .venv with $python" >&2
  "$python" -m venv .venv >&2
fi
# pip runs again only when a pyproject.toml changed since the last install.
# The test bed (scripts/pyproject.toml) goes in beside vmemspect, editable: the
# tests and scripts import it as a package.
stamp=.venv/.vmemspect-deps
want=$(cat pyproject.toml scripts/pyproject.toml | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/vmemspect ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' -e ./scripts >&2
  echo "$want" > "$stamp"
fi
