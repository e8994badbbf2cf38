#!/usr/bin/env bash
# Regenerates the committed Swift code of the internal plane from Protos/.
# With --check, fails when the committed code differs from what the .proto files produce.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v protoc >/dev/null || apt-get install -y protobuf-compiler
# A build folder of their own: building the plugins in .build would flip the flags that
# `swift build --build-tests` uses and rebuild everything the next time tests are built.
scratch=.build-protoc
swift build --scratch-path "$scratch" --product protoc-gen-swift >/dev/null
swift build --scratch-path "$scratch" --product protoc-gen-grpc-swift-2 >/dev/null
bin=$(swift build --scratch-path "$scratch" --show-bin-path)
out=Sources/ParleyRPC/Generated
target=$out
if [ "${1:-}" = "--check" ]; then target=$(mktemp -d); fi
mkdir -p "$target"
protoc --plugin="$bin/protoc-gen-swift" --plugin="$bin/protoc-gen-grpc-swift-2" \
  -I Protos \
  --swift_out="$target" --swift_opt=Visibility=Package \
  --grpc-swift-2_out="$target" --grpc-swift-2_opt=Visibility=Package \
  Protos/parley/v1/*.proto
if [ "${1:-}" = "--check" ]; then
  diff -r "$out" "$target" && echo "generated code is up to date"
fi
