#!/usr/bin/env bash
# `make chaos`: every fault class with many seeds against the real executables; prints the
# summary table and, last, the summary's path. Extra arguments go to run_chaos.py
# (e.g. --seeds 3 --jobs 2 --classes kill-relay,postgres-crash). Needs root: it builds network
# namespaces (deploy/netns/topology.sh) and runs every node on a host of its own.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nft >/dev/null || need+=(nftables)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y "${need[@]}" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
fi
python3 -c "import requests, websocket" 2>/dev/null || python3 -m pip install -q requests websocket-client
swift build --build-tests 2>&1 | grep -vE "unhandled; explicitly declare|CMakeLists.txt" | tail -n 1
exec python3 Tests/chaos/run_chaos.py --bin "$(swift build --show-bin-path)" --out "${PARLEY_CHAOS_OUT:-$root/.run/chaos}" "$@"
