package extproc

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports holds the layering the package docs state: imports flow one
// way, from cmd down to the parser, and only the journal packages reach NATS.
func TestImports(t *testing.T) {
	const mod = "github.com/ssetrack/ssetrack/"
	tests := []struct {
		pkg string
		// ok reports whether pkg may depend (directly or not) on dep, a
		// package outside the standard library.
		ok func(dep string) bool
	}{
		{"extproc/sse", func(string) bool { return false }},
		{"extproc/session", func(string) bool { return false }},
		{"extproc", func(dep string) bool {
			return !strings.HasPrefix(dep, "github.com/nats-io/") && !strings.HasPrefix(dep, mod+"extproc/journal") &&
				!strings.HasPrefix(dep, mod+"cmd/") && !strings.HasPrefix(dep, mod+"test/")
		}},
		{"extproc/journal", func(dep string) bool {
			return dep == mod+"extproc/session" || dep == mod+"extproc/sse" || dep == mod+"extproc/journal/history" ||
				!strings.HasPrefix(dep, mod)
		}},
		// Consumers import history: the parser and nats.go, never the
		// embedded server or the ext_proc side.
		{"extproc/journal/history", func(dep string) bool {
			return dep == mod+"extproc/sse" || !strings.HasPrefix(dep, mod) && !strings.HasPrefix(dep, "github.com/nats-io/nats-server")
		}},
	}
	for _, tt := range tests {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", mod+tt.pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", tt.pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep != mod+tt.pkg && !tt.ok(dep) {
				t.Errorf("%s depends on %s", tt.pkg, dep)
			}
		}
	}
}
