#!/usr/bin/env bash
# Starts the HAPI FHIR test server on 127.0.0.1:PORT (default 8090) in the background, building
# it first if needed, and waits until GET /fhir/metadata answers 200.
#   hapi/start.sh [PORT]
# Files: hapi/run/hapi-PORT.pid, hapi/run/hapi-PORT.log.
# Environment: HAPI_JAVA_OPTS (default -Xmx3g), HAPI_START_TIMEOUT (seconds, default 300),
#   HAPI_JDBC_URL (default: a fresh in-memory H2 database; e.g. jdbc:h2:file:/path/db keeps data).
set -euo pipefail
cd "$(dirname "$0")"
port="${1:-8090}"
case "$port" in ''|*[!0-9]*) echo "hapi/start.sh: PORT must be a number, not '$port'" >&2; exit 2 ;; esac
jar=target/procfhir-hapi-server.jar
mkdir -p run
pidfile="run/hapi-$port.pid"
log="run/hapi-$port.log"
base="http://127.0.0.1:$port/fhir"
timeout="${HAPI_START_TIMEOUT:-300}"

status_code() {
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -m 10 -w '%{http_code}' "$1" || true
  else
    python3 -c 'import sys,urllib.request
try: print(urllib.request.urlopen(sys.argv[1], timeout=10).status)
except Exception as e: print(getattr(e, "code", 0))' "$1"
  fi
}
is_ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'procfhir-hapi-server.jar'; }

if [ -f "$pidfile" ] && is_ours "$(cat "$pidfile")"; then
  if [ "$(status_code "$base/metadata")" = 200 ]; then
    echo "HAPI FHIR already running: $base (pid $(cat "$pidfile"))"
    exit 0
  fi
fi

# Build when the jar is missing or older than the sources.
if [ ! -s "$jar" ] || [ -n "$(find pom.xml src -newer "$jar" -print -quit)" ]; then
  bash ./build.sh
fi

if [ "$(status_code "$base/metadata")" != 000 ] && [ "$(status_code "$base/metadata")" != 0 ]; then
  echo "hapi/start.sh: port $port is already in use by another program" >&2
  exit 1
fi

args=(--server.port="$port" --server.address=127.0.0.1)
[ -n "${HAPI_JDBC_URL:-}" ] && args+=(--procfhir.jdbc-url="$HAPI_JDBC_URL")
# shellcheck disable=SC2086
nohup java ${HAPI_JAVA_OPTS:--Xmx3g} -jar "$jar" "${args[@]}" >"$log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pidfile"
start=$(date +%s)
while true; do
  if [ "$(status_code "$base/metadata")" = 200 ]; then
    echo "HAPI FHIR up: $base (pid $pid, $(( $(date +%s) - start )) s)"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "hapi/start.sh: the server exited during startup; last lines of $log:" >&2
    tail -n 60 "$log" >&2
    rm -f "$pidfile"
    exit 1
  fi
  if [ $(( $(date +%s) - start )) -ge "$timeout" ]; then
    echo "hapi/start.sh: no answer from $base/metadata after $timeout s; last lines of $log:" >&2
    tail -n 60 "$log" >&2
    kill "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    exit 1
  fi
  sleep 1
done
