// Package e2e holds the end-to-end tests: a real Envoy binary, the ssetrack binary built
// from this repository, an SSE upstream served by the test over real TCP, and real HTTP
// clients, wired together by test/harness with the Envoy configs shipped in envoy/ (only
// their ports are rewritten, so the shipped configs are what is tested).
//
// Envoy is found through ENVOY_BIN, else at .cache/envoy/<ENVOY_VERSION or 1.40.0>/envoy,
// where envoy/install.sh puts it (`make test` runs the script first). Without Envoy the
// tests skip with a loud message, except when CI is true (CI=true or CI=1), where a missing
// Envoy fails the run. The harness's package comment lists the other environment variables
// (SSETRACK_BIN, E2E_SSETRACK_ARGS, E2E_ENVOY_LOG_LEVEL, E2E_LOGS).
package e2e

import (
	"os"
	"testing"

	"github.com/ssetrack/ssetrack/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
