package history

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps the package light for consumers: of ssetrack it may
// import only the SSE parser, and never the embedded nats-server.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		own := strings.HasPrefix(p, "github.com/ssetrack/ssetrack/")
		if own && p != "github.com/ssetrack/ssetrack/extproc/sse" && p != "github.com/ssetrack/ssetrack/extproc/journal/history" ||
			strings.HasPrefix(p, "github.com/nats-io/nats-server") {
			t.Errorf("imports %s", p)
		}
	}
}
