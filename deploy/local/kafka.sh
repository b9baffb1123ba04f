#!/usr/bin/env bash
# A real, single-node Apache Kafka 4.x (KRaft: broker + controller in one JVM) for tests and the demo.
#
# Why this exists: integration tests must talk to the real broker, not an imitation, yet CI has no
# Docker and no Kafka tarball mirror. Maven Central is reachable, so the official jars are resolved
# with Maven into a cache outside the repo and run on the system JDK 17.
#
#   deploy/local/kafka.sh fetch                        resolve the jars once (idempotent)
#   deploy/local/kafka.sh start [--data-dir DIR] [--exit-with PID]
#                                                      format (first time), start, wait until it
#                                                      answers, print BOOTSTRAP=127.0.0.1:PORT
#   deploy/local/kafka.sh stop  [--data-dir DIR] [--purge]
#   deploy/local/kafka.sh status [--data-dir DIR]      exit 0 and BOOTSTRAP=... when running, 3 if not
#
# Choices worth knowing:
# - Ports are free ones picked at first start and kept in DIR/server.properties, so stopping and
#   starting the same data dir (a "broker restart" in crash tests) keeps the bootstrap address.
# - auto.create.topics.enable=false, as on most production clusters: a typo in a topic name fails
#   loudly instead of silently creating a topic. Create topics with connectors.kafka.ensure_topics.
#   Set DKNN_KAFKA_AUTO_CREATE=true before the first start of a data dir to change that.
# - --exit-with PID: a watchdog stops the broker when PID exits, so a killed test run does not
#   leave a JVM behind.
# - Logs go to DIR/logs/server.log (log4j2, rolling), never to the console.
#
# Environment: DKNN_KAFKA_VERSION, DKNN_LOG4J_VERSION, DKNN_KAFKA_HOME (jar cache),
# DKNN_KAFKA_DATA (default data dir), DKNN_KAFKA_HEAP, DKNN_KAFKA_JVM_OPTS, DKNN_KAFKA_START_TIMEOUT_S,
# DKNN_KAFKA_STOP_TIMEOUT_S, DKNN_KAFKA_AUTO_CREATE, JAVA, MVN, PYTHON.
set -euo pipefail

KAFKA_VERSION="${DKNN_KAFKA_VERSION:-4.4.0}"
# Kafka 4.x logs through SLF4J 1.7 -> log4j2, so the binding is log4j-slf4j-impl (not the
# slf4j2-impl one, which SLF4J 1.7 does not see). Same version as the log4j-core Kafka pulls in.
LOG4J_VERSION="${DKNN_LOG4J_VERSION:-2.25.5}"
KAFKA_HOME="${DKNN_KAFKA_HOME:-$HOME/.cache/dknn-agent/kafka-$KAFKA_VERSION}"
DATA_DIR="${DKNN_KAFKA_DATA:-${TMPDIR:-/tmp}/dknn-kafka-$(id -u)}"
HEAP_OPTS="${DKNN_KAFKA_HEAP:--Xms256m -Xmx512m}"
# C1-only JIT: on a 2-core CI machine the broker answers in about half the time because C2
# compiler threads no longer compete with start-up; a test/demo broker never needs C2's peak
# throughput (the Python clients are the bottleneck). Set DKNN_KAFKA_JVM_OPTS to override.
JVM_OPTS="${DKNN_KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1 -XX:+UseG1GC -XX:MaxGCPauseMillis=20}"
START_TIMEOUT_S="${DKNN_KAFKA_START_TIMEOUT_S:-90}"
STOP_TIMEOUT_S="${DKNN_KAFKA_STOP_TIMEOUT_S:-30}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"
PYTHON="${PYTHON:-python3}"

die() { echo "kafka.sh: $*" >&2; exit 1; }
log() { echo "kafka.sh: $*" >&2; }

check_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Kafka 4 needs JDK 17+; apt-get install openjdk-17-jdk-headless)"
  local major
  major="$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')"
  [ -n "$major" ] && [ "$major" -ge 17 ] || die "Kafka 4 needs Java 17+, found '${major:-unknown}' at $(command -v "$JAVA")"
}

fetched() { [ -f "$KAFKA_HOME/.fetched" ] && [ -f "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" ]; }

write_log4j_config() {
  mkdir -p "$KAFKA_HOME/config"
  cat >"$KAFKA_HOME/config/log4j2.properties" <<'EOF'
# Broker logs to a rolling file under ${sys:kafka.logs.dir}; nothing on the console.
status = warn
name = dknn-local-kafka
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
EOF
}

cmd_fetch() {
  check_java
  if fetched; then
    log "Kafka $KAFKA_VERSION already in $KAFKA_HOME"
    write_log4j_config
    return 0
  fi
  command -v "$MVN" >/dev/null 2>&1 || die "mvn not found (apt-get install maven)"
  mkdir -p "$KAFKA_HOME"
  # Two test sessions fetching at once must not interleave their downloads.
  exec 9>"$KAFKA_HOME/.lock"
  flock 9
  if fetched; then write_log4j_config; return 0; fi
  # The generated pom stays next to the jars as a record of what was resolved.
  cat >"$KAFKA_HOME/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dknn-agent.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION + log4j $LOG4J_VERSION into $KAFKA_HOME/libs"
  rm -rf "$KAFKA_HOME/libs.tmp"
  # Output goes to a file: Debian's Maven 3.8 prints stray ANSI codes even with -q -B.
  "$MVN" -q -B -f "$KAFKA_HOME/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs.tmp" >"$KAFKA_HOME/mvn.log" 2>&1 \
    || { cat "$KAFKA_HOME/mvn.log" >&2; die "mvn could not resolve Kafka $KAFKA_VERSION (is Maven Central reachable?)"; }
  # Swap in atomically so a half-finished download never looks like a complete one.
  rm -rf "$KAFKA_HOME/libs"
  mv "$KAFKA_HOME/libs.tmp" "$KAFKA_HOME/libs"
  write_log4j_config
  ls "$KAFKA_HOME/libs" >"$KAFKA_HOME/.fetched"
  log "fetched $(wc -l <"$KAFKA_HOME/.fetched") jars"
}

parse_common() {  # sets DATA_DIR, EXIT_WITH, PURGE from the remaining arguments
  EXIT_WITH=""
  PURGE=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --data-dir) DATA_DIR="$2"; shift 2 ;;
      --data-dir=*) DATA_DIR="${1#*=}"; shift ;;
      --exit-with) EXIT_WITH="$2"; shift 2 ;;
      --purge) PURGE=1; shift ;;
      *) die "unknown option: $1" ;;
    esac
  done
  # Absolute, so the broker's command line (matched by broker_pid) is the same from any cwd.
  [ ! -d "$DATA_DIR" ] || DATA_DIR="$(cd "$DATA_DIR" && pwd -P)"
}

broker_pid() {  # prints the pid of a live broker of this data dir, or fails
  local pid
  [ -f "$DATA_DIR/kafka.pid" ] || return 1
  pid="$(cat "$DATA_DIR/kafka.pid")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: only ever signal our own broker.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $DATA_DIR/server.properties" || return 1
  echo "$pid"
}

bootstrap_of() { sed -n 's#^listeners=PLAINTEXT://\([^,]*\),.*#\1#p' "$DATA_DIR/server.properties"; }

free_ports() {  # two distinct free TCP ports on 127.0.0.1, held open together so they differ
  "$PYTHON" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

new_cluster_id() {  # Kafka's Uuid text form: url-safe base64 of 16 random bytes, never starting with '-'
  "$PYTHON" -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break'
}

write_server_properties() {
  local broker_port="$1" controller_port="$2"
  cat >"$DATA_DIR/server.properties" <<EOF
# Written by deploy/local/kafka.sh: one KRaft node that is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$broker_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$broker_port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$DATA_DIR/kraft-logs
num.partitions=1
auto.create.topics.enable=${DKNN_KAFKA_AUTO_CREATE:-false}
# A single node cannot hold more than one replica of anything.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests join and leave consumer groups constantly; do not wait 3 s before the first rebalance.
group.initial.rebalance.delay.ms=0
# Two-core CI machines: keep the thread count modest.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
log.segment.bytes=67108864
EOF
}

wait_until_ready() {  # the broker logs "Kafka Server started" once it is unfenced and serving
  local pid="$1" port="$2" deadline=$((SECONDS + START_TIMEOUT_S))
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "broker exited during start-up; last lines of $DATA_DIR/logs:"
      tail -n 30 "$DATA_DIR/logs/stdout.log" "$DATA_DIR/logs/server.log" >&2 2>/dev/null || true
      return 1
    fi
    if grep -q "Kafka Server started" "$DATA_DIR/logs/server.log" 2>/dev/null \
      && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  log "broker did not answer within ${START_TIMEOUT_S}s; see $DATA_DIR/logs/server.log"
  return 1
}

start_watchdog() {  # stop the broker when the owner process exits
  local owner="$1" pid="$2"
  kill -0 "$owner" 2>/dev/null || die "--exit-with $owner: no such process"
  (
    trap '' HUP INT
    while kill -0 "$owner" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 "$STOP_TIMEOUT_S"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DATA_DIR/kafka.pid" "$DATA_DIR/watchdog.pid"
  ) </dev/null >/dev/null 2>&1 &
  echo $! >"$DATA_DIR/watchdog.pid"
}

cmd_start() {
  parse_common "$@"
  mkdir -p "$DATA_DIR"
  DATA_DIR="$(cd "$DATA_DIR" && pwd -P)"
  local pid
  if pid="$(broker_pid)"; then
    log "already running (pid $pid) in $DATA_DIR"
    echo "BOOTSTRAP=$(bootstrap_of)"
    return 0
  fi
  fetched || die "jars missing in $KAFKA_HOME; run '$0 fetch' first"
  check_java
  if [ ! -f "$DATA_DIR/server.properties" ] || [ ! -f "$DATA_DIR/kraft-logs/meta.properties" ]; then
    local ports
    ports="$(free_ports)"
    write_server_properties ${ports}
    rm -rf "$DATA_DIR/kraft-logs"
    "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
      -Dlog4j2.configurationFile="$KAFKA_HOME/config/log4j2.properties" -Dkafka.logs.dir="$DATA_DIR/logs" -cp "$KAFKA_HOME/libs/*" kafka.tools.StorageTool \
      format -t "$(new_cluster_id)" -c "$DATA_DIR/server.properties" >"$DATA_DIR/format.log" 2>&1 \
      || { cat "$DATA_DIR/format.log" >&2; die "formatting $DATA_DIR failed"; }
  fi
  local bootstrap port
  bootstrap="$(bootstrap_of)"
  port="${bootstrap##*:}"
  mkdir -p "$DATA_DIR/logs"
  # Keep the previous run's log for post-mortems; readiness is judged on a fresh one.
  [ ! -s "$DATA_DIR/logs/server.log" ] || mv "$DATA_DIR/logs/server.log" "$DATA_DIR/logs/server.log.previous"
  # shellcheck disable=SC2086
  nohup "$JAVA" $HEAP_OPTS $JVM_OPTS -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_HOME/config/log4j2.properties" \
    -Dkafka.logs.dir="$DATA_DIR/logs" \
    -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$DATA_DIR/server.properties" \
    </dev/null >"$DATA_DIR/logs/stdout.log" 2>&1 &
  pid=$!
  echo "$pid" >"$DATA_DIR/kafka.pid"
  if ! wait_until_ready "$pid" "$port"; then
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$DATA_DIR/kafka.pid"
    exit 1
  fi
  echo "$bootstrap" >"$DATA_DIR/bootstrap"
  [ -z "$EXIT_WITH" ] || start_watchdog "$EXIT_WITH" "$pid"
  log "Kafka $KAFKA_VERSION running (pid $pid, data $DATA_DIR)"
  echo "BOOTSTRAP=$bootstrap"
}

cmd_stop() {
  parse_common "$@"
  local pid
  local wpid
  wpid="$(cat "$DATA_DIR/watchdog.pid" 2>/dev/null || true)"
  # Only a live watchdog of ours (a forked kafka.sh), never whatever reused its pid.
  if [ -n "$wpid" ] && tr '\0' ' ' <"/proc/$wpid/cmdline" 2>/dev/null | grep -q "kafka.sh"; then
    kill "$wpid" 2>/dev/null || true
  fi
  if pid="$(broker_pid)"; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_TIMEOUT_S))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "broker did not stop within ${STOP_TIMEOUT_S}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped (pid $pid)"
  else
    log "not running in $DATA_DIR"
  fi
  [ ! -d "$DATA_DIR" ] || rm -f "$DATA_DIR/kafka.pid" "$DATA_DIR/watchdog.pid" "$DATA_DIR/bootstrap"
  if [ "$PURGE" = 1 ]; then
    rm -rf "$DATA_DIR"
    log "removed $DATA_DIR"
  fi
}

cmd_status() {
  parse_common "$@"
  local pid
  if pid="$(broker_pid)"; then
    echo "BOOTSTRAP=$(bootstrap_of)"
    log "running (pid $pid, data $DATA_DIR)"
  else
    log "not running in $DATA_DIR"
    exit 3
  fi
}

case "${1:-}" in
  fetch) shift; cmd_fetch "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) echo "usage: $0 {fetch|start [--data-dir DIR] [--exit-with PID]|stop [--data-dir DIR] [--purge]|status [--data-dir DIR]}" >&2; exit 2 ;;
esac
