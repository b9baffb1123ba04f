#!/usr/bin/env bash
# A local Prometheus and Alertmanager with the shipped rules, watching an agent on this machine.
#
#   deploy/observability/local.sh start --dir DIR --agent HOST:PORT [--prometheus-port 9090]
#                                       [--alertmanager-port 9093] [--exit-with PID]
#       writes DIR/prometheus.yml and DIR/alertmanager.yml, starts both on 127.0.0.1, waits until
#       they answer, prints PROMETHEUS_URL=... and ALERTMANAGER_URL=...
#   deploy/observability/local.sh stop --dir DIR
#
# Prometheus scrapes the agent every 2 s (job "dknn-agent") and evaluates
# dashboards/prometheus/rules.yml, unchanged, every 2 s; Alertmanager groups as the shipped example
# does but delivers nowhere: firing alerts are on its page and on Prometheus' /alerts. For the
# shipped routing to a pager, see dashboards/alertmanager/alertmanager.yml.
#
# Needs prometheus and prometheus-alertmanager on PATH (deploy/observability/install.sh fetches
# them without root; make demo runs it and puts them on PATH); exits 3 when they are not, so callers
# can go on without them. A port in use is an error.
# --exit-with PID: both stop when PID exits, so a killed demo leaves nothing behind.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
rules="$repo/dashboards/prometheus/rules.yml"

die() { echo "local.sh: $*" >&2; exit 1; }

cmd="${1:-}"
[ $# -gt 0 ] && shift
dir="" agent="" prom_port=9090 am_port=9093 exit_with=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --agent) agent="$2"; shift 2 ;;
    --prometheus-port) prom_port="$2"; shift 2 ;;
    --alertmanager-port) am_port="$2"; shift 2 ;;
    --exit-with) exit_with="$2"; shift 2 ;;
    *) die "unknown option: $1 (see the comment at the top of this script)" ;;
  esac
done
[ -n "$dir" ] || die "--dir DIR is required"

stop_pid() {  # stop the process in pid file $1 if it is still the one we started ($2 in its command line)
  local pid
  pid="$(cat "$1" 2>/dev/null || true)"
  if [ -n "$pid" ] && { tr "\0" " " <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "$2"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

cmd_stop() {  # the watchdog last: it runs this too
  stop_pid "$dir/prometheus.pid" "prometheus --config.file=$dir/prometheus.yml"
  stop_pid "$dir/alertmanager.pid" "prometheus-alertmanager --config.file=$dir/alertmanager.yml"
  local watchdog
  watchdog="$(cat "$dir/watchdog.pid" 2>/dev/null || true)"
  if [ "$watchdog" = "$$" ] || [ "$watchdog" = "$PPID" ]; then rm -f "$dir/watchdog.pid"; else stop_pid "$dir/watchdog.pid" "local.sh"; fi
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_ready() {  # $1 url, $2 pid, $3 log
  for _ in $(seq 1 100); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { tail -n 20 "$3" >&2; die "$(basename "$3" .log) exited while starting"; }
    sleep 0.2
  done
  die "$1 did not answer in 20 s (log: $3)"
}

cmd_start() {
  [ -n "$agent" ] || die "--agent HOST:PORT is required"
  for tool in prometheus prometheus-alertmanager; do
    command -v "$tool" >/dev/null 2>&1 || { echo "local.sh: $tool not on PATH (make tools, or deploy/observability/install.sh bin-dir)" >&2; exit 3; }
  done
  for port in "$prom_port" "$am_port"; do
    port_free "$port" || die "port $port on 127.0.0.1 is in use (choose another with --prometheus-port/--alertmanager-port)"
  done
  mkdir -p "$dir/prometheus-data" "$dir/alertmanager-data"
  cat >"$dir/alertmanager.yml" <<EOF
route:
  receiver: console
  group_by: [alertname, job]
  group_wait: 2s
  group_interval: 10s
  repeat_interval: 1h
receivers:
  - name: console
EOF
  cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
rule_files: ["$rules"]
alerting:
  alertmanagers: [{static_configs: [{targets: ["127.0.0.1:$am_port"]}]}]
scrape_configs:
  - job_name: dknn-agent
    static_configs: [{targets: ["$agent"]}]
EOF
  prometheus-alertmanager --config.file="$dir/alertmanager.yml" --storage.path="$dir/alertmanager-data" \
    --web.listen-address="127.0.0.1:$am_port" --cluster.listen-address= \
    >"$dir/alertmanager.log" 2>&1 </dev/null &
  echo $! >"$dir/alertmanager.pid"
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus-data" \
    --web.listen-address="127.0.0.1:$prom_port" >"$dir/prometheus.log" 2>&1 </dev/null &
  echo $! >"$dir/prometheus.pid"
  wait_ready "http://127.0.0.1:$am_port/-/ready" "$(cat "$dir/alertmanager.pid")" "$dir/alertmanager.log"
  wait_ready "http://127.0.0.1:$prom_port/-/ready" "$(cat "$dir/prometheus.pid")" "$dir/prometheus.log"
  if [ -n "$exit_with" ]; then
    kill -0 "$exit_with" 2>/dev/null || die "--exit-with $exit_with: no such process"
    (
      trap '' HUP INT
      while kill -0 "$exit_with" 2>/dev/null; do sleep 1; done
      "$0" stop --dir "$dir"
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/watchdog.pid"
  fi
  echo "PROMETHEUS_URL=http://127.0.0.1:$prom_port"
  echo "ALERTMANAGER_URL=http://127.0.0.1:$am_port"
}

case "$cmd" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  *) die "usage: local.sh start --dir DIR --agent HOST:PORT [...] | stop --dir DIR" ;;
esac
