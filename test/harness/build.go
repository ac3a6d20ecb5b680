package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// built holds the binaries built in this process, each once, in one temporary folder that
// Main and Run remove at the end.
var built struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string // package → binary
}

// goBuild builds pkg (a package path go build accepts in the repository) once per process
// into a binary called name and returns its path.
func goBuild(tb TB, pkg, name string) string {
	tb.Helper()
	built.mu.Lock()
	defer built.mu.Unlock()
	if bin, ok := built.bins[pkg]; ok {
		return bin
	}
	if built.dir == "" {
		dir, err := os.MkdirTemp("", "ssetrack-harness-")
		if err != nil {
			tb.Fatalf("harness: %v", err)
		}
		built.dir = dir
		built.bins = map[string]string{}
	}
	bin := filepath.Join(built.dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
	cmd.Dir = Root(tb)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	built.bins[pkg] = bin
	return bin
}

// removeBuilt removes the binaries goBuild made.
func removeBuilt() {
	built.mu.Lock()
	defer built.mu.Unlock()
	if built.dir != "" {
		os.RemoveAll(built.dir)
		built.dir, built.bins = "", nil
	}
}

// SsetrackBin returns the ssetrack binary: $SSETRACK_BIN, else ./cmd/ssetrack built once per
// process.
func SsetrackBin(tb TB) string {
	tb.Helper()
	if bin := os.Getenv("SSETRACK_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			tb.Fatalf("SSETRACK_BIN: %v", err)
		}
		return bin
	}
	return goBuild(tb, "./cmd/ssetrack", "ssetrack")
}

// natsServerBin returns nats-server built once per process from the module cache, at the
// version go.mod pins.
func natsServerBin(tb TB) string {
	tb.Helper()
	return goBuild(tb, "github.com/nats-io/nats-server/v2", "nats-server")
}
