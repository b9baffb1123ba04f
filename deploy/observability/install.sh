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
# - else, without apt-get (not Debian or Ubuntu) but with Go: the same versions as Debian 12's built
#   from the Go module proxy into $CACHE/prometheus-go-<versions>/ (alertmanager and amtool with
#   `go install`; prometheus and promtool through a wrapper module, since their go.mod has replace
#   directives, which `go install` refuses): about 5 minutes on 2 cores the first time, seconds
#   once Go's module and build caches hold them.
#   DKNN_TOOLS_SOURCE=go takes that route on Debian too; otherwise it is "auto".
# Elsewhere, put the four on PATH by hand: Prometheus 2.x and Alertmanager from
# https://prometheus.io/download/ (Alertmanager's binary is named alertmanager there: link it as
# prometheus-alertmanager).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${DKNN_TOOLS_CACHE:-$HOME/.cache/dknn-agent}"
BIN="$CACHE/bin"
TOOLS=(prometheus promtool prometheus-alertmanager amtool)
# The Go route's versions: Debian 12's. Prometheus 2.X.Y is the Go module version v0.X.Y.
PROMETHEUS_VERSION=2.42.0
ALERTMANAGER_VERSION=0.25.0

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

go_build() {  # $1: DEST; the four tools into DEST/usr/bin, built from the Go module proxy
  local dest="$1" gomod
  mkdir -p "$(dirname "$dest")"
  exec 9>"$dest.lock"
  flock 9  # one build per DEST at a time
  [ -f "$dest/.packages" ] && return 0
  rm -rf "$dest".tmp-*  # with the lock held, left by an interrupted run
  tmp="$dest.tmp-$$"  # global: the EXIT trap reads it
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/root/usr/bin" "$tmp/wrap"
  quiet() {  # run "$@", showing its output (go's download and build lines) only when it fails
    "$@" >"$tmp/go.log" 2>&1 || { cat "$tmp/go.log" >&2; echo "install.sh: failed: $*" >&2; exit 1; }
  }
  echo "install.sh: building Prometheus $PROMETHEUS_VERSION and Alertmanager $ALERTMANAGER_VERSION with Go" \
    "(about 5 minutes the first time)" >&2
  GOBIN="$tmp/root/usr/bin" quiet go install -ldflags "-X github.com/prometheus/common/version.Version=$ALERTMANAGER_VERSION" \
    "github.com/prometheus/alertmanager/cmd/alertmanager@v$ALERTMANAGER_VERSION" \
    "github.com/prometheus/alertmanager/cmd/amtool@v$ALERTMANAGER_VERSION"
  mv "$tmp/root/usr/bin/alertmanager" "$tmp/root/usr/bin/prometheus-alertmanager"
  quiet go mod download "github.com/prometheus/prometheus@v0.${PROMETHEUS_VERSION#2.}"
  gomod="$(go mod download -json "github.com/prometheus/prometheus@v0.${PROMETHEUS_VERSION#2.}" |
    sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  {
    echo "module dknn.local/prometheuswrapper"
    sed -n 's/^go \(.*\)/go \1/p' "$gomod"
    echo "require github.com/prometheus/prometheus v0.${PROMETHEUS_VERSION#2.}"
    # its replace and exclude directives, which only a main module's go.mod applies
    awk '/^(replace|exclude) \($/ {b = 1} b {print} b && /^\)/ {b = 0; next} !b && /^(replace|exclude) [^(]/' "$gomod"
  } >"$tmp/wrap/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s"\n\t_ "%s"\n)\n' \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool >"$tmp/wrap/tools.go"
  cd "$tmp/wrap"
  quiet go mod tidy
  quiet go build -ldflags "-X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" -o "$tmp/root/usr/bin/" \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
  cd - >/dev/null
  printf 'prometheus %s go\nalertmanager %s go\n' "$PROMETHEUS_VERSION" "$ALERTMANAGER_VERSION" >"$tmp/root/.packages"
  rm -rf "$dest"
  mv -T "$tmp/root" "$dest"
}

no_route() {
  echo "install.sh: $1; put prometheus, promtool, prometheus-alertmanager and amtool on PATH by hand" \
    "(see the comment at the top of $0)" >&2
  exit 1
}

fetch="$here/../tools/debian-package.sh"
status=0
case "${DKNN_TOOLS_SOURCE:-auto}" in
  auto) tag="$(bash "$fetch" tag)" || status=$? ;;
  go) status=2 ;;
  *) echo "install.sh: DKNN_TOOLS_SOURCE must be auto or go, not ${DKNN_TOOLS_SOURCE}" >&2; exit 1 ;;
esac
if [ "$status" -eq 2 ]; then  # no apt-get: Go, or by hand
  command -v go >/dev/null 2>&1 || no_route "no apt-get/dpkg-deb (not Debian or Ubuntu) and no Go to build them with"
  dest="$CACHE/prometheus-go-$PROMETHEUS_VERSION-alertmanager-$ALERTMANAGER_VERSION"
  go_build "$dest"
else
  [ "$status" -eq 0 ] || exit "$status"
  dest="$CACHE/prometheus-$tag"
  bash "$fetch" "$dest" prometheus prometheus-alertmanager
fi

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
