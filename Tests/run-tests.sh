#!/usr/bin/env bash
# `make test`: unit tests, integration tests against a real PostgreSQL started here, and
# cluster tests that run the real executables behind HAProxy (and a headless browser).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# --- what the tests need on a fresh machine ----------------------------------------------
need=()
command -v haproxy >/dev/null || need+=(haproxy)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v nft >/dev/null || need+=(nftables)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}..."
  apt-get install -y "${need[@]}" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
fi
python3 -c "import pytest, requests, websocket, selenium, yaml, openapi_spec_validator" 2>/dev/null ||
  python3 -m pip install -q pytest requests websocket-client selenium pyyaml openapi-spec-validator

echo "== build"
swift build --build-tests 2>&1 | grep -vE "unhandled; explicitly declare|CMakeLists.txt" | tail -n 3
bin=$(swift build --show-bin-path)

# --- a private PostgreSQL for this run --------------------------------------------------------
pgdata=$(mktemp -d /tmp/parley-test-pg.XXXXXX)
pgport=${PARLEY_TEST_PG_PORT:-$((56000 + RANDOM % 4000))}
cleanup() { "$root/deploy/local/postgres.sh" stop "$pgdata"; rm -rf "$pgdata"; }
trap cleanup EXIT
admin=$("$root/deploy/local/postgres.sh" start "$pgdata" "$pgport")
psql "$admin" -qc "CREATE DATABASE parley_store_tests" >/dev/null
export PARLEY_TEST_ADMIN_URL=$admin
export PARLEY_TEST_DATABASE_URL=${admin%/*}/parley_store_tests

echo "== generated gRPC code matches Protos/"
./deploy/scripts/generate-protos.sh --check 2>&1 | grep -vE "unhandled; explicitly declare|CMakeLists.txt" | tail -n 1

echo "== unit and PostgreSQL integration tests (swift test)"
swift test --skip-build 2>&1 | grep -vE "unhandled; explicitly declare|CMakeLists.txt" | tee /tmp/parley-swift-test.log | grep -E "✘|error|passed|failed" | tail -n 40
grep -qE "Test run with [0-9]+ tests? (in [0-9]+ suites? )?passed" /tmp/parley-swift-test.log || { echo "swift test failed"; exit 1; }

echo "== fuzzing the decoders, short (make fuzz runs for 5 minutes)"
FUZZ_SECONDS=${PARLEY_TEST_FUZZ_SECONDS:-30} ./Tests/fuzz/run-fuzz.sh

echo "== fault injection in the namespace topology, short (make chaos runs every class with 20 seeds)"
python3 Tests/chaos/run_chaos.py --bin "$bin" --seeds 1 --conversations 4 --out "$(mktemp -d /tmp/parley-chaos.XXXXXX)" \
  --classes kill-visitor-gateway,kill-relay,postgres-crash,partition-edge-relay,partition-relay-postgres-oneway,drain-visitor-gateway \
  | tail -n 9

echo "== cluster, browser and checker tests (pytest)"
export PARLEY_BIN_DIR=$bin
python3 -m pytest -q -p no:cacheprovider Tests/cluster Tests/chaos "$@"

