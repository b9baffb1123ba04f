#!/usr/bin/env bash
# The Prometheus tools the observability checks, the alerting test and the demo use, without root:
#   prometheus, promtool                (promtool check rules / test rules; a real Prometheus)
#   prometheus-alertmanager, amtool     (amtool check-config; a real Alertmanager)
#
#   deploy/observability/install.sh          make sure they are there; one line on stdout saying where
#   deploy/observability/install.sh bin-dir  the same, but print only the folder(s) to put on PATH
#
# Where: $CACHE/bin holds a symlink to each of the four, CACHE being $DKNN_TOOLS_CACHE (default
# ~/.cache/dknn-agent); the Makefile puts $CACHE/bin first on PATH for every recipe (`make tools`
# runs this script; make test and make demo do it themselves).
# - $CACHE/bin complete: nothing to do (a fraction of a second).
# - else all four already on PATH (installed system-wide, say): those are used, nothing is fetched.
# - else Debian's packages prometheus and prometheus-alertmanager are downloaded and unpacked, not
#   installed, into $CACHE/prometheus-<os>-<arch>/ by deploy/tools/debian-package.sh (apt-get
#   download with private apt state, as any user; about 10 s and 30 MB), and linked into $CACHE/bin.
#   To fetch again (a newer Debian package), delete that folder and $CACHE/bin.
# Needs apt-get and dpkg-deb (Debian, Ubuntu). Elsewhere, put the four on PATH by hand: Prometheus
# 2.x and Alertmanager from https://prometheus.io/download/ (Alertmanager's binary is named
# alertmanager there: link it as prometheus-alertmanager), or `go install` alertmanager and amtool
# (github.com/prometheus/alertmanager/cmd/...); prometheus and promtool have replace directives in
# their go.mod, which `go install` refuses.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${DKNN_TOOLS_CACHE:-$HOME/.cache/dknn-agent}"
BIN="$CACHE/bin"
TOOLS=(prometheus promtool prometheus-alertmanager amtool)

mode="${1:-}"
case "$mode" in
  "" | bin-dir) ;;
  *) echo "usage: install.sh [bin-dir]" >&2; exit 1 ;;
esac

report() {  # $1: the folder(s) with the tools; $2: what they are
  if [ "$mode" = bin-dir ]; then echo "$1"; else echo "observability tools ($2): $1"; fi
}

cached() {  # every tool in $BIN, each a link that resolves to an executable
  local tool
  for tool in "${TOOLS[@]}"; do [ -x "$BIN/$tool" ] || return 1; done
}

versions() {  # "prometheus 2.42.0+ds-5+deb12u1, prometheus-alertmanager 0.25.0-1+b4" from the unpacked packages
  local dir
  dir="$(readlink "$BIN/promtool")"
  dir="${dir%/usr/bin/promtool}"
  awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}' "$dir/.packages" 2>/dev/null || echo "versions unknown"
}

if cached; then
  report "$BIN" "$(versions)"
  exit 0
fi

on_path=()
for tool in "${TOOLS[@]}"; do
  path="$(command -v "$tool" 2>/dev/null)" || break
  on_path+=("$(dirname "$path")")
done
if [ ${#on_path[@]} -eq ${#TOOLS[@]} ]; then
  report "$(printf '%s\n' "${on_path[@]}" | awk '!seen[$0]++' | paste -sd: -)" "on PATH"
  exit 0
fi

fetch="$here/../tools/debian-package.sh"
status=0
tag="$(bash "$fetch" tag)" || status=$?
if [ "$status" -eq 2 ]; then
  echo "install.sh: not a Debian or Ubuntu machine (no apt-get/dpkg-deb); put prometheus, promtool," \
    "prometheus-alertmanager and amtool on PATH by hand (see the comment at the top of $0)" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"
dest="$CACHE/prometheus-$tag"
bash "$fetch" "$dest" prometheus prometheus-alertmanager

for tool in "${TOOLS[@]}"; do
  [ -x "$dest/usr/bin/$tool" ] || { echo "install.sh: $dest has no usr/bin/$tool (delete it and run again)" >&2; exit 1; }
done
"$dest/usr/bin/promtool" --version >/dev/null 2>&1 || { echo "install.sh: $dest/usr/bin/promtool does not run" >&2; exit 1; }
"$dest/usr/bin/amtool" --version >/dev/null 2>&1 || { echo "install.sh: $dest/usr/bin/amtool does not run" >&2; exit 1; }
mkdir -p "$BIN"
for tool in "${TOOLS[@]}"; do  # replace each link in one rename, so a reader never sees it missing
  ln -sfn "$dest/usr/bin/$tool" "$BIN/.$tool.tmp-$$"
  mv -Tf "$BIN/.$tool.tmp-$$" "$BIN/$tool"
done
report "$BIN" "$(versions)"
