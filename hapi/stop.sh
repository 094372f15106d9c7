#!/usr/bin/env bash
# Stops the HAPI FHIR test server started by start.sh (or the Python API) on PORT (default 8090).
#   hapi/stop.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")"
port="${1:-8090}"
pidfile="run/hapi-$port.pid"
if [ ! -f "$pidfile" ]; then
  echo "HAPI FHIR not running on port $port (no $pidfile)"
  exit 0
fi
pid=$(cat "$pidfile")
if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'procfhir-hapi-server.jar'; then
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null || true
  fi
  echo "HAPI FHIR on port $port stopped (pid $pid)"
else
  echo "HAPI FHIR not running on port $port (stale $pidfile removed)"
fi
rm -f "$pidfile"
