#!/usr/bin/env bash
# `make demo`: a real broker, the agent and a demo producer on this machine.
#
#   deploy/local/demo.sh BUNDLE_DIR
#
# Starts the local Kafka broker, creates the topics, runs `dknn-agent run` with a live summary and
# metrics on :9108 (override with DKNN_METRICS_PORT), publishes a mix of clean, noisy, rotated,
# adversarial and malformed MNIST events, and keeps the agent running so /metrics can be explored.
# Ctrl-C (or DEMO_HOLD_S seconds after the stream is drained) stops the agent and the broker.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bundle="${1:?usage: demo.sh BUNDLE_DIR}"
bin="${DKNN_BIN:-.venv/bin}"
data_dir="${DKNN_DEMO_KAFKA_DATA:-${TMPDIR:-/tmp}/dknn-demo-kafka}"
count="${DEMO_COUNT:-3000}"
rate="${DEMO_RATE:-150}"
port="${DKNN_METRICS_PORT:-9108}"

bash "$here/kafka.sh" fetch >/dev/null
bootstrap="$(bash "$here/kafka.sh" start --data-dir "$data_dir" | sed -n 's/^BOOTSTRAP=//p')"
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  bash "$here/kafka.sh" stop --data-dir "$data_dir" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM
echo "Kafka at $bootstrap"

"$bin/python" - "$bootstrap" <<'PY'
import sys
from connectors.kafka import ensure_topics
ensure_topics(sys.argv[1], ["inference-events"], partitions=3)
ensure_topics(sys.argv[1], ["inference-quarantine", "inference-dead-letter", "inference-scores"])
PY

"$bin/dknn-agent" run --artifacts "$bundle" --bootstrap-servers "$bootstrap" \
  --scores-topic inference-scores --group-id dknn-demo --metrics-port "$port" --summary-every 2 \
  2> >(grep --line-buffered -E '^\[dknn-agent\]|ERROR|error' >&2) &
agent_pid=$!
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
echo "agent ready: http://127.0.0.1:$port/metrics  (/healthz, /readyz)"

"$bin/dknn-agent" produce-demo --bootstrap-servers "$bootstrap" --artifacts "$bundle" \
  --count "$count" --rate "$rate" --mix clean=0.8,noise=0.05,rotated=0.05,fgsm=0.05,malformed=0.05

consumed() { curl -fs "http://127.0.0.1:$port/metrics" | awk '/^dknn_events_consumed_total /{print int($2)}'; }
for _ in $(seq 1 240); do
  [ "$(consumed)" -ge "$count" ] 2>/dev/null && break
  sleep 0.5
done
sleep 2.5
echo
echo "All $count events handled. Quarantined and dead-lettered events are in the topics"
echo "inference-quarantine and inference-dead-letter; metrics stay on http://127.0.0.1:$port/metrics."
if [ -n "${DEMO_HOLD_S:-}" ]; then sleep "$DEMO_HOLD_S"; else echo "Ctrl-C stops the agent and the broker."; wait "$agent_pid"; fi
