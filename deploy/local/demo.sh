#!/usr/bin/env bash
# `make demo`: a real broker, the agent and a demo producer on this machine.
#
#   deploy/local/demo.sh BUNDLE_DIR
#
# Starts the local Kafka broker, creates the topics, runs `dknn-agent run` with a live summary and
# metrics on :9108 and, where they are installed, a local Prometheus (:9090) and Alertmanager
# (:9093) with the shipped rules (deploy/observability/local.sh). It publishes three phases of MNIST
# events — clean, then shifted (noise, rotated and FGSM digits), then clean again, each with 5%
# malformed events — waits until the agent has handled (scored or dead-lettered) every one of them,
# prints what the drift signals and alerts did, and keeps everything running so /metrics and the
# alerts can be explored, with the review console (`dknn-agent review`, :8080 on 127.0.0.1) showing
# the quarantined events. Ctrl-C (or DEMO_HOLD_S seconds after the stream is drained) stops it all
# and exits 0.
#
# It says "All N events handled" only when /metrics counts N scored plus dead-lettered events, and
# only after a live summary line counting all of them has been printed. When the agent does not
# become ready, or has not handled every event DEMO_WAIT_S seconds after the producer finished, it
# says how many it handled, stops the agent and the broker, and exits 1.
#
# Environment:
#   DEMO_COUNT (4000)          events to publish: 3/8 clean, 2/8 shifted, 3/8 clean
#   DEMO_RATE (150)            events per second
#   DEMO_WAIT_S (120)          seconds to wait, once the producer is done, for the agent to handle every event
#   DEMO_HOLD_S (unset)        exit this many seconds after the stream is handled instead of waiting for Ctrl-C
#   DEMO_TOPIC (inference-events)  the topic the producer publishes to (the agent reads inference-events)
#   DKNN_METRICS__PORT (9108)  the agent's /metrics, /healthz and /readyz port (DKNN_METRICS_PORT: its old name)
#   DEMO_PROMETHEUS_PORT (9090), DEMO_ALERTMANAGER_PORT (9093)
#   DEMO_CONSOLE_PORT (8080)   the review console's port (loopback only, so no credentials are needed)
#   DEMO_ALERTING (1)          0: do not start Prometheus and Alertmanager even where installed
#   DKNN_DEMO_KAFKA_DATA       the broker's data dir (default: $TMPDIR/dknn-demo-kafka, kept between runs)
#   DKNN_BIN (.venv/bin)       where dknn-agent and python are
#   DKNN_MNIST_DIR, and kafka.sh's DKNN_KAFKA_* and DKNN_LOG4J_VERSION, for the producer and the broker
# These are the scripts' own and do not reach the agent, which refuses DKNN_* variables that are not
# its settings; every other DKNN_* variable reaches it as a setting (README: "Running the agent").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bundle="${1:?usage: demo.sh BUNDLE_DIR}"
bin="${DKNN_BIN:-.venv/bin}"
data_dir="${DKNN_DEMO_KAFKA_DATA:-${TMPDIR:-/tmp}/dknn-demo-kafka}"
count="${DEMO_COUNT:-4000}"
rate="${DEMO_RATE:-150}"
wait_s="${DEMO_WAIT_S:-120}"
topic="${DEMO_TOPIC:-inference-events}"
port="${DKNN_METRICS__PORT:-${DKNN_METRICS_PORT:-9108}}"
case "$count$wait_s" in *[!0-9]*) echo "demo.sh: DEMO_COUNT and DEMO_WAIT_S must be whole numbers" >&2; exit 2 ;; esac
[ "$count" -ge 8 ] || { echo "demo.sh: DEMO_COUNT must be at least 8 (three phases)" >&2; exit 2; }
clean_mix="clean=0.95,malformed=0.05"
shifted_mix="clean=0.4,noise=0.15,rotated=0.2,fgsm=0.2,malformed=0.05"
first=$((count * 3 / 8)) shifted=$((count / 4))
last=$((count - first - shifted))

bash "$here/kafka.sh" fetch >/dev/null
# --exit-with: should this script be killed outright, the broker does not outlive it.
bootstrap="$(bash "$here/kafka.sh" start --data-dir "$data_dir" --exit-with $$ | sed -n 's/^BOOTSTRAP=//p')"
work="$(mktemp -d "${TMPDIR:-/tmp}/dknn-demo.XXXXXX")"
agent_pid=""
filter_pid=""
console_pid=""
cleanup() {
  if [ -n "$console_pid" ]; then
    kill -TERM "$console_pid" 2>/dev/null || true
    wait "$console_pid" 2>/dev/null || true
  fi
  if [ -n "$agent_pid" ]; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  elif [ -n "$filter_pid" ]; then
    kill -TERM "$filter_pid" 2>/dev/null || true
  fi
  # The filter ends when the agent's stderr closes; waiting for it lets the agent's last summary
  # line out before this script exits.
  [ -z "$filter_pid" ] || wait "$filter_pid" 2>/dev/null || true
  bash "$here/kafka.sh" stop --data-dir "$data_dir" >/dev/null 2>&1 || true
  bash "$here/../observability/local.sh" stop --dir "$work/observability" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
echo "Kafka at $bootstrap"

"$bin/python" - "$bootstrap" "$topic" <<'PY'
import sys
from connectors.kafka import ensure_topics
ensure_topics(sys.argv[1], ["inference-events", sys.argv[2]], partitions=3)
ensure_topics(sys.argv[1], ["inference-quarantine", "inference-dead-letter", "inference-scores", "inference-reviews"])
PY

# The agent's stderr, filtered down to its live summary and errors, goes to ours and to a file the
# script reads. The filter ignores Ctrl-C so that the agent's summary at exit still gets through.
mkfifo "$work/agent.stderr"
(
  trap '' INT TERM
  grep --line-buffered -E '^\[dknn-agent\]|ERROR|error' | tee -a "$work/summary.log" >&2
) <"$work/agent.stderr" &
filter_pid=$!
script_variables=(-u DKNN_BIN -u DKNN_DEMO_KAFKA_DATA -u DKNN_MNIST_DIR -u DKNN_LOG4J_VERSION)
for name in $(compgen -e); do
  case "$name" in
    DKNN_KAFKA_SECURITY__*) ;;  # the agent's own
    DKNN_KAFKA_*) script_variables+=(-u "$name") ;;  # kafka.sh's
  esac
done
env "${script_variables[@]}" "$bin/dknn-agent" run --artifacts "$bundle" --bootstrap-servers "$bootstrap" \
  --scores-topic inference-scores --group-id dknn-demo --metrics-port "$port" --summary-every 2 \
  2>"$work/agent.stderr" &
agent_pid=$!

answers() {  # $1 URL, $2 pid: succeeds once the URL answers; fails if the process ends or after 60 s
  for _ in $(seq 1 120); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
if ! answers "http://127.0.0.1:$port/readyz" "$agent_pid"; then
  echo "demo.sh: the agent did not become ready on :$port (its errors are above); stopping" >&2
  exit 1
fi
echo "agent ready: http://127.0.0.1:$port/metrics  (/healthz, /readyz)"

# The review console reads the quarantine topic with its own consumer group; its verdicts go to
# inference-reviews, which `dknn-agent extend --reviews kafka://$bootstrap/inference-reviews` reads.
console_port="${DEMO_CONSOLE_PORT:-8080}"
env "${script_variables[@]}" "$bin/dknn-agent" review --artifacts "$bundle" --bootstrap-servers "$bootstrap" \
  --quarantine-topic inference-quarantine --reviews-topic inference-reviews --group dknn-demo-review \
  --database "$work/review.sqlite" --port "$console_port" >"$work/console.log" 2>&1 &
console_pid=$!
if answers "http://127.0.0.1:$console_port/healthz" "$console_pid"; then
  echo "Review console: http://127.0.0.1:$console_port/  (quarantined events, their neighbours, verdicts)"
else
  echo "(the review console did not start: $(tail -n 1 "$work/console.log"))"
  console_pid=""
fi

prometheus_url=""
if [ "${DEMO_ALERTING:-1}" != 0 ]; then
  status=0
  urls="$(bash "$here/../observability/local.sh" start --dir "$work/observability" --agent "127.0.0.1:$port" \
    --prometheus-port "${DEMO_PROMETHEUS_PORT:-9090}" --alertmanager-port "${DEMO_ALERTMANAGER_PORT:-9093}" \
    --exit-with $$ 2>"$work/observability.err")" || status=$?
  if [ "$status" = 0 ]; then
    prometheus_url="$(echo "$urls" | sed -n 's/^PROMETHEUS_URL=//p')"
    echo "Prometheus with the shipped rules: $prometheus_url/alerts"
    echo "Alertmanager: $(echo "$urls" | sed -n 's/^ALERTMANAGER_URL=//p')"
  elif [ "$status" = 3 ]; then
    echo "(Prometheus and Alertmanager are not installed, so no alerts: make tools installs them)"
  else
    echo "(Prometheus and Alertmanager did not start, so no alerts: $(tail -n 1 "$work/observability.err"))"
  fi
fi

"$bin/dknn-agent" produce-demo --bootstrap-servers "$bootstrap" --artifacts "$bundle" --topic "$topic" --rate "$rate" \
  --phase "$first:$clean_mix" --phase "$shifted:$shifted_mix" --phase "$last:$clean_mix"

metric_sum() {  # the sum of every sample of the counters matching $1 on /metrics; 0 when unreachable
  { curl -fs "http://127.0.0.1:$port/metrics" 2>/dev/null || true; } \
    | awk -v re="^($1)[{ ]" '$0 ~ re { s += $NF } END { print int(s) }'
}
summary_handled() {  # scored + dead-lettered in the agent's latest live summary line
  { grep '^\[dknn-agent\]' "$work/summary.log" 2>/dev/null || true; } | tail -n 1 \
    | awk '{ for (i = 1; i < NF; i++) if ($i == "scored" || $i == "dead-lettered") n += $(i + 1) } END { print n + 0 }'
}

deadline=$((SECONDS + wait_s))
while :; do
  handled="$(metric_sum 'dknn_events_scored_total|dknn_events_dead_lettered_total')"
  [ "$handled" -ge "$count" ] && break
  [ "$SECONDS" -lt "$deadline" ] && kill -0 "$agent_pid" 2>/dev/null || break
  sleep 0.5
done
if [ "$handled" -lt "$count" ]; then
  consumed="$(metric_sum dknn_events_consumed_total)"
  kill -0 "$agent_pid" 2>/dev/null && why="within ${wait_s}s of the last one being published" || why="before the agent exited"
  echo
  echo "Only $handled of $count events handled ($consumed consumed) $why;" >&2
  echo "stopping the agent and the broker." >&2
  exit 1
fi
# The agent prints its summary every 2 s: wait for one that counts every event, so the last live
# line above the message below is the whole stream.
for _ in $(seq 1 20); do
  [ "$(summary_handled)" -ge "$count" ] && break
  sleep 0.5
done
echo
echo "All $count events handled. Quarantined and dead-lettered events are in the topics"
echo "inference-quarantine and inference-dead-letter; metrics stay on http://127.0.0.1:$port/metrics."
[ -z "$console_pid" ] || echo "Review them in the console: http://127.0.0.1:$console_port/"
changes="$(metric_sum dknn_drift_change_total)"
if [ "$(metric_sum dknn_drift_shifted)" -ge 1 ]; then state="still on"; else state="off again"; fi
echo "Drift: the change signal fired $changes time(s); the shifted-state signal is $state."
if [ -n "$prometheus_url" ]; then
  sleep 3  # one more scrape and rule evaluation
  "$bin/python" - "$prometheus_url" <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/api/v1/alerts", timeout=5) as response:
    alerts = json.load(response)["data"]["alerts"]
listed = ", ".join(f"{a['labels']['alertname']} ({a['labels'].get('severity', '?')}, {a['state']})" for a in alerts)
print(f"Prometheus alerts: {listed or 'none'}; {sys.argv[1]}/alerts")
PY
fi
if [ -n "${DEMO_HOLD_S:-}" ]; then sleep "$DEMO_HOLD_S"; else echo "Ctrl-C stops the agent and the broker."; wait "$agent_pid"; fi
