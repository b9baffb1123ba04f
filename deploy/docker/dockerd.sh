#!/usr/bin/env bash
# A private Docker daemon for building and running the image on a machine whose Docker (if any)
# must not be touched: its own data, exec root and socket, no bridge, no iptables, no IP forwarding,
# so the host's network is left exactly as it was.
#
# usage: deploy/docker/dockerd.sh start|stop|status|env
#   start   start it (idempotent) and print DOCKER_HOST=unix://... (export "$(... start)")
#   stop    stop it (containers it runs stop with it)
#   env     print DOCKER_HOST=... (export "$(... env)")
# State: $DKNN_IMAGE_CACHE/docker (default ~/.cache/dknn-agent/image/docker); images survive a stop.
# Needs root and Debian's docker.io (installed with apt-get when missing).
set -euo pipefail

CACHE=${DKNN_IMAGE_CACHE:-$HOME/.cache/dknn-agent/image}
STATE="$CACHE/docker"
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
HOST="unix://$SOCK"

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
  start)
    if ! command -v dockerd >/dev/null; then
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >/dev/null
    fi
    mkdir -p "$STATE/data" "$STATE/exec"
    if ! running; then
      # setsid: the daemon outlives this script but not an explicit `stop`.
      setsid dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" -H "$HOST" --pidfile "$PIDFILE" \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        >"$STATE/dockerd.log" 2>&1 </dev/null &
      for _ in $(seq 1 60); do
        DOCKER_HOST="$HOST" docker version >/dev/null 2>&1 && break
        sleep 1
      done
      DOCKER_HOST="$HOST" docker version >/dev/null || { tail -20 "$STATE/dockerd.log" >&2; exit 1; }
    fi
    echo "DOCKER_HOST=$HOST"
    ;;
  stop)
    if running; then
      pid=$(cat "$PIDFILE")
      kill "$pid"
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    # dockerd leaves its network namespace mounted in the exec root; nothing else uses it.
    awk -v root="$STATE/exec/" 'index($2, root) == 1 {print $2}' /proc/mounts | xargs -r umount
    ;;
  status) running && echo "running: DOCKER_HOST=$HOST" || { echo "stopped"; exit 1; } ;;
  env) echo "DOCKER_HOST=$HOST" ;;
  *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac
