// Package harness starts the real parts of an ssetrack system for tests, benchmarks and the
// demo, each on free loopback ports, and reads what they report:
//
//   - the ssetrack binary built from this repository (once per process; SSETRACK_BIN runs a
//     prebuilt one instead), with its embedded NATS server or an external one;
//   - Envoy with a config from envoy/, rendered by RenderEnvoyConfig (only the ports change,
//     so the shipped configs are what runs);
//   - nats-server as a process of its own, built from the version go.mod pins, that a test
//     may stop, kill and start again on the same port and store; or three of them routed
//     as one JetStream cluster (StartNATSCluster), whose stream leader StreamInfo names;
//   - a scripted SSE upstream (Upstream) that records every body it sent.
//
// Metrics are read with github.com/prometheus/common/expfmt (Metrics), Envoy's ext_proc
// counters from its admin (Envoy.ExtProcStats); WaitUntil replaces hand-written polling loops.
//
// Every helper takes a TB, which *testing.T, *testing.B and testing.TB satisfy as they are;
// Run gives a program outside `go test` (cmd/demo) the same helpers. Processes stop when the
// TB ends (Cleanup), and their output is logged if it failed, or always with E2E_LOGS=1.
//
// Environment:
//
//	ENVOY_BIN           the Envoy binary; else .cache/envoy/<ENVOY_VERSION or 1.40.0>/envoy,
//	                    where envoy/install.sh puts it
//	SSETRACK_BIN        a prebuilt ssetrack instead of `go build ./cmd/ssetrack`
//	E2E_SSETRACK_ARGS   flags added to every `ssetrack serve` (e.g. --journal=false)
//	E2E_ENVOY_LOG_LEVEL Envoy's log level (default warning)
//	E2E_LOGS=1          log the processes' output even when the TB passed
//	CI=true             a missing Envoy fails instead of skipping
//
// The package lives in the main module, outside _test.go files, so that other test code
// (this module's test/ and modules that replace-import it) can share it. It may import the
// ssetrack packages it reads formats from (extproc/journal); no product package imports it.
package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TB is the part of testing.TB the helpers use. *testing.T, *testing.B and any testing.TB
// satisfy it; Run provides one for programs.
type TB interface {
	Cleanup(func())
	Errorf(format string, args ...any)
	Failed() bool
	Fatalf(format string, args ...any)
	Helper()
	Logf(format string, args ...any)
	Skipf(format string, args ...any)
	TempDir() string
}

var _ TB = testing.TB(nil)

// StartTimeout bounds how long a process may take to become ready.
const StartTimeout = 60 * time.Second

// pollInterval is how often WaitUntil and the readiness checks look again.
const pollInterval = 20 * time.Millisecond

// WaitUntil calls cond until it returns nil and fails tb with cond's last error if that has
// not happened within timeout. cond runs on the caller's goroutine, so it may itself call
// tb.Fatalf to give up early (a process that exited, a stream that ended).
func WaitUntil(tb TB, timeout time.Duration, cond func() error) {
	tb.Helper()
	if err := poll(timeout, cond); err != nil {
		tb.Fatalf("%v", err)
	}
}

// poll is WaitUntil returning the error: "after <timeout>: <cond's last error>".
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if s, ok := errors.AsType[stopError](err); ok {
			return s.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// stop marks an error that ends a poll at once.
func stop(err error) error { return stopError{err} }

type stopError struct{ error }

var (
	rootOnce sync.Once
	root     string
	rootErr  error
)

// Root returns the repository's top folder: the first folder upwards from the working
// directory whose go.mod declares module github.com/ssetrack/ssetrack.
func Root(tb TB) string {
	tb.Helper()
	dir, err := rootDir()
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return dir
}

// rootDir is Root returning the error; it looks once per process.
func rootDir() (string, error) {
	rootOnce.Do(func() { root, rootErr = findRoot() })
	return root, rootErr
}

func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(b) == modulePathSsetrack {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("harness: not inside the ssetrack repository (no go.mod of github.com/ssetrack/ssetrack above the working directory)")
		}
		dir = parent
	}
}

// modulePathSsetrack is the module the harness belongs to.
const modulePathSsetrack = "github.com/ssetrack/ssetrack"

// modulePath returns the module path a go.mod declares.
func modulePath(gomod []byte) string {
	for line := range strings.Lines(string(gomod)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// ci reports whether CI is set to a true value (CI=true, CI=1).
func ci() bool {
	v, _ := strconv.ParseBool(os.Getenv("CI"))
	return v
}

// Main runs the tests of m for a TestMain: it reports which Envoy the tests use (or that
// they skip without one, or fails when CI is set), runs them, and removes what the harness
// built. Use it as os.Exit(harness.Main(m)).
func Main(m *testing.M) int {
	defer removeBuilt()
	if bin, err := envoyBin(); err != nil {
		if ci() {
			bangs := strings.Repeat("!", 80)
			fmt.Fprintf(os.Stderr, "\n%s\n!!! FATAL: %v\n!!! CI=true, so a missing Envoy is an error: run envoy/install.sh (make test does).\n%s\n\n",
				bangs, err, bangs)
			return 1
		}
		stars := strings.Repeat("*", 80)
		fmt.Fprintf(os.Stderr, "\n%s\n*** SKIPPING EVERY TEST THAT NEEDS ENVOY: %v\n*** Run envoy/install.sh or set ENVOY_BIN (make test does this for you).\n%s\n\n",
			stars, err, stars)
	} else if v, err := envoyVersion(bin); err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		return 1
	} else {
		fmt.Fprintf(os.Stderr, "harness: using %s\n", v)
	}
	return m.Run()
}

// Run runs f outside `go test` with a TB of its own: Fatalf and Skipf end f (as they end a
// test), Errorf marks it failed, Logf writes to log, Cleanup functions run in reverse order
// when f is done, and TempDir folders are removed then. Run returns the first error f
// reported, or nil. Programs such as cmd/demo use it to share the harness with the tests.
func Run(log func(string), f func(tb TB)) error {
	r := &runner{log: log}
	defer removeBuilt()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer r.cleanup()
		f(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// runner is Run's TB.
type runner struct {
	log func(string)

	mu       sync.Mutex
	err      error
	cleanups []func()
}

func (r *runner) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *runner) cleanup() {
	for {
		r.mu.Lock()
		n := len(r.cleanups)
		if n == 0 {
			r.mu.Unlock()
			return
		}
		f := r.cleanups[n-1]
		r.cleanups = r.cleanups[:n-1]
		r.mu.Unlock()
		f()
	}
}

func (r *runner) Errorf(format string, args ...any) { r.fail(fmt.Errorf(format, args...)) }

func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err != nil
}

func (r *runner) Fatalf(format string, args ...any) {
	r.fail(fmt.Errorf(format, args...))
	runtime.Goexit()
}

func (r *runner) Skipf(format string, args ...any) { r.Fatalf(format, args...) }

func (r *runner) Helper() {}

func (r *runner) Logf(format string, args ...any) {
	if r.log != nil {
		r.log(fmt.Sprintf(format, args...))
	}
}

func (r *runner) TempDir() string {
	dir, err := os.MkdirTemp("", "ssetrack-run-")
	if err != nil {
		r.Fatalf("temp dir: %v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// WaitUntilErr is WaitUntil returning the error instead of failing a TB: cond's last error,
// after timeout.
func WaitUntilErr(timeout time.Duration, cond func() error) error { return poll(timeout, cond) }
