// Package e2e holds the end-to-end tests: a real Envoy binary, the ssetrack binary built
// from this repository, an SSE upstream served by the test over real TCP, and real HTTP
// clients, wired together with the Envoy configs shipped in envoy/ (only their ports are
// rewritten, so the shipped configs are what is tested).
//
// Envoy is found through ENVOY_BIN, else at .cache/envoy/<ENVOY_VERSION or 1.40.0>/envoy,
// where envoy/install.sh puts it (`make test` runs the script first). Without Envoy the
// tests skip with a loud message, except when CI is true (CI=true or CI=1), where a missing Envoy fails the run.
//
// SSETRACK_BIN runs the tests against a prebuilt ssetrack instead of building one.
// E2E_ENVOY_LOG_LEVEL sets Envoy's log level (default warning); E2E_SSETRACK_ARGS adds flags to
// `ssetrack serve` (for example --journal=false while the journal is being debugged).
// E2E_LOGS=1 prints the processes' output even when the tests pass.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// defaultEnvoyVersion is the Envoy release the suite runs against unless told otherwise.
const defaultEnvoyVersion = "1.40.0"

var (
	// repoRoot is the repository's top folder.
	repoRoot string
	// envoyBin is the Envoy binary, or "" when none was found.
	envoyBin string
	// envoyMissing explains why envoyBin is empty.
	envoyMissing string
	// ssetrackBin is the ssetrack binary built by TestMain.
	ssetrackBin string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "go.mod"))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: cannot find the repository root: %v\n", err)
		return 1
	}
	repoRoot = root

	envoyBin, envoyMissing = findEnvoy()
	if envoyBin == "" {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			fmt.Fprintf(os.Stderr, "\n%s\n!!! e2e: FATAL: %s\n!!! CI=true, so a missing Envoy is an error: run envoy/install.sh (make test does).\n%s\n\n",
				strings.Repeat("!", 80), envoyMissing, strings.Repeat("!", 80))
			return 1
		}
		fmt.Fprintf(os.Stderr, "\n%s\n*** e2e: SKIPPING ALL END-TO-END TESTS: %s\n*** Run envoy/install.sh or set ENVOY_BIN (make test does this for you).\n%s\n\n",
			strings.Repeat("*", 80), envoyMissing, strings.Repeat("*", 80))
		return m.Run()
	}
	if out, err := exec.Command(envoyBin, "--version").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %s --version: %v\n%s", envoyBin, err, out)
		return 1
	} else {
		fmt.Fprintf(os.Stderr, "e2e: using %s", bytes.TrimLeft(out, "\n"))
	}

	tmp, err := os.MkdirTemp("", "ssetrack-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	if bin := os.Getenv("SSETRACK_BIN"); bin != "" {
		ssetrackBin = bin
	} else {
		ssetrackBin = filepath.Join(tmp, "ssetrack")
		if err := buildSsetrack(ssetrackBin); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
	}
	return m.Run()
}

// findEnvoy returns the Envoy binary to use, or "" and the reason there is none.
func findEnvoy() (bin, missing string) {
	if bin := os.Getenv("ENVOY_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Sprintf("ENVOY_BIN=%s: %v", bin, err)
		}
		return bin, ""
	}
	version := os.Getenv("ENVOY_VERSION")
	if version == "" {
		version = defaultEnvoyVersion
	}
	bin = filepath.Join(repoRoot, ".cache", "envoy", version, "envoy")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Sprintf("no Envoy %s at %s and ENVOY_BIN is not set", version, bin)
	}
	return bin, ""
}

func buildSsetrack(out string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/ssetrack")
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/ssetrack: %w\n%s", err, b)
	}
	return nil
}

// requireEnvoy skips the test when there is no Envoy (TestMain already failed the run if
// CI=true).
func requireEnvoy(t *testing.T) {
	t.Helper()
	if envoyBin == "" {
		t.Skipf("SKIPPING END-TO-END TEST: %s", envoyMissing)
	}
}

var errExited = errors.New("process exited")
