#!/usr/bin/env bash
# `make bench`: measures a build (release by default) of the cluster on this machine and prints JSON.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
# PARLEY_BENCH_CONFIGURATION=debug measures the debug build (no release build needed).
config=${PARLEY_BENCH_CONFIGURATION:-release}
command -v haproxy >/dev/null || apt-get install -y haproxy >/dev/null
python3 -c "import requests" 2>/dev/null || python3 -m pip install -q requests
swift build -c "$config" 2>&1 | grep -vE "unhandled; explicitly declare|CMakeLists.txt" | tail -n 1
bin=$(swift build -c "$config" --show-bin-path)
pgdata=$(mktemp -d /tmp/parley-bench-pg.XXXXXX)
trap '"$root/deploy/local/postgres.sh" stop "$pgdata"; rm -rf "$pgdata"' EXIT
admin=$("$root/deploy/local/postgres.sh" start "$pgdata" "${PARLEY_BENCH_PG_PORT:-55999}")
python3 Tests/bench/reply_latency.py --bin "$bin" --admin-url "$admin" "$@"
