#!/usr/bin/env bash
# Installs the Prometheus tools the observability checks need on a bare Debian/Ubuntu machine:
#   prometheus              -> prometheus, promtool   (promtool check rules / test rules)
#   prometheus-alertmanager -> prometheus-alertmanager, amtool   (amtool check-config)
# Idempotent: a package whose binaries are all on PATH is skipped; `apt-get update` runs only when
# apt has no candidate for a package (empty package lists). Prints what it installed (or that nothing was needed).
# Needs root (or sudo). Note: on a machine running systemd the Debian packages enable and start
# the prometheus and alertmanager services (ports 9090, 9093); the checks only need the binaries.
set -euo pipefail

declare -A binaries=(
  [prometheus]="prometheus promtool"
  [prometheus-alertmanager]="prometheus-alertmanager amtool"
)

missing=()
for pkg in prometheus prometheus-alertmanager; do
  for bin in ${binaries[$pkg]}; do
    if ! command -v "$bin" >/dev/null 2>&1; then
      missing+=("$pkg")
      break
    fi
  done
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "observability tools already present: $(command -v promtool) $(command -v amtool)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install.sh: apt-get not found; install ${missing[*]} (promtool, amtool) by hand" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "install.sh: need root (or sudo) to apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# `apt-cache show` succeeds for a name apt merely has heard of; a candidate version is what counts.
has_candidate() { LC_ALL=C apt-cache policy "$1" 2>/dev/null | grep -q '^ *Candidate: [^(]'; }
for pkg in "${missing[@]}"; do
  if ! has_candidate "$pkg"; then
    "${sudo[@]}" apt-get update -q
    break
  fi
done
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

for pkg in "${missing[@]}"; do
  for bin in ${binaries[$pkg]}; do
    command -v "$bin" >/dev/null 2>&1 || { echo "install.sh: $pkg installed but $bin is not on PATH" >&2; exit 1; }
  done
done
echo "installed: ${missing[*]}"
echo "  $(promtool --version 2>&1 | head -n 1)"
echo "  $(amtool --version 2>&1 | head -n 1)"
