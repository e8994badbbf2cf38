# The front door: the same commands a developer and CI run.
.PHONY: run test build protos check-protos bench chaos fuzz clean

run:
	./deploy/local/run.sh

test:
	./Tests/run-tests.sh

build:
	swift build

protos:
	./deploy/scripts/generate-protos.sh

check-protos:
	./deploy/scripts/generate-protos.sh --check

# QUICK=1 for a short run (about two minutes of load).
bench:
	QUICK=$(QUICK) ./Tests/bench/run-bench.sh

chaos:
	./Tests/chaos/run-chaos.sh

# FUZZ_SECONDS=300 by default.
fuzz:
	./Tests/fuzz/run-fuzz.sh

clean:
	rm -rf .build .run
