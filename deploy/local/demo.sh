#!/usr/bin/env bash
# `make demo`: a real broker, the agent and a demo producer on this machine.
#
#   deploy/local/demo.sh BUNDLE_DIR
#
# Starts the local Kafka broker, creates the topics, runs `dknn-agent run` with a live summary and
# metrics on :9108, publishes a mix of clean, noisy, rotated, adversarial and malformed MNIST
# events, waits until the agent has handled (scored or dead-lettered) every one of them, and keeps
# the agent running so /metrics can be explored. Ctrl-C (or DEMO_HOLD_S seconds after the stream is
# drained) stops the agent and the broker, and exits 0.
#
# It says "All N events handled" only when /metrics counts N scored plus dead-lettered events, and
# only after a live summary line counting all of them has been printed. When the agent does not
# become ready, or has not handled every event DEMO_WAIT_S seconds after the producer finished, it
# says how many it handled, stops the agent and the broker, and exits 1.
#
# Environment:
#   DEMO_COUNT (3000)          events to publish
#   DEMO_RATE (150)            events per second
#   DEMO_WAIT_S (120)          seconds to wait, once the producer is done, for the agent to handle every event
#   DEMO_HOLD_S (unset)        exit this many seconds after the stream is handled instead of waiting for Ctrl-C
#   DEMO_TOPIC (inference-events)  the topic the producer publishes to (the agent reads inference-events)
#   DKNN_METRICS_PORT (9108)   the agent's /metrics, /healthz and /readyz port
#   DKNN_DEMO_KAFKA_DATA       the broker's data dir (default: $TMPDIR/dknn-demo-kafka, kept between runs)
#   DKNN_BIN (.venv/bin)       where dknn-agent and python are
# Other DKNN_* variables reach the agent as settings (README: "Running the agent").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bundle="${1:?usage: demo.sh BUNDLE_DIR}"
bin="${DKNN_BIN:-.venv/bin}"
data_dir="${DKNN_DEMO_KAFKA_DATA:-${TMPDIR:-/tmp}/dknn-demo-kafka}"
count="${DEMO_COUNT:-3000}"
rate="${DEMO_RATE:-150}"
wait_s="${DEMO_WAIT_S:-120}"
topic="${DEMO_TOPIC:-inference-events}"
port="${DKNN_METRICS_PORT:-9108}"
case "$count$wait_s" in *[!0-9]*) echo "demo.sh: DEMO_COUNT and DEMO_WAIT_S must be whole numbers" >&2; exit 2 ;; esac

bash "$here/kafka.sh" fetch >/dev/null
# --exit-with: should this script be killed outright, the broker does not outlive it.
bootstrap="$(bash "$here/kafka.sh" start --data-dir "$data_dir" --exit-with $$ | sed -n 's/^BOOTSTRAP=//p')"
work="$(mktemp -d "${TMPDIR:-/tmp}/dknn-demo.XXXXXX")"
agent_pid=""
filter_pid=""
cleanup() {
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
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
echo "Kafka at $bootstrap"

"$bin/python" - "$bootstrap" "$topic" <<'PY'
import sys
from connectors.kafka import ensure_topics
ensure_topics(sys.argv[1], ["inference-events", sys.argv[2]], partitions=3)
ensure_topics(sys.argv[1], ["inference-quarantine", "inference-dead-letter", "inference-scores"])
PY

# The agent's stderr, filtered down to its live summary and errors, goes to ours and to a file the
# script reads. The filter ignores Ctrl-C so that the agent's summary at exit still gets through.
mkfifo "$work/agent.stderr"
(
  trap '' INT TERM
  grep --line-buffered -E '^\[dknn-agent\]|ERROR|error' | tee -a "$work/summary.log" >&2
) <"$work/agent.stderr" &
filter_pid=$!
"$bin/dknn-agent" run --artifacts "$bundle" --bootstrap-servers "$bootstrap" \
  --scores-topic inference-scores --group-id dknn-demo --metrics-port "$port" --summary-every 2 \
  2>"$work/agent.stderr" &
agent_pid=$!

ready=""
for _ in $(seq 1 120); do
  if curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$agent_pid" 2>/dev/null || break
  sleep 0.5
done
if [ -z "$ready" ]; then
  echo "demo.sh: the agent did not become ready on :$port (its errors are above); stopping" >&2
  exit 1
fi
echo "agent ready: http://127.0.0.1:$port/metrics  (/healthz, /readyz)"

"$bin/dknn-agent" produce-demo --bootstrap-servers "$bootstrap" --artifacts "$bundle" --topic "$topic" \
  --count "$count" --rate "$rate" --mix clean=0.8,noise=0.05,rotated=0.05,fgsm=0.05,malformed=0.05

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
if [ -n "${DEMO_HOLD_S:-}" ]; then sleep "$DEMO_HOLD_S"; else echo "Ctrl-C stops the agent and the broker."; wait "$agent_pid"; fi
