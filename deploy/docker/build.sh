#!/usr/bin/env bash
# Builds the dknn-agent image from deploy/docker/Dockerfile, offline: every wheel is prepared on this
# machine first (PyPI through pip), then `docker build --network=none` installs only those.
#
# usage: deploy/docker/build.sh [--tag TAG] [--base IMAGE|rootfs] [--extra-wheels DIR]
#   --tag TAG    image name (default dknn-agent:<version from pyproject.toml>)
#   --base ...   base image of both stages: an image a registry serves (python:3.11-slim-bookworm),
#                or `rootfs` (default): Debian bookworm made here with debootstrap and imported
#                (FROM scratch + ADD rootfs.tar), for machines that cannot pull images.
#   --extra-wheels DIR  also install every DIR/*.whl into the agent's venv (offline, after the
#                agent): the model code a bundle's factory names, with whatever it needs beyond
#                the agent's own dependencies (`pip wheel -w DIR ./mypkg` makes them)
# Needs a Docker daemon (DOCKER_HOST; deploy/docker/dockerd.sh starts a private one), gcc/g++
# and binutils, and debootstrap for `rootfs` (installed with apt-get when missing).
# Environment:
#   DKNN_IMAGE_CACHE  cache of wheels and the root filesystem (default ~/.cache/dknn-agent/image)
#   TORCH_INDEX_URL   a torch CPU index (https://download.pytorch.org/whl/cpu) where reachable:
#                     its CPU wheel is used as is instead of slimming PyPI's CUDA wheel
#   ANNOY_MARCH       the x86-64 level Annoy is compiled for (default x86-64-v2, not -march=native)
# Prints the image's size and the build's duration at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/deploy/docker"
CACHE=${DKNN_IMAGE_CACHE:-$HOME/.cache/dknn-agent/image}
TORCH_VERSION=2.15.0
ANNOY_VERSION=1.17.3
ANNOY_MARCH=${ANNOY_MARCH:-x86-64-v2}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)
TAG="dknn-agent:$VERSION"
BASE=rootfs
EXTRA_WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --extra-wheels) EXTRA_WHEELS=$2; shift 2 ;;
    *) sed -n '2,22p' "$0" >&2; exit 2 ;;
  esac
done
if [ -n "$EXTRA_WHEELS" ] && ! ls "$EXTRA_WHEELS"/*.whl >/dev/null 2>&1; then
  echo "build.sh: --extra-wheels $EXTRA_WHEELS holds no *.whl" >&2
  exit 2
fi
say() { echo "build.sh: $*" >&2; }
started=$(date +%s)
mkdir -p "$CACHE"
# Compilers for Annoy and the torch stubs, binutils to inspect them, Python's headers.
need=()
command -v g++ >/dev/null || need+=(g++)
command -v objdump >/dev/null || need+=(binutils)
command -v unzip >/dev/null || need+=(unzip)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' ||
  need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
docker version >/dev/null 2>&1 || { say "no Docker daemon (DOCKER_HOST=${DOCKER_HOST:-unset}); try: export \"\$(deploy/docker/dockerd.sh start)\""; exit 1; }

# -- 1. the wheelhouse: built on this machine, cached by what goes into it -------------------
py="$CACHE/py"
[ -x "$py/bin/python" ] || python3 -m venv "$py"
"$py/bin/python" -m pip install -q --upgrade wheel
# The agent's own wheel is built on every run, from the code as it is now, with the same portable
# baseline for its compiled module (setup.py reads DKNN_COMPILER_ARGS).
agent_wheel="$CACHE/agent-wheel"
rm -rf "$agent_wheel" && mkdir -p "$agent_wheel"
# From a copy of the product's sources: setuptools would reuse a checkout's build/ directory (modules
# since moved away, a compiled module built for this CPU), and the lab (dknn_lab) stays out.
agent_src=$(mktemp -d)
cp "$ROOT"/{pyproject.toml,setup.py,README.md,NOTICE} "$agent_src"/
for package in agent connectors dknn_events; do
  (cd "$ROOT" && find "$package" -name __pycache__ -prune -o -name '*.so' -prune -o -type f -print) |
    (cd "$ROOT" && xargs cp --parents -t "$agent_src")
done
DKNN_COMPILER_ARGS="-march=$ANNOY_MARCH -mtune=generic" "$py/bin/python" -m pip wheel -q --no-deps -w "$agent_wheel" "$agent_src"
rm -rf "$agent_src"
key=$(cat "$ROOT/pyproject.toml" "$HERE/slim_torch.py" <(echo "$TORCH_VERSION $ANNOY_VERSION $ANNOY_MARCH ${TORCH_INDEX_URL:-}") | sha256sum | cut -c1-16)
wheels="$CACHE/wheels-$key"
if [ ! -f "$wheels/.done" ]; then
  say "preparing wheels in $wheels"
  rm -rf "$wheels" && mkdir -p "$wheels"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$py/bin/python" -m pip download -q --no-deps --index-url "$TORCH_INDEX_URL" -d "$wheels" "torch==$TORCH_VERSION"
    torch_pin="torch==$TORCH_VERSION"
  else
    mkdir -p "$CACHE/torch-pypi"
    [ -n "$(ls "$CACHE/torch-pypi"/torch-"$TORCH_VERSION"-*.whl 2>/dev/null)" ] ||
      "$py/bin/python" -m pip download -q --no-deps -d "$CACHE/torch-pypi" "torch==$TORCH_VERSION"
    "$py/bin/python" "$HERE/slim_torch.py" "$CACHE/torch-pypi"/torch-"$TORCH_VERSION"-*.whl "$wheels"
    torch_pin="torch==$TORCH_VERSION+cpuslim"
  fi
  # Annoy's setup.py adds -march=native on x86-64; ANNOY_COMPILER_ARGS replaces its flags.
  ANNOY_COMPILER_ARGS="-D_CRT_SECURE_NO_WARNINGS,-fpermissive,-O3,-ffast-math,-fno-associative-math,-DANNOYLIB_MULTITHREADED_BUILD,-std=c++14,-march=$ANNOY_MARCH,-mtune=generic" \
    "$py/bin/python" -m pip wheel -q --no-deps --no-binary annoy --no-cache-dir -w "$wheels" "annoy==$ANNOY_VERSION"
  printf '%s\nannoy==%s\n' "$torch_pin" "$ANNOY_VERSION" >"$CACHE/constraints.txt"
  # Everything else the agent needs, as wheels; torch and annoy resolve to the ones above.
  "$py/bin/python" -m pip download -q --only-binary :all: --find-links "$wheels" -c "$CACHE/constraints.txt" \
    -d "$wheels" "$agent_wheel"/dknn_agent-*.whl
  if ls "$wheels" | grep -Ei '^(nvidia|triton|cuda)'; then say "CUDA wheels in the wheelhouse"; exit 1; fi
  rm -f "$wheels"/dknn_agent-*.whl # the wheelhouse is keyed by the dependencies, not by the agent's code
  touch "$wheels/.done"
fi
# No AVX in Annoy's search, neither in annoy's module nor in the agent's: the image must run on
# any x86-64 the cluster has.
for wheel in "$wheels"/annoy-*.whl "$agent_wheel"/dknn_agent-*.whl; do
  so=$(unzip -Z1 "$wheel" | grep '\.so$')
  unzip -p "$wheel" "$so" >"$CACHE/check.so"
  if objdump -d "$CACHE/check.so" | grep -qE '%[yz]mm'; then say "$(basename "$wheel") was compiled with AVX"; exit 1; fi
done

# -- 2. the base image -----------------------------------------------------------------------
base_image=$BASE
if [ "$BASE" = rootfs ]; then
  base_image="dknn-agent-base:bookworm"
  if [ ! -f "$CACHE/rootfs/rootfs.tar" ]; then
    command -v debootstrap >/dev/null || {
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
    }
    say "debootstrap bookworm (a few minutes, once)"
    rm -rf "$CACHE/rootfs" && mkdir -p "$CACHE/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$CACHE/rootfs/tree" "$DEBIAN_MIRROR" >"$CACHE/rootfs/debootstrap.log"
    rm -rf "$CACHE/rootfs/tree"/var/cache/apt/archives/*.deb "$CACHE/rootfs/tree"/var/lib/apt/lists/*
    tar -C "$CACHE/rootfs/tree" -cf "$CACHE/rootfs/rootfs.tar.tmp" . && mv "$CACHE/rootfs/rootfs.tar.tmp" "$CACHE/rootfs/rootfs.tar"
    rm -rf "$CACHE/rootfs/tree"
  fi
  if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    cp "$HERE/Dockerfile.rootfs" "$CACHE/rootfs/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q --network=none -t "$base_image" "$CACHE/rootfs" >/dev/null
  fi
fi

# -- 3. the image ----------------------------------------------------------------------------
context="$CACHE/context"
rm -rf "$context" && mkdir -p "$context/wheels" "$context/extra-wheels"
cp "$HERE/Dockerfile" "$context/"
cp -l "$wheels"/*.whl "$context/wheels/" 2>/dev/null || cp "$wheels"/*.whl "$context/wheels/"
cp "$agent_wheel"/dknn_agent-*.whl "$context/wheels/"
[ -z "$EXTRA_WHEELS" ] || cp "$EXTRA_WHEELS"/*.whl "$context/extra-wheels/"
extra_count=$(find "$context/extra-wheels" -name '*.whl' | wc -l)
revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
say "docker build $TAG (base $base_image)"
# The build stage gets a tag of its own, so that pruning keeps it for the next build's cache.
DOCKER_BUILDKIT=0 docker build -q --network=none --target build -t dknn-agent-build:latest \
  --build-arg "BASE_IMAGE=$base_image" "$context" >/dev/null
DOCKER_BUILDKIT=0 docker build -q --network=none -t "$TAG" \
  --build-arg "BASE_IMAGE=$base_image" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$revision" \
  "$context" >/dev/null
rm -rf "$context"
docker image prune -f >/dev/null # what earlier builds left untagged
# Only this wheelhouse is kept (a changed pyproject.toml or torch version makes a new one).
find "$CACHE" -maxdepth 1 -name 'wheels-*' ! -name "wheels-$key" -exec rm -rf {} +
size=$(docker image inspect "$TAG" --format '{{.Size}}')
echo "IMAGE=$TAG"
echo "EXTRA_WHEELS=$extra_count"
echo "IMAGE_SIZE_BYTES=$size"
echo "BUILD_SECONDS=$(($(date +%s) - started))"
