#!/bin/bash
# Start a private platform stack, run a command against it, stop the stack (also on failure).
#   flock /tmp/nexus-ray.lock timeout 1500 bash bench/with_stack.sh python bench/replica_kill.py --runs 3
# Private data dir and ports so it never meets another cluster on the machine; the rate limits are
# raised so the limiter counts but never refuses a benchmark's token.
# (Ports stay outside 10002-19999: Ray gives that range to its workers.)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-$PWD/.venv/bin/python}
# The default data dir starts empty each time (a fresh stack: no outbox history of earlier benches for the
# relay to replay at start); one the caller names is kept as it is.
FRESH=${NEXUS_DATA_DIR:+no}
export NEXUS_DATA_DIR=${NEXUS_DATA_DIR:-/tmp/nexus-bench-stack}
export NEXUS_HTTP_PORT=${NEXUS_HTTP_PORT:-28000} NEXUS_DASHBOARD_PORT=${NEXUS_DASHBOARD_PORT:-28265}
export NEXUS_METRICS_EXPORT_PORT=${NEXUS_METRICS_EXPORT_PORT:-28080} NEXUS_RAY_CLIENT_SERVER_PORT=${NEXUS_RAY_CLIENT_SERVER_PORT:-28001}
export NEXUS_RATE_LIMIT_PER_ADDRESS=100000000 NEXUS_RATE_LIMIT_PER_PRINCIPAL=100000000
trap '"$PY" -m nexus_ray.cli down >/dev/null 2>&1' EXIT
trap 'exit 143' TERM INT
"$PY" -m nexus_ray.cli down >/dev/null 2>&1
[ "${FRESH:-yes}" = yes ] && rm -rf "$NEXUS_DATA_DIR"
t0=$(date +%s)
"$PY" -m nexus_ray.cli up --detach >"$NEXUS_DATA_DIR.up.log" 2>&1 || { tail -20 "$NEXUS_DATA_DIR.up.log"; exit 1; }
echo "stack up in $(( $(date +%s) - t0 )) s" >&2
[ "${1:-}" = python ] && { shift; set -- "$PY" "$@"; }
"$@"
