#!/usr/bin/env bash
# Unpacks Debian packages into a folder, as any user: `apt-get download` with apt's state (package
# lists, archives) in a private temporary folder instead of /var/lib/apt and /var/cache/apt, then
# `dpkg-deb -x`. Nothing is installed system-wide and dependencies are not fetched (the packages
# this project takes this way hold static Go binaries, or, with --deps, a relocatable Go toolchain). The sources are the machine's own
# (/etc/apt/sources.list*); apt-get update runs once per fetch, into the temporary folder (seconds).
#
#   deploy/tools/debian-package.sh [--deps] DEST PACKAGE...
#                                                    unpack PACKAGE... into DEST (DEST/usr/bin/...);
#                                                    --deps: also what they depend on, recursively,
#                                                    that this machine has not installed
#   deploy/tools/debian-package.sh tag               print this machine's tag for cache folder names,
#                                                    e.g. debian12-amd64
#
# Idempotent: nothing happens when DEST/.packages exists (it lists "package version arch" of what
# was unpacked; delete DEST to fetch again). Atomic: the work happens in DEST.tmp-PID beside DEST,
# renamed to DEST only when complete, so an interrupted run never leaves a half DEST (the next run
# removes what an interrupted one left); runs for one DEST take turns (flock on DEST.lock).
# Progress and errors on stderr, nothing on stdout.
# Exit status: 0 done; 1 a failure; 2 apt-get or dpkg-deb missing (not a Debian or Ubuntu machine).
set -euo pipefail

say() { echo "debian-package: $*" >&2; }
for tool in apt-get dpkg-deb dpkg flock; do
  command -v "$tool" >/dev/null 2>&1 || { say "$tool not found (this needs a Debian or Ubuntu machine)"; exit 2; }
done

if [ "${1:-}" = tag ]; then
  os=unknown
  # shellcheck disable=SC1091
  [ -r /etc/os-release ] && os="$(. /etc/os-release && echo "${ID:-unknown}${VERSION_ID:-}")"
  echo "$os-$(dpkg --print-architecture)"
  exit 0
fi

deps=0
[ "${1:-}" = --deps ] && { deps=1; shift; }
[ $# -ge 2 ] || { say "usage: debian-package.sh [--deps] DEST PACKAGE... | tag"; exit 1; }
dest="$1"
shift
[ -f "$dest/.packages" ] && exit 0

mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9  # one fetch per DEST at a time: a second run waits for the first, then finds DEST complete
[ -f "$dest/.packages" ] && exit 0
rm -rf "$dest".tmp-*  # with the lock held, these are left by an interrupted run
tmp="$dest.tmp-$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs" "$tmp/root"

private=(-o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o Debug::NoLocking=1 -o "APT::Sandbox::User=$(id -un)")
apt=(apt-get -q "${private[@]}")
say "fetching Debian's $* into $dest"
if ! "${apt[@]}" update >"$tmp/update.log" 2>&1; then
  cat "$tmp/update.log" >&2
  say "apt-get update (private lists) failed"
  exit 1
fi
packages=("$@")
if [ "$deps" = 1 ]; then  # the closure of Depends and Pre-Depends, less what dpkg says is installed
  mapfile -t packages < <(apt-cache "${private[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "$@" | grep -v '^[ <]' | sort -u |
    while read -r pkg; do
      dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q ' installed$' || echo "$pkg"
    done)
fi
if ! (cd "$tmp/debs" && "${apt[@]}" download "${packages[@]}") >"$tmp/download.log" 2>&1; then
  cat "$tmp/download.log" >&2
  say "apt-get download ${packages[*]} failed"
  exit 1
fi
for deb in "$tmp"/debs/*.deb; do
  dpkg-deb -x "$deb" "$tmp/root"
  dpkg-deb -f "$deb" Package Version Architecture | awk -F': ' '{printf "%s%s", (NR > 1 ? " " : ""), $2} END {print ""}' \
    >>"$tmp/root/.packages"
done
rm -rf "$dest"  # an incomplete DEST (no .packages) made by hand or by an older script
mv -T "$tmp/root" "$dest"
