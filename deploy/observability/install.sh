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
# - else prometheus and promtool: Debian's package `prometheus`, downloaded and unpacked, not
#   installed, into $CACHE/prometheus-<os>-<arch>/ by deploy/tools/debian-package.sh (apt-get
#   download with private apt state, as any user; about 10 s).
#   Alertmanager and amtool: built with `go install` from the Go module proxy into
#   $CACHE/alertmanager-go-<version>/ (about a minute on 2 cores the first time). Debian's
#   alertmanager cannot run unpacked: it reads its default notification template from
#   /usr/share/prometheus/alertmanager/, and the flag that moved it went in 0.24. Go is the
#   machine's (PATH, /usr/local/go/bin), else Debian's golang-go unpacked into $CACHE/go-<os>-<arch>/
#   (80 MB once).
# - without apt-get (not Debian or Ubuntu) but with Go, prometheus and promtool are built too, through
#   a wrapper module (their go.mod has replace directives, which `go install` refuses): about
#   5 minutes more on 2 cores the first time. DKNN_TOOLS_SOURCE=go takes that route on Debian too.
# The Go builds are Debian 12's versions, so every route gives the same tools; Go's module and build
# caches make a rebuild take seconds. To fetch again, delete $CACHE/bin and the folder(s) above.
# Elsewhere, put the four on PATH by hand: Prometheus 2.x and Alertmanager from
# https://prometheus.io/download/ (Alertmanager's binary is named alertmanager there: link it as
# prometheus-alertmanager).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${DKNN_TOOLS_CACHE:-$HOME/.cache/dknn-agent}"
BIN="$CACHE/bin"
TOOLS=(prometheus promtool prometheus-alertmanager amtool)
# The Go builds' versions: Debian 12's. Prometheus 2.X.Y is the Go module version v0.X.Y.
PROMETHEUS_VERSION=2.42.0
ALERTMANAGER_VERSION=0.25.0
debian_package="$here/../tools/debian-package.sh"

mode="${1:-}"
case "$mode" in
  "" | bin-dir) ;;
  *) echo "usage: install.sh [bin-dir]" >&2; exit 1 ;;
esac
case "${DKNN_TOOLS_SOURCE:=auto}" in
  auto | go) ;;
  *) echo "install.sh: DKNN_TOOLS_SOURCE must be auto or go, not $DKNN_TOOLS_SOURCE" >&2; exit 1 ;;
esac

say() { echo "install.sh: $*" >&2; }
die() { say "$*"; exit 1; }
by_hand() {
  die "$1; put prometheus, promtool, prometheus-alertmanager and amtool on PATH by hand (see the comment at the top of $0)"
}
report() {  # $1: the folder(s) with the tools; $2: what they are
  if [ "$mode" = bin-dir ]; then echo "$1"; else echo "observability tools ($2): $1"; fi
}

cached() {  # every tool in $BIN, each a link that resolves to an executable
  local tool
  for tool in "${TOOLS[@]}"; do [ -x "$BIN/$tool" ] || return 1; done
}

versions() {  # e.g. "prometheus 2.42.0+ds-5+deb12u1, alertmanager 0.25.0 (go)", from the folders' .packages
  local tool dir
  for tool in promtool amtool; do
    dir="$(readlink "$BIN/$tool")"
    cat "${dir%/usr/bin/$tool}/.packages" 2>/dev/null || echo "$tool version unknown"
  done | awk '{printf "%s%s %s%s", (NR > 1 ? ", " : ""), $1, $2, ($3 == "go" ? " (go)" : "")}'
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

tag=""  # for folder names of Debian packages; empty: no apt-get, or DKNN_TOOLS_SOURCE=go
if [ "$DKNN_TOOLS_SOURCE" = auto ]; then
  status=0
  tag="$(bash "$debian_package" tag 2>/dev/null)" || status=$?
  [ "$status" -eq 0 ] || [ "$status" -eq 2 ] || exit "$status"
fi

tmp=""
trap 'rm -rf "$tmp"' EXIT
into() {  # DEST FUNCTION: FUNCTION ROOT fills a fresh ROOT (ROOT/usr/bin, ROOT/.packages), renamed to
  # DEST when complete, so an interrupted run never leaves a half DEST; runs for one DEST take turns.
  local dest="$1"
  [ -f "$dest/.packages" ] && return 0
  mkdir -p "$(dirname "$dest")"
  exec 9>"$dest.lock"
  flock 9
  [ -f "$dest/.packages" ] && return 0
  rm -rf "$dest".tmp-*  # with the lock held, left by an interrupted run
  tmp="$dest.tmp-$$"
  mkdir -p "$tmp/root/usr/bin"
  "$2" "$tmp/root"
  rm -rf "$dest"
  mv -T "$tmp/root" "$dest"
  rm -rf "$tmp"
  exec 9>&-
}
quiet() {  # run "$@", showing its output (go's download and build lines) only when it fails
  "$@" >"$tmp/go.log" 2>&1 || { cat "$tmp/go.log" >&2; die "failed: $*"; }
}

GO=""
need_go() {  # sets GO: the machine's Go, else Debian's unpacked (once)
  [ -z "$GO" ] || return 0
  GO="$(command -v go || true)"
  [ -n "$GO" ] || [ ! -x /usr/local/go/bin/go ] || GO=/usr/local/go/bin/go
  if [ -z "$GO" ] && [ -n "$tag" ]; then
    bash "$debian_package" --deps "$CACHE/go-$tag" golang-go
    GO="$CACHE/go-$tag/usr/bin/go"
  fi
  [ -n "$GO" ] || by_hand "no Go to build them with, and no apt-get to fetch Debian's (not Debian or Ubuntu)"
}

build_alertmanager() {  # ROOT
  need_go
  say "building Alertmanager $ALERTMANAGER_VERSION with $("$GO" version | cut -d' ' -f3) (about a minute the first time)"
  GOBIN="$1/usr/bin" quiet "$GO" install -ldflags "-X github.com/prometheus/common/version.Version=$ALERTMANAGER_VERSION" \
    "github.com/prometheus/alertmanager/cmd/alertmanager@v$ALERTMANAGER_VERSION" \
    "github.com/prometheus/alertmanager/cmd/amtool@v$ALERTMANAGER_VERSION"
  mv "$1/usr/bin/alertmanager" "$1/usr/bin/prometheus-alertmanager"
  echo "alertmanager $ALERTMANAGER_VERSION go" >"$1/.packages"
}

build_prometheus() {  # ROOT
  local module="github.com/prometheus/prometheus@v0.${PROMETHEUS_VERSION#2.}" gomod wrap="$tmp/wrap"
  need_go
  say "building Prometheus $PROMETHEUS_VERSION with $("$GO" version | cut -d' ' -f3) (about 5 minutes the first time)"
  quiet "$GO" mod download "$module"
  gomod="$("$GO" mod download -json "$module" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  mkdir -p "$wrap"
  {
    echo "module dknn.local/prometheuswrapper"
    sed -n 's/^go \(.*\)/go \1/p' "$gomod"
    echo "require ${module/@/ }"
    # its replace and exclude directives, which only a main module's go.mod applies
    awk '/^(replace|exclude) \($/ {b = 1} b {print} b && /^\)/ {b = 0; next} !b && /^(replace|exclude) [^(]/' "$gomod"
  } >"$wrap/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s"\n\t_ "%s"\n)\n' \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool >"$wrap/tools.go"
  (
    cd "$wrap"
    quiet "$GO" mod tidy
    quiet "$GO" build -ldflags "-X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" -o "$1/usr/bin/" \
      github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
  )
  echo "prometheus $PROMETHEUS_VERSION go" >"$1/.packages"
}

if [ -n "$tag" ]; then
  prometheus="$CACHE/prometheus-$tag"
  bash "$debian_package" "$prometheus" prometheus
else
  prometheus="$CACHE/prometheus-go-$PROMETHEUS_VERSION"
  into "$prometheus" build_prometheus
fi
alertmanager="$CACHE/alertmanager-go-$ALERTMANAGER_VERSION"
into "$alertmanager" build_alertmanager

declare -A from=([prometheus]="$prometheus" [promtool]="$prometheus" [prometheus-alertmanager]="$alertmanager"
  [amtool]="$alertmanager")
for tool in "${TOOLS[@]}"; do
  [ -x "${from[$tool]}/usr/bin/$tool" ] || die "${from[$tool]} has no usr/bin/$tool (delete it and run again)"
  "${from[$tool]}/usr/bin/$tool" --version >/dev/null 2>&1 || die "${from[$tool]}/usr/bin/$tool does not run"
done
mkdir -p "$BIN"
for tool in "${TOOLS[@]}"; do  # replace each link in one rename, so a reader never sees it missing
  ln -sfn "${from[$tool]}/usr/bin/$tool" "$BIN/.$tool.tmp-$$"
  mv -Tf "$BIN/.$tool.tmp-$$" "$BIN/$tool"
done
report "$BIN" "$(versions)"
