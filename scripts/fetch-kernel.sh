#!/usr/bin/env bash
# Download one Debian kernel (boot image, qemu_fw_cfg.ko, optionally the
# DWARF vmlinux of its -dbg package, and its config when cheap) into a cache
# outside the repository, keyed by kernel release.  Nothing is installed.
#
# usage: scripts/fetch-kernel.sh SERIES FLAVOUR SUITE [--no-dbg] [--arch DEB_ARCH]
#   e.g. fetch-kernel.sh 7.2 cloud sid
#        fetch-kernel.sh 6.1 cloud bookworm-security
#        fetch-kernel.sh 6.12 rt trixie --no-dbg
#        fetch-kernel.sh 7.2 riscv64 sid --no-dbg --arch riscv64
# DEB_ARCH (default amd64) is Debian's architecture; a flavour named like
# the architecture is the architecture's only one (riscv64: release
# 7.2.13+deb14-riscv64, not ...-riscv64-riscv64).
# prints the cache directory of that kernel on stdout (last line).
#
# No version is written down anywhere: the newest package of the series and
# flavour in that suite's package index is taken.  The suites come from a
# private apt source list whose archive URIs are the ones this machine's apt
# already uses (so no archive host is named in the repository, and a site's
# own mirror or proxy is used as configured).
#
# Environment:
#   VMEMSPECT_CACHE                default ~/.cache/vmemspect
#   VMEMSPECT_APT_MIRROR           main archive URI (default: from /etc/apt)
#   VMEMSPECT_APT_SECURITY_MIRROR  security archive URI (default: from /etc/apt)
set -euo pipefail
usage="usage: fetch-kernel.sh SERIES FLAVOUR SUITE [--no-dbg] [--arch DEB_ARCH]"
series=${1:?$usage}; flavour=${2:?$usage}; suite=${3:?$usage}
shift 3
want_dbg=1
arch=amd64
while [ $# -gt 0 ]; do
  case "$1" in
    --no-dbg) want_dbg=0 ;;
    --arch) arch=${2:?$usage}; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
# The package lists of that architecture (debian-apt.sh).
export VMEMSPECT_DEB_ARCH=$arch
cache=${VMEMSPECT_CACHE:-$HOME/.cache/vmemspect}
die() { echo "fetch-kernel.sh: $*" >&2; exit 1; }
mkdir -p "$cache/debs"

# The private apt configuration (apt_opts, SUITES, SECURITY_SUITES, sec_uri):
# archive URIs from this machine's apt sources, lists refreshed at most once
# a day.
# (a suite of debian-apt.sh's EXTRA_SUITES gets its own lists)
export VMEMSPECT_APT_SUITE=$suite
. "$(dirname "$0")/debian-apt.sh"
case " $SECURITY_SUITES " in
  *" $suite "*) [ -n "$sec_uri" ] ||
    die "no Debian security archive in $apt_etc/sources.list{,.d/*.list,.d/*.sources}: set VMEMSPECT_APT_SECURITY_MIRROR to its URI" ;;
  *) case " $SUITES " in
       *" $suite "*) ;;
       *) die "unknown suite '$suite' (have: $SUITES $SECURITY_SUITES)" ;;
     esac ;;
esac

# The suite's own package index, so that suites with kernels of the same
# series (trixie and bookworm-backports) are not mixed up.
index=$(apt-get "${apt_opts[@]}" indextargets --format '$(FILENAME)' \
          'Identifier: Packages' "Release: $suite" "Architecture: $arch" | head -n 1)
[ -n "$index" ] && [ -e "$index" ] || die "no package index for $suite/$arch (apt-get update failed?)"
# "Package Version Size SHA256" of every package of the suite.
packages=$(/usr/lib/apt/apt-helper cat-file "$index" | awk '
  /^Package: / { p = $2 } /^Version: / { v = $2 } /^Size: / { s = $2 } /^SHA256: / { h = $2 }
  /^$/ { if (p != "") print p, v, s, h; p = v = s = h = "" }
  END { if (p != "") print p, v, s, h }')

# ---- the newest kernel of the series and flavour ----
# Releases: 6.1.0-56-cloud-amd64, 6.12.117+deb13-rt-amd64, 7.2.13+deb14-cloud-amd64,
# 7.2.13+deb14-riscv64.
if [ "$flavour" = "$arch" ]; then fl=$arch; else fl=$flavour-$arch; fi
krel="${series//./\\.}(\\.[0-9]+)?(-[0-9]+)?(\\+deb[0-9.]+)?-${fl}"
# amd64 kernels are signed: the boot image to take is the -unsigned
# package's.  Architectures without signed kernels (riscv64) have only
# linux-image-KVER (6.x) or linux-binary-KVER (7.x; linux-image-KVER is then
# a small package of dependencies: the binary one goes first at one version).
case "$arch" in
  amd64|arm64) names="linux-image-${krel}-unsigned|linux-binary-unsigned-${krel}" ;;
  *) names="linux-image-${krel}|linux-binary-${krel}" ;;
esac
pick=$(awk -v re="^(${names})\$" \
         '$1 ~ re { print $2, ($1 ~ /^linux-binary/ ? 1 : 0), $1 }' <<<"$packages" |
       sort -V | tail -n 1)
[ -n "$pick" ] || die "no $series $fl kernel in $suite"
pkg=${pick##* }
case "$pkg" in
  linux-binary-unsigned-*) kver=${pkg#linux-binary-unsigned-} ;;
  linux-binary-*) kver=${pkg#linux-binary-} ;;
  *) kver=${pkg#linux-image-}; kver=${kver%-unsigned} ;;
esac
dir=$cache/kernels/$kver
mkdir -p "$dir"
version=${pick%% *}
echo "fetch-kernel.sh: $suite: $pkg $version" >&2

have() { awk -v p="$1" '$1 == p { found = 1 } END { exit !found }' <<<"$packages"; }
field() { awk -v p="$1" -v i="$2" '$1 == p { print $i; exit }' <<<"$packages"; }
fetch() {  # fetch PACKAGE -> path of its .deb (of this suite's version) in the cache
  local p=$1 v s h f tmp
  v=$(field "$p" 2); s=$(field "$p" 3); h=$(field "$p" 4)
  [ -n "$v" ] || die "$p is not in $suite"
  f=$cache/debs/${p}_${v//:/%3a}_$arch.deb
  if [ ! -e "$f" ]; then
    # Into a directory of this process first: the cache is shared, and a
    # half-downloaded .deb must never carry the final name.
    tmp=$(mktemp -d "$cache/debs/.dl.XXXXXX")
    (cd "$tmp" && apt-get "${apt_opts[@]}" download "$p=$v" >&2) || { rm -rf "$tmp"; die "download of $p=$v failed"; }
    mv "$tmp"/*.deb "$f"
    rmdir "$tmp"
    echo "$f" >> "$work/fetched"
  fi
  [ "$(stat -c %s "$f")" = "$s" ] ||
    die "$f has $(stat -c %s "$f") bytes, the index says $s (still being downloaded by another process, or broken)"
  if [ -n "$h" ] && [ "$(sha256sum < "$f" | cut -d' ' -f1)" != "$h" ]; then
    die "$f does not match the SHA256 of the index"
  fi
  echo "$f"
}
# extract DEB DESTDIR PATTERN...: the members matching the (tar) patterns,
# in one pass over the archive, into DESTDIR.  Patterns that match nothing
# are not an error.
extract() {
  local deb=$1 dest=$2; shift 2
  mkdir -p "$dest"
  dpkg-deb --fsys-tarfile "$deb" | { tar -x -C "$dest" --wildcards "$@" 2>/dev/null || true; }
}
# first FILE...: the first that is a regular file (not a symlink: the 6.1 -dbg
# package links lib/modules/KVER/vmlinux to boot/vmlinux-KVER).
first() { local f; for f in "$@"; do [ -f "$f" ] && [ ! -L "$f" ] && { echo "$f"; return 0; }; done; return 1; }
unpack_ko() {  # unpack_ko FILE DEST: qemu_fw_cfg.ko, .ko.xz or .ko.zst
  case "$1" in
    *.xz)  xz -dc "$1" > "$2.tmp" ;;
    *.zst) zstd -qdc "$1" > "$2.tmp" ;;
    *)     cat "$1" > "$2.tmp" ;;
  esac
  mv "$2.tmp" "$2"
}

work=$(mktemp -d "$dir/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
# (A kernel fetched before configs were kept has no "package" file: look
# for its config once more.)
if [ ! -s "$dir/vmlinuz" ] || [ ! -s "$dir/qemu_fw_cfg.ko" ] || { [ ! -s "$dir/config" ] && [ ! -e "$dir/package" ]; }; then
  # Boot image, config and the module, wherever this layout keeps them:
  #   linux-image-*-unsigned: boot/vmlinuz-KVER, boot/config-KVER, modules inside
  #   linux-binary-unsigned-*: usr/lib/modules/KVER/vmlinuz.unsigned;
  #     modules in linux-modules-KVER, config in linux-base-KVER
  #   riscv64: linux-image-KVER (6.x): boot/vmlinux-KVER (an Image with an
  #     EFI stub, not an ELF vmlinux); linux-binary-KVER (7.x):
  #     usr/lib/modules/KVER/vmlinuz (the same kind)
  pats=("./boot/vmlinuz-$kver" "./boot/vmlinux-$kver" "./boot/config-$kver" "./usr/lib/modules/$kver/vmlinuz*"
        "./usr/lib/modules/$kver/config" "*/qemu_fw_cfg.ko*")
  deb=$(fetch "$pkg")
  extract "$deb" "$work/img" "${pats[@]}"
  ko=$(find "$work" -name 'qemu_fw_cfg.ko*' | head -n 1)
  if [ -z "$ko" ] && have "linux-modules-$kver"; then
    deb=$(fetch "linux-modules-$kver")
    extract "$deb" "$work/mod" "*/qemu_fw_cfg.ko*"
    ko=$(find "$work" -name 'qemu_fw_cfg.ko*' | head -n 1)
  fi
  cfg=$(first "$work/img/boot/config-$kver" "$work/img/usr/lib/modules/$kver/config" || true)
  # linux-base is small (well under a MB): worth it for the config.
  if [ -z "$cfg" ] && have "linux-base-$kver" && [ "$(field "linux-base-$kver" 3)" -lt 5000000 ]; then
    deb=$(fetch "linux-base-$kver")
    extract "$deb" "$work/base" "./usr/lib/modules/$kver/config" "./boot/config-$kver"
    cfg=$(first "$work/base/usr/lib/modules/$kver/config" "$work/base/boot/config-$kver" || true)
  fi
  img=$(first "$work/img/boot/vmlinuz-$kver" "$work/img/usr/lib/modules/$kver/vmlinuz.unsigned" \
              "$work/img/usr/lib/modules/$kver/vmlinuz" "$work/img/boot/vmlinux-$kver") ||
    die "no boot image for $kver in $pkg"
  [ -n "$ko" ] || die "no qemu_fw_cfg.ko for $kver (in $pkg or linux-modules-$kver)"
  mv "$img" "$dir/vmlinuz"
  unpack_ko "$ko" "$dir/qemu_fw_cfg.ko"
  if [ -n "$cfg" ]; then mv "$cfg" "$dir/config"; else echo "fetch-kernel.sh: no config for $kver (skipped)" >&2; fi
fi
if [ "$want_dbg" = 1 ] && [ ! -s "$dir/vmlinux" ]; then
  dbg_pkg=linux-image-$kver-dbg
  have "$dbg_pkg" || die "$dbg_pkg is not in $suite"
  dbg=$(fetch "$dbg_pkg")
  extract "$dbg" "$work/dbg" "./usr/lib/debug/lib/modules/$kver/vmlinux" "./usr/lib/debug/boot/vmlinux-$kver"
  v=$(first "$work/dbg/usr/lib/debug/lib/modules/$kver/vmlinux" "$work/dbg/usr/lib/debug/boot/vmlinux-$kver") ||
    die "no vmlinux in $dbg"
  mv "$v" "$dir/vmlinux"
  # The -dbg .deb is large and not needed once its vmlinux is out; only one
  # this process downloaded is removed (the cache is shared).
  if grep -qxF "$dbg" "$work/fetched" 2>/dev/null; then rm -f "$dbg"; fi
fi
echo "$kver" > "$dir/release"
echo "$suite $pkg $version" > "$dir/package"
echo "$dir"
