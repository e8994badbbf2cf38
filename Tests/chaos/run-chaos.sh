#!/usr/bin/env bash
# `make chaos`: every fault class with many seeds against the real executables; prints the
# summary table and, last, the summary's path. Extra arguments go to run_chaos.py
# (e.g. --seeds 3 --classes kill-relay,postgres-crash).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
command -v haproxy >/dev/null || apt-get install -y haproxy >/dev/null
python3 -c "import requests, websocket" 2>/dev/null || python3 -m pip install -q requests websocket-client
swift build --build-tests 2>&1 | grep -vE "unhandled; explicitly declare|CMakeLists.txt" | tail -n 1
exec python3 Tests/chaos/run_chaos.py --bin "$(swift build --show-bin-path)" --out "${PARLEY_CHAOS_OUT:-$root/.run/chaos}" "$@"
