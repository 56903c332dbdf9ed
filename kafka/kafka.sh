#!/usr/bin/env bash
# A local Apache Kafka broker (KRaft, one node) without Docker: jars from Maven Central, run with java;
# or a local cluster of several such nodes (--brokers N), for tests of replication and broker loss.
#
#   kafka/kafka.sh up [--fresh] [--brokers N]   start it (no-op when already up); --fresh wipes the data first
#   kafka/kafka.sh down [--brokers N]           stop it (no-op when already down)
#   kafka/kafka.sh status [--brokers N]         exit 0 and print "up" when it answers, else exit 3
#   kafka/kafka.sh node start|stop|kill I       start, stop (SIGTERM: controlled shutdown) or SIGKILL
#                                               node I (1..N) of the cluster
#
# The single broker (the default; make run and most tests use it). Listeners: PLAINTEXT on
# 127.0.0.1:$KAFKA_LOCAL_PORT (everything uses it), and SASL_PLAINTEXT on
# 127.0.0.1:$KAFKA_LOCAL_SASL_PORT with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for one user,
# inference-worker / local-test-only: test-only credentials, known to everyone, for tests of the
# worker's SASL settings. The SCRAM credentials are stored in the cluster metadata: added at
# format time, and once into a data folder formatted before the SASL listener existed.
#
# The cluster (--brokers N, N >= 2; apart from the single broker, both can run at once): N combined
# broker + controller nodes on PLAINTEXT ports $KAFKA_CLUSTER_PORT.. (node I on base + I - 1;
# controllers on base + 100 + I - 1), each with its own data folder and log under
# $KAFKA_CLUSTER_DIR/node-I; default.replication.factor=min(3, N), min.insync.replicas=2, as a
# production cluster. Ready when every node answers and every partition of a probe topic has a
# leader and all N replicas in sync. Bootstrap list: 127.0.0.1:9192,127.0.0.1:9193,127.0.0.1:9194.
#
# Environment (all optional):
#   KAFKA_BOOTSTRAP_SERVERS   when set, another broker is in use: up/down start and stop nothing
#   KAFKA_LOCAL_DIR           state folder (jars, data, log, pid); default ~/.cache/inference-worker/kafka
#   KAFKA_LOCAL_PORT          client port, default 9092; KAFKA_LOCAL_CONTROLLER_PORT, default 9093
#   KAFKA_LOCAL_SASL_PORT     SASL_PLAINTEXT client port, default 9094
#   KAFKA_START_TIMEOUT       seconds to wait for readiness, default 120 (180 for a cluster)
#   KAFKA_HEAP                broker heap, default 512m (a cluster node: KAFKA_CLUSTER_HEAP, default 384m)
#   KAFKA_LOCAL_LIBS          folder of the resolved jars; default $KAFKA_LOCAL_DIR/libs-<version>
#   KAFKA_CLUSTER_DIR         the cluster's state folder; default $KAFKA_LOCAL_DIR-cluster
#   KAFKA_CLUSTER_PORT        the cluster's first client port, default 9192
# Every failure prints one line starting with "kafka-local:" that names the cause and the fix.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
state=${KAFKA_LOCAL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-worker/kafka}
libs=${KAFKA_LOCAL_LIBS:-$state/libs-$version}
data="$state/data"
log="$state/kafka.log"
pidfile="$state/kafka.pid"
port=${KAFKA_LOCAL_PORT:-9092}
controller_port=${KAFKA_LOCAL_CONTROLLER_PORT:-9093}
sasl_port=${KAFKA_LOCAL_SASL_PORT:-9094}
sasl_user=inference-worker
sasl_password=local-test-only
# Written once the SCRAM credentials are in this data folder's metadata; goes away with the folder.
scram_marker="$data/scram-users.local"
timeout_s=${KAFKA_START_TIMEOUT:-120}

fail() { echo "kafka-local: $*" >&2; exit 1; }
say() { echo "kafka-local: $*"; }

pid_alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
answers() { python3 "$here/ready.py" "${probe:-127.0.0.1:$port}" 5; }

check_java() {
  command -v java >/dev/null || fail "java not found: install Java 17+ (apt-get install openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP_SERVERS to an existing broker"
  local major
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  [ "${major:-0}" -ge 17 ] || fail "java ${major:-?} found, Kafka $version needs Java 17+: install a newer JDK"
}

resolve_jars() {
  [ -f "$libs/.complete" ] && return 0
  command -v mvn >/dev/null || fail "mvn not found and no cached jars in $libs: install Maven (apt-get install maven)"
  say "resolving Kafka $version jars with Maven into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  if ! mvn -B -q -f "$here/pom.xml" org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs" >"$state/maven.log" 2>&1; then
    fail "Maven could not resolve the Kafka jars (see $state/maven.log): check access to Maven Central"
  fi
  touch "$libs/.complete"
}

kafka_java() { java -Xmx256m -cp "$libs/*" "$@"; }

format_storage() {
  sed -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$controller_port#g" -e "s#@DATA_DIR@#$data#g" \
    -e "s#@SASL_PORT@#$sasl_port#g" -e "s#@SASL_USER@#$sasl_user#g" -e "s#@SASL_PASSWORD@#$sasl_password#g" \
    "$here/server.properties.template" >"$state/server.properties"
  if [ -f "$data/meta.properties" ]; then
    grep -q '^cluster.id=' "$data/meta.properties" \
      || fail "data folder $data is corrupt (meta.properties has no cluster.id): run 'make kafka-up FRESH=1' to start from a fresh one"
    return 0
  fi
  mkdir -p "$data"
  local cluster_id
  cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$log")
  kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" --ignore-formatted \
    --add-scram "SCRAM-SHA-256=[name=$sasl_user,password=$sasl_password]" \
    --add-scram "SCRAM-SHA-512=[name=$sasl_user,password=$sasl_password]" >>"$log" 2>&1 \
    || fail "formatting $data failed (see $log): run 'make kafka-up FRESH=1' to start from a fresh data folder"
  touch "$scram_marker"
}

# A data folder formatted before the SASL listener existed lacks the SCRAM user: add it through the
# running broker (AlterUserScramCredentials; idempotent), once, instead of asking for a fresh folder.
add_scram_user() {
  [ -f "$scram_marker" ] && return 0
  local mechanism
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do  # one per request: the broker refuses two for one user
    kafka_java kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$port" --alter --entity-type users \
      --entity-name "$sasl_user" --add-config "$mechanism=[password=$sasl_password]" >>"$log" 2>&1 \
      || fail "adding the SCRAM user $sasl_user failed (see $log): run 'make kafka-up FRESH=1' to start from a fresh data folder"
  done
  say "added the SCRAM user $sasl_user to the existing data folder"
  touch "$scram_marker"
}

explain_exit() {
  if grep -q "Address already in use" "$log"; then
    fail "port $port, $controller_port or $sasl_port is taken by another process: stop it or set KAFKA_LOCAL_PORT/KAFKA_LOCAL_CONTROLLER_PORT/KAFKA_LOCAL_SASL_PORT"
  elif grep -qiE "InconsistentClusterIdException|meta.properties|No readable meta.properties|KafkaStorageException|CorruptRecordException" "$log"; then
    fail "the data folder $data is unusable (see $log): run 'make kafka-up FRESH=1' to start from a fresh one"
  fi
  fail "the broker exited during start-up (last line of $log: $(grep -E 'ERROR|FATAL|Exception' "$log" | tail -n1 | cut -c1-200))"
}

up() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    say "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS is set: using that broker, starting nothing"
    return 0
  fi
  mkdir -p "$state"
  if pid_alive && answers; then
    say "already up on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    if port_open "$sasl_port"; then
      add_scram_user
    else
      say "no SASL listener on 127.0.0.1:$sasl_port: this broker was started before it existed; restart it (make kafka-down kafka-up) for the SASL tests"
    fi
    return 0
  fi
  pid_alive && fail "a broker (pid $(cat "$pidfile")) is running but not answering on port $port: run 'make kafka-down' first"
  for p in "$port" "$controller_port" "$sasl_port"; do
    port_open "$p" && fail "port $p is taken by another process: stop it or set KAFKA_LOCAL_PORT/KAFKA_LOCAL_CONTROLLER_PORT/KAFKA_LOCAL_SASL_PORT"
  done
  check_java
  resolve_jars
  [ "$fresh" = 1 ] && rm -rf "$data"
  : >"$log"
  format_storage
  local started=$SECONDS
  setsid java -Xms512m -Xmx"${KAFKA_HEAP:-512m}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Dlog4j.configuration="file:$here/log4j.properties" -cp "$libs/*" kafka.Kafka "$state/server.properties" \
    >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  until answers; do
    pid_alive || explain_exit
    if [ $((SECONDS - started)) -ge "$timeout_s" ]; then
      down >/dev/null
      fail "not ready after ${timeout_s}s (see $log): raise KAFKA_START_TIMEOUT on a slow machine"
    fi
    sleep 0.5
  done
  add_scram_user
  say "up on 127.0.0.1:$port (SASL_PLAINTEXT on $sasl_port) in $((SECONDS - started))s (Kafka $version, log $log)"
}

down() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    say "KAFKA_BOOTSTRAP_SERVERS is set: the local broker is not managed here, stopping nothing"
    return 0
  fi
  if ! pid_alive; then
    rm -f "$pidfile"
    say "already down"
    return 0
  fi
  stop_process "$(cat "$pidfile")" TERM 60
  rm -f "$pidfile"
  say "down"
}

# Send SIGNAL to PID, wait up to WAIT half-seconds for it to exit, then SIGKILL it.
stop_process() {
  local pid=$1 signal=$2 wait=$3
  kill "-$signal" "$pid"
  for _ in $(seq 1 "$wait"); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
}

status() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    probe=${KAFKA_BOOTSTRAP_SERVERS%%,*}
  fi
  if answers; then
    echo "up"
  else
    echo "down"
    exit 3
  fi
}

# --- the cluster (--brokers N) ---------------------------------------------------------------

cluster_state=${KAFKA_CLUSTER_DIR:-$state-cluster}
cluster_port=${KAFKA_CLUSTER_PORT:-9192}
probe_topic=__kafka_local_ready

node_dir() { echo "$cluster_state/node-$1"; }
node_port() { echo $((cluster_port + $1 - 1)); }
node_controller_port() { echo $((cluster_port + 100 + $1 - 1)); }
node_alive() { local f; f="$(node_dir "$1")/kafka.pid"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
cluster_size() {
  [ -n "$brokers" ] && { echo "$brokers"; return; }
  [ -f "$cluster_state/brokers" ] || fail "no local cluster in $cluster_state: start one with 'kafka/kafka.sh up --brokers 3'"
  cat "$cluster_state/brokers"
}
cluster_servers() {
  local i servers=""
  for i in $(seq 1 "$1"); do servers="$servers${servers:+,}127.0.0.1:$(node_port "$i")"; done
  echo "$servers"
}
# Ready: every node answers, and the probe topic is led and fully in sync (asked of each node in turn).
cluster_ready() {
  local n=$1 i
  for i in $(seq 1 "$n"); do python3 "$here/ready.py" "127.0.0.1:$(node_port "$i")" 5 || return 1; done
  for i in $(seq 1 "$n"); do
    python3 "$here/ready.py" "127.0.0.1:$(node_port "$i")" 5 --brokers "$n" --topic "$probe_topic" && return 0
  done
  return 1
}

cluster_format() {
  local n=$1 i voters="" replication=$(( $1 < 3 ? $1 : 3 ))
  for i in $(seq 1 "$n"); do voters="$voters${voters:+,}$i@127.0.0.1:$(node_controller_port "$i")"; done
  [ -f "$cluster_state/cluster.id" ] || kafka_java kafka.tools.StorageTool random-uuid >"$cluster_state/cluster.id" 2>>"$cluster_state/format.log"
  for i in $(seq 1 "$n"); do
    local dir
    dir=$(node_dir "$i")
    mkdir -p "$dir"
    sed -e "s#@NODE_ID@#$i#g" -e "s#@PORT@#$(node_port "$i")#g" -e "s#@CONTROLLER_PORT@#$(node_controller_port "$i")#g" \
      -e "s#@VOTERS@#$voters#g" -e "s#@DATA_DIR@#$dir/data#g" -e "s#@REPLICATION@#$replication#g" -e "s#@MIN_ISR@#2#g" \
      "$here/cluster.properties.template" >"$dir/server.properties"
    [ -f "$dir/data/meta.properties" ] && continue
    kafka_java kafka.tools.StorageTool format -t "$(cat "$cluster_state/cluster.id")" -c "$dir/server.properties" \
      --ignore-formatted >>"$cluster_state/format.log" 2>&1 \
      || fail "formatting $dir/data failed (see $cluster_state/format.log): run 'make kafka-up BROKERS=$n FRESH=1'"
  done
}

node_start() {
  local i=$1 dir port
  dir=$(node_dir "$i")
  port=$(node_port "$i")
  [ -f "$dir/server.properties" ] || fail "node $i is not part of the cluster in $cluster_state"
  if node_alive "$i"; then
    say "node $i already running (pid $(cat "$dir/kafka.pid"))"
    return 0
  fi
  for p in "$port" "$(node_controller_port "$i")"; do
    port_open "$p" && fail "port $p (node $i) is taken by another process: stop it or set KAFKA_CLUSTER_PORT"
  done
  setsid java -Xms128m -Xmx"${KAFKA_CLUSTER_HEAP:-384m}" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
    -XX:TieredStopAtLevel=1 -Dlog4j.configuration="file:$here/log4j.properties" -cp "$libs/*" kafka.Kafka \
    "$dir/server.properties" >>"$dir/kafka.log" 2>&1 </dev/null &
  echo $! >"$dir/kafka.pid"
  say "node $i started on 127.0.0.1:$port (pid $!, log $dir/kafka.log)"
}

# SIGTERM: a controlled shutdown (leadership moves away first), which can take a while; SIGKILL: a crash.
node_stop() {
  local i=$1 signal=$2 dir
  dir=$(node_dir "$i")
  if ! node_alive "$i"; then
    rm -f "$dir/kafka.pid"
    say "node $i already down"
    return 0
  fi
  stop_process "$(cat "$dir/kafka.pid")" "$signal" 120
  rm -f "$dir/kafka.pid"
  say "node $i down ($signal)"
}

cluster_up() {
  local n=$1 i
  [ "$n" -ge 2 ] || fail "--brokers must be 2 or more (the single broker is 'kafka/kafka.sh up')"
  mkdir -p "$cluster_state"
  if [ "$fresh" = 1 ]; then
    cluster_down "$n" >/dev/null
    rm -rf "$cluster_state"
    mkdir -p "$cluster_state"
  elif [ -f "$cluster_state/brokers" ] && [ "$(cat "$cluster_state/brokers")" != "$n" ]; then
    fail "the cluster in $cluster_state has $(cat "$cluster_state/brokers") brokers, not $n: add FRESH=1 to start a new one"
  fi
  check_java
  resolve_jars
  echo "$n" >"$cluster_state/brokers"
  cluster_format "$n"
  local started=$SECONDS timeout=${KAFKA_START_TIMEOUT:-180}
  for i in $(seq 1 "$n"); do node_start "$i" >/dev/null; done
  until cluster_ready "$n"; do
    for i in $(seq 1 "$n"); do
      node_alive "$i" || fail "node $i exited during start-up (last error in $(node_dir "$i")/kafka.log: $(grep -E 'ERROR|FATAL' "$(node_dir "$i")/kafka.log" | tail -n1 | cut -c1-200))"
    done
    if [ $((SECONDS - started)) -ge "$timeout" ]; then
      fail "the $n-broker cluster is not ready after ${timeout}s (logs in $cluster_state/node-*/kafka.log): raise KAFKA_START_TIMEOUT on a slow machine"
    fi
    sleep 1
  done
  say "cluster of $n brokers up on $(cluster_servers "$n") in $((SECONDS - started))s (Kafka $version, state $cluster_state)"
}

cluster_down() {
  local n=$1 i
  for i in $(seq 1 "$n"); do  # all at once, then wait for each
    if node_alive "$i"; then kill -TERM "$(cat "$(node_dir "$i")/kafka.pid")"; fi
  done
  for i in $(seq 1 "$n"); do node_stop "$i" TERM >/dev/null; done
  say "cluster down"
}

cluster_status() {
  if cluster_ready "$1"; then echo "up"; else echo "down"; exit 3; fi
}

node() {
  local action=${1:-} i=${2:-} n
  n=$(cluster_size)
  [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le "$n" ] || fail "node: give a node number from 1 to $n"
  case "$action" in
    start) check_java; node_start "$i" ;;
    stop) node_stop "$i" TERM ;;
    kill) node_stop "$i" KILL ;;
    *) echo "usage: $0 node start|stop|kill I" >&2; exit 2 ;;
  esac
}

command=${1:-}
shift || true
fresh=0
brokers=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --fresh) fresh=1 ;;
    --brokers) brokers=${2:-}; shift ;;
    --brokers=*) brokers=${1#--brokers=} ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ -z "$brokers" ] || [[ "$brokers" =~ ^[0-9]+$ ]] || fail "--brokers must be a number, got '$brokers'"
[ "${brokers:-1}" = 1 ] && brokers=""
if [ -n "$brokers" ] && [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && [ "$command" != status ]; then
  say "KAFKA_BOOTSTRAP_SERVERS is set: using that cluster, starting and stopping nothing"
  exit 0
fi
case "$command" in
  up) if [ -n "$brokers" ]; then cluster_up "$brokers"; else up; fi ;;
  down) if [ -n "$brokers" ]; then cluster_down "$brokers"; else down; fi ;;
  status) if [ -n "$brokers" ]; then cluster_status "$brokers"; else status; fi ;;
  node) node "${args[@]}" ;;
  *) echo "usage: $0 up [--fresh] [--brokers N] | down [--brokers N] | status [--brokers N] | node start|stop|kill I" >&2; exit 2 ;;
esac
