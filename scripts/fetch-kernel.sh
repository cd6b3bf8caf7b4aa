#!/usr/bin/env bash
# Download one Debian cloud kernel (boot image, qemu_fw_cfg.ko, DWARF
# vmlinux) into a cache outside the repository, keyed by kernel release.
#
# usage: scripts/fetch-kernel.sh 6.12|7.2 [--no-dbg]
# prints the cache directory of that kernel on stdout (last line).
# Environment: VMEMSPECT_CACHE (default ~/.cache/vmemspect).
set -euo pipefail
series=${1:?usage: fetch-kernel.sh 6.12|7.2 [--no-dbg]}
want_dbg=1
[ "${2:-}" = --no-dbg ] && want_dbg=0
cache=${VMEMSPECT_CACHE:-$HOME/.cache/vmemspect}
aptdir=$cache/apt
mkdir -p "$aptdir/lists/partial" "$cache/debs"

# A private apt configuration, so the host's sources stay as they are.
cat > "$aptdir/sources.list" <<SRC
deb http://deb.debian.org/debian sid main
deb http://deb.debian.org/debian trixie main
SRC
apt_opts=(-o Dir::Etc::SourceList="$aptdir/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$aptdir/lists" -o Dir::Cache="$aptdir/cache"
          -o APT::Sandbox::User=root)
mkdir -p "$aptdir/cache/archives/partial"
# Refresh the package lists at most once a day.
stamp=$aptdir/lists/.stamp
if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440)" ]; then
  apt-get "${apt_opts[@]}" update >&2
  touch "$stamp"
fi

# The newest cloud-amd64 kernel of the series, from the package index.
case "$series" in
  7.*) pat="^linux-binary-unsigned-${series//./\\.}\.[0-9]+\+deb[0-9]+-cloud-amd64\$" ;;
  6.*) pat="^linux-image-${series//./\\.}\.[0-9]+\+deb[0-9]+-cloud-amd64-unsigned\$" ;;
  *) echo "fetch-kernel.sh: unknown series '$series' (want 6.12 or 7.2)" >&2; exit 2 ;;
esac
pkg=$(apt-cache "${apt_opts[@]}" pkgnames | grep -E "$pat" | sort -V | tail -n 1 || true)
[ -n "$pkg" ] || { echo "fetch-kernel.sh: no package matching $pat on the mirror" >&2; exit 1; }
case "$pkg" in
  linux-binary-unsigned-*) kver=${pkg#linux-binary-unsigned-} ;;
  *) kver=${pkg#linux-image-}; kver=${kver%-unsigned} ;;
esac
dir=$cache/kernels/$kver
mkdir -p "$dir"

fetch() {  # fetch PACKAGE -> path of its .deb in the cache
  local p=$1 f
  f=$(ls "$cache/debs/${p}_"*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$f" ]; then
    (cd "$cache/debs" && apt-get "${apt_opts[@]}" download "$p" >&2)
    f=$(ls "$cache/debs/${p}_"*.deb | head -n 1)
  fi
  echo "$f"
}
extract() {  # extract DEB PATH-IN-DEB DEST
  dpkg-deb --fsys-tarfile "$1" | tar -xO "./$2" > "$3.tmp" && mv "$3.tmp" "$3"
}

if [ ! -s "$dir/vmlinuz" ] || [ ! -s "$dir/qemu_fw_cfg.ko" ]; then
  case "$pkg" in
    linux-binary-unsigned-*)
      deb=$(fetch "$pkg"); mdeb=$(fetch "linux-modules-$kver")
      extract "$deb" "usr/lib/modules/$kver/vmlinuz.unsigned" "$dir/vmlinuz"
      src=$mdeb ;;
    *)
      deb=$(fetch "$pkg")
      extract "$deb" "boot/vmlinuz-$kver" "$dir/vmlinuz"
      src=$deb ;;
  esac
  # List first, then grep: an early-closing pipe would fail under pipefail.
  list=$(dpkg-deb --fsys-tarfile "$src" | tar -tf -)
  ko=$(grep -m1 -E '/qemu_fw_cfg\.ko(\.xz|\.zst)?$' <<<"$list")
  case "$ko" in
    *.xz)  dpkg-deb --fsys-tarfile "$src" | tar -xO "$ko" | xz -d > "$dir/qemu_fw_cfg.ko" ;;
    *.zst) dpkg-deb --fsys-tarfile "$src" | tar -xO "$ko" | zstd -d > "$dir/qemu_fw_cfg.ko" ;;
    *)     dpkg-deb --fsys-tarfile "$src" | tar -xO "$ko" > "$dir/qemu_fw_cfg.ko" ;;
  esac
fi
if [ "$want_dbg" = 1 ] && [ ! -s "$dir/vmlinux" ]; then
  dbg=$(fetch "linux-image-$kver-dbg")
  list=$(dpkg-deb --fsys-tarfile "$dbg" | tar -tf -)
  # grep -F: the release contains '+', a regex operator.
  path=$(grep -m1 -xF -e "./usr/lib/debug/lib/modules/$kver/vmlinux" -e "./usr/lib/debug/boot/vmlinux-$kver" <<<"$list")
  extract "$dbg" "${path#./}" "$dir/vmlinux"
  # The .deb is large and no longer needed once its vmlinux is out.
  rm -f "$dbg"
fi
echo "$kver" > "$dir/release"
echo "$dir"
