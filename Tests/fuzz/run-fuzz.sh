#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer target (Sources/parley-fuzz) with the fuzzer and address
# sanitizers in a build folder of its own, and fuzzes for SECONDS (default 300), starting from
# the seeds in Tests/fuzz/corpus. New inputs go to .run/fuzz-corpus; a crash leaves its input
# in .run/fuzz (replay it with: <bin>/parley-fuzz FILE) and exits non-zero.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
seconds=${1:-${FUZZ_SECONDS:-300}}
flags=(--product parley-fuzz --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DPARLEY_FUZZ)
swift build "${flags[@]}" 2>&1 | grep -vE "unhandled; explicitly declare|CMakeLists.txt|ld.gold: warning" | tail -n 1
bin=$(swift build "${flags[@]}" --show-bin-path)
mkdir -p .run/fuzz-corpus .run/fuzz
echo "fuzzing for ${seconds}s"
"$bin/parley-fuzz" -max_total_time="$seconds" -max_len=4096 -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix=.run/fuzz/ .run/fuzz-corpus Tests/fuzz/corpus 2>&1 | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|Done|==[0-9]+==|SUMMARY)|Fatal error|artifact" || true
test "${PIPESTATUS[0]}" -eq 0
