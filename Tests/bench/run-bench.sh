#!/usr/bin/env bash
# `make bench`: builds the release executables, starts a private PostgreSQL (durable defaults),
# runs every scenario of parley-bench against fresh clusters, prints the summary table and,
# last, the JSON report's path. QUICK=1 runs a short version (about two minutes of load).
#   PARLEY_BENCH_CONFIGURATION=debug  measure the debug build instead (no release build)
#   PARLEY_BENCH_ONLY=chat,idle        run only these scenarios
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
config=${PARLEY_BENCH_CONFIGURATION:-release}
command -v haproxy >/dev/null || apt-get install -y haproxy >/dev/null
python3 -c "import requests" 2>/dev/null || python3 -m pip install -q requests
echo "== build ($config)" >&2
swift build -c "$config" 2>&1 | grep -vE "unhandled; explicitly declare|CMakeLists.txt" | tail -n 1 >&2
bin=$(swift build -c "$config" --show-bin-path)
pgdata=$(mktemp -d /tmp/parley-bench-pg.XXXXXX)
trap '"$root/deploy/local/postgres.sh" stop "$pgdata"; rm -rf "$pgdata"' EXIT
admin=$("$root/deploy/local/postgres.sh" start "$pgdata" "${PARLEY_BENCH_PG_PORT:-55999}")
postmaster=$(head -n 1 "$pgdata/postmaster.pid")
quick=()
[ -n "${QUICK:-}" ] && [ "${QUICK}" != 0 ] && quick=(--quick)
python3 Tests/bench/run_bench.py --bin "$bin" --admin-url "$admin" --postmaster "$postmaster" \
  --only "${PARLEY_BENCH_ONLY:-}" "${quick[@]}" "$@"
