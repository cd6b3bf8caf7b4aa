#!/usr/bin/env bash
# A private apt configuration over Debian suites beyond this machine's own
# (SUITES on the main archive, SECURITY_SUITES on the security archive),
# whose archive URIs are the ones this machine's apt already uses: no
# archive host is named in the repository, and a site's own mirror or proxy
# is used as configured.  Its package lists live in the cache and are
# refreshed at most once a day, one process at a time.  Nothing is installed.
#
# Sourced (scripts/fetch-kernel.sh): defines apt_opts (an array of apt
# options), aptdir, main_uri, sec_uri, SUITES, SECURITY_SUITES, apt_etc.
# Run: the apt command given, with that configuration, e.g.
#   scripts/debian-apt.sh apt-cache policy makedumpfile
#   (cd DIR && scripts/debian-apt.sh apt-get download makedumpfile)
#
# Environment:
#   VMEMSPECT_CACHE                default ~/.cache/vmemspect
#   VMEMSPECT_APT_MIRROR           main archive URI (default: from /etc/apt)
#   VMEMSPECT_APT_SECURITY_MIRROR  security archive URI (default: from /etc/apt)
#   VMEMSPECT_DEB_ARCH             Debian architecture of the package lists
#                                  (default amd64; e.g. riscv64: the guest's
#                                  packages, never installed on this host)
# The suites of the private source list: SUITES on the main archive,
# SECURITY_SUITES on the security archive.
SUITES="sid trixie bookworm bookworm-backports"
SECURITY_SUITES="bookworm-security"
# Suites added later get a source list and lists directory of their own
# (apt-suites-SUITE), chosen with VMEMSPECT_APT_SUITE=SUITE (fetch-kernel.sh
# sets it): the shared list above never changes for them, so a checkout
# with another set of suites does not make the others' apt-get update run
# again and prune their lists.
EXTRA_SUITES="trixie-backports"
extra_suite=""
case " $EXTRA_SUITES " in
  *" ${VMEMSPECT_APT_SUITE:-none} "*) extra_suite=$VMEMSPECT_APT_SUITE ;;
esac
[ -z "$extra_suite" ] || { SUITES=$extra_suite; SECURITY_SUITES=""; }
deb_arch=${VMEMSPECT_DEB_ARCH:-amd64}
# Debian has riscv64 from trixie on: no bookworm suites for it.
if [ "$deb_arch" = riscv64 ]; then SUITES="sid trixie"; SECURITY_SUITES=""; fi
apt_etc=/etc/apt
cache=${VMEMSPECT_CACHE:-$HOME/.cache/vmemspect}
# Its own directory (not apt/, which older versions of this script fill with
# other suites: a shared lists directory would be pruned by each other's
# `apt-get update`), one per architecture for the same reason.
aptdir=$cache/apt-suites
[ "$deb_arch" = amd64 ] || aptdir=$cache/apt-suites-$deb_arch
[ -z "$extra_suite" ] || aptdir=$aptdir-$extra_suite

# ---- archive URIs from this machine's apt sources ----
# Prints "URI SUITE" for every enabled binary ("deb") source, from the
# one-line format (*.list) and the deb822 format (*.sources); apt itself
# reads no other file names.
machine_sources() {
  local f
  for f in "$apt_etc/sources.list" "$apt_etc"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
      awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
  done
  for f in "$apt_etc"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush(  i, j, nu, ns, u, s) {
        if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
          nu = split(uris, u, " "); ns = split(suites, s, " ")
          for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
        }
        types = uris = suites = field = ""; enabled = "yes"
      }
      BEGIN { enabled = "yes" }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0; next }
      {
        key = tolower($0); sub(/:.*/, "", key)
        val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        field = key
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "enabled") enabled = val
      }
      END { flush() }' "$f"
  done
}
codename=$( (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || true)
main_uri=${VMEMSPECT_APT_MIRROR:-}
sec_uri=${VMEMSPECT_APT_SECURITY_MIRROR:-}
if [ -z "$main_uri" ] || [ -z "$sec_uri" ]; then
  srcs=$(machine_sources)
  # The main archive serves a release (bookworm, bookworm-updates, ...), the
  # security archive a suite ending in -security.
  rel="(${codename:+$codename|}sid|unstable|experimental|testing|stable|oldstable|oldoldstable|bullseye|bookworm|trixie|forky|duke)"
  [ -n "$main_uri" ] || main_uri=$(awk -v re="^$rel(-updates|-backports)?\$" '$2 ~ re { print $1; exit }' <<<"$srcs")
  [ -n "$sec_uri" ] || sec_uri=$(awk '$2 ~ /-security$/ { print $1; exit }' <<<"$srcs")
fi
main_uri=${main_uri%/}; sec_uri=${sec_uri%/}
if [ -z "$main_uri" ]; then
  echo "debian-apt.sh: no Debian archive in $apt_etc/sources.list{,.d/*.list,.d/*.sources}: set VMEMSPECT_APT_MIRROR to its URI" >&2
  exit 1
fi

# ---- private apt configuration ----
mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial"
sources=$(for s in $SUITES; do echo "deb $main_uri $s main"; done
          if [ -n "$sec_uri" ]; then for s in $SECURITY_SUITES; do echo "deb $sec_uri $s main"; done; fi)
list=$aptdir/sources.list
[ "$(cat "$list" 2>/dev/null || true)" = "$sources" ] || echo "$sources" > "$list"
apt_opts=(-o Dir::Etc::SourceList="$list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$aptdir/lists" -o Dir::Cache="$aptdir/cache"
          -o APT::Sandbox::User=root -o Acquire::Languages=none)
# Lists and downloads of another architecture than the host's: only that one
# (apt-get download then fetches the .deb of that architecture).
[ "$deb_arch" = amd64 ] || apt_opts+=(-o APT::Architecture="$deb_arch" -o APT::Architectures::="$deb_arch")
# Refresh the package lists at most once a day, or when the sources changed;
# one process at a time (the cache is shared).
stamp=$aptdir/lists/.stamp
(
  flock 9
  if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440)" ] || [ "$list" -nt "$stamp" ]; then
    if apt-get "${apt_opts[@]}" update >&2; then
      touch "$stamp"
    else
      echo "debian-apt.sh: apt-get update failed; using the package lists at hand" >&2
    fi
  fi
) 9>"$aptdir/.lock"

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  [ $# -gt 0 ] || { echo "usage: debian-apt.sh apt-get|apt-cache ARGS..." >&2; exit 2; }
  cmd=$1; shift
  exec "$cmd" "${apt_opts[@]}" "$@"
fi
