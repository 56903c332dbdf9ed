#!/usr/bin/env bash
# A local Schema Registry without Docker: Apicurio Registry from Maven Central, run with java. It
# answers Confluent's Schema Registry API under /apis/ccompat/v7 (what the worker and Confluent's
# clients talk to), keeps its schemas in memory (nothing survives a restart), and is set to
# Confluent's default compatibility level, BACKWARD, once it is up.
#
#   registry/registry.sh up       start it (no-op when already up); prints the URL to use
#   registry/registry.sh down     stop it (no-op when already down)
#   registry/registry.sh status   exit 0 and print "up" when it answers, else print "down", exit 3
#   registry/registry.sh url      print the Confluent-API URL (SCHEMA_REGISTRY_URL for the worker)
#
# Environment (all optional):
#   SCHEMA_REGISTRY_URL            when set, another registry is in use: up/down start and stop nothing
#   REGISTRY_LOCAL_DIR             state folder (log, pid); default ~/.cache/inference-worker/registry
#   REGISTRY_LOCAL_DIST            folder of the unpacked application; default $REGISTRY_LOCAL_DIR/apicurio-<version>
#   REGISTRY_LOCAL_PORT            HTTP port, default 8081
#   REGISTRY_LOCAL_MANAGEMENT_PORT health port (/health/ready), default 9001
#   REGISTRY_MAVEN_REPO            Maven's local repository the download is kept in; default ~/.m2/repository
#   REGISTRY_JAVA                  java executable (21+); default: the newest 21+ JDK found on PATH,
#                                  in JAVA_HOME or in /usr/lib/jvm
#   REGISTRY_START_TIMEOUT         seconds to wait for readiness, default 120
#   REGISTRY_HEAP                  heap, default 256m
# Every failure prints one line starting with "registry-local:" that names the cause and the fix.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
version=3.3.3
artifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all"
state=${REGISTRY_LOCAL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-worker/registry}
dist=${REGISTRY_LOCAL_DIST:-$state/apicurio-$version}
log="$state/registry.log"
pidfile="$state/registry.pid"
port=${REGISTRY_LOCAL_PORT:-8081}
management_port=${REGISTRY_LOCAL_MANAGEMENT_PORT:-9001}
timeout_s=${REGISTRY_START_TIMEOUT:-120}
api="http://127.0.0.1:$port/apis/ccompat/v7"

fail() { echo "registry-local: $*" >&2; exit 1; }
say() { echo "registry-local: $*"; }

pid_alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# HTTP without curl: python3 is there anyway (the project needs it).
http() {
  python3 - "$@" <<'PY'
import sys, urllib.request
method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
request = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        sys.exit(0 if response.status < 300 else 1)
except Exception:
    sys.exit(1)
PY
}
answers() {
  http GET "http://127.0.0.1:$management_port/health/ready" && http GET "${probe:-$api}/subjects"
}

java_major() { "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }

# Apicurio 3 needs Java 21+; a machine's default java is often 17, with a newer JDK installed beside it.
find_java() {
  if [ -n "${REGISTRY_JAVA:-}" ]; then
    [ -x "$REGISTRY_JAVA" ] || fail "REGISTRY_JAVA=$REGISTRY_JAVA is not an executable: point it at a Java 21+ java"
    [ "$(java_major "$REGISTRY_JAVA")" -ge 21 ] 2>/dev/null \
      || fail "REGISTRY_JAVA=$REGISTRY_JAVA is Java $(java_major "$REGISTRY_JAVA"), Apicurio Registry $version needs 21+"
    echo "$REGISTRY_JAVA"
    return
  fi
  local best="" best_major=0 candidate major
  for candidate in "$(command -v java || true)" "${JAVA_HOME:+$JAVA_HOME/bin/java}" /usr/lib/jvm/*/bin/java; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    major=$(java_major "$candidate")
    if [ "${major:-0}" -gt "$best_major" ]; then
      best=$candidate
      best_major=$major
    fi
  done
  [ "$best_major" -ge 21 ] \
    || fail "no Java 21+ found (newest: ${best:-none}, ${best_major}): install one (e.g. apt-get install openjdk-21-jre-headless) or set REGISTRY_JAVA"
  echo "$best"
}

fetch_dist() {
  [ -f "$dist/.complete" ] && return 0
  command -v mvn >/dev/null || fail "mvn not found and no unpacked registry in $dist: install Maven (apt-get install maven)"
  say "fetching Apicurio Registry $version with Maven (about 160 MB) into $dist"
  mkdir -p "$state"
  local repo=${REGISTRY_MAVEN_REPO:-$HOME/.m2/repository} archive
  if ! mvn -B -q -s "$here/maven-settings.xml" -Dmaven.repo.local="$repo" dependency:get -Dartifact="$artifact" \
      -Dtransitive=false >"$state/maven.log" 2>&1; then
    fail "Maven could not fetch $artifact (see $state/maven.log): check access to Maven Central"
  fi
  archive="$repo/io/apicurio/apicurio-registry-app/$version/apicurio-registry-app-$version-all.tar.gz"
  [ -f "$archive" ] || fail "Maven reported success but $archive is missing (see $state/maven.log)"
  rm -rf "$dist"
  mkdir -p "$dist"
  tar -xzf "$archive" -C "$dist" || fail "cannot unpack $archive into $dist: check the disk space"
  [ -f "$dist/quarkus-run.jar" ] || fail "$archive holds no quarkus-run.jar: remove it and run again"
  touch "$dist/.complete"
}

explain_exit() {
  if grep -q "Address already in use\|Port.*already bound" "$log"; then
    fail "port $port or $management_port is taken by another process: stop it or set REGISTRY_LOCAL_PORT/REGISTRY_LOCAL_MANAGEMENT_PORT"
  fi
  fail "the registry exited during start-up (last error in $log: $(grep -E 'ERROR|Exception' "$log" | tail -n1 | cut -c1-200))"
}

up() {
  if [ -n "${SCHEMA_REGISTRY_URL:-}" ]; then
    say "SCHEMA_REGISTRY_URL=$SCHEMA_REGISTRY_URL is set: using that registry, starting nothing"
    return 0
  fi
  mkdir -p "$state"
  if pid_alive && answers; then
    say "already up: $api (pid $(cat "$pidfile"))"
    return 0
  fi
  pid_alive && fail "a registry (pid $(cat "$pidfile")) is running but not answering on port $port: run 'make registry-down' first"
  for p in "$port" "$management_port"; do
    port_open "$p" && fail "port $p is taken by another process: stop it or set REGISTRY_LOCAL_PORT/REGISTRY_LOCAL_MANAGEMENT_PORT"
  done
  local java
  java=$(find_java)
  fetch_dist
  : >"$log"
  local started=$SECONDS
  (cd "$dist" && exec setsid "$java" -Xmx"${REGISTRY_HEAP:-256m}" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$management_port" \
    -jar quarkus-run.jar) >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  until answers; do
    pid_alive || explain_exit
    if [ $((SECONDS - started)) -ge "$timeout_s" ]; then
      down >/dev/null
      fail "not ready after ${timeout_s}s (see $log): raise REGISTRY_START_TIMEOUT on a slow machine"
    fi
    sleep 0.5
  done
  # Apicurio's default compatibility is NONE; Confluent's is BACKWARD, which evolution relies on.
  http PUT "$api/config" '{"compatibility": "BACKWARD"}' \
    || fail "the registry is up but refused PUT $api/config (see $log)"
  say "up: $api in $((SECONDS - started))s (Apicurio Registry $version, $java, log $log)"
}

down() {
  if [ -n "${SCHEMA_REGISTRY_URL:-}" ]; then
    say "SCHEMA_REGISTRY_URL is set: the local registry is not managed here, stopping nothing"
    return 0
  fi
  if ! pid_alive; then
    rm -f "$pidfile"
    say "already down"
    return 0
  fi
  local pid
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$pidfile"
  say "down"
}

status() {
  if [ -n "${SCHEMA_REGISTRY_URL:-}" ]; then
    probe=$SCHEMA_REGISTRY_URL
    http GET "$probe/subjects" && { echo "up"; return 0; }
    echo "down"
    exit 3
  fi
  if answers; then
    echo "up"
  else
    echo "down"
    exit 3
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  url) echo "${SCHEMA_REGISTRY_URL:-$api}" ;;
  *) echo "usage: $0 up | down | status | url" >&2; exit 2 ;;
esac
