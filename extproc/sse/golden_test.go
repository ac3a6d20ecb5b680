package sse

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the parser's output")

// goldenMax sets MaxEventSize for golden inputs that exercise the limit.
var goldenMax = map[string]int{
	"oversize_small": 64,
}

// goldenInputs returns the testdata/*.sse files by name (without extension).
func goldenInputs(t testing.TB) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "*.sse"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no testdata/*.sse")
	}
	inputs := make(map[string][]byte, len(paths))
	for _, path := range paths {
		in, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		inputs[strings.TrimSuffix(filepath.Base(path), ".sse")] = in
	}
	return inputs
}

// TestGolden parses each testdata/NAME.sse in one chunk and compares the
// segments with testdata/NAME.golden (one segment per line, then the flush).
// Run with -update to rewrite the golden files after checking the diff.
func TestGolden(t *testing.T) {
	for name, in := range goldenInputs(t) {
		t.Run(name, func(t *testing.T) {
			got, err := run(goldenMax[name], [][]byte{in})
			if err != nil {
				t.Fatal(err)
			}
			if got.joined() != string(in) {
				t.Fatalf("partition broken")
			}
			// The golden files are checked against the oracle too, so that
			// -update cannot bless a parser bug.
			if ref := reference(in, goldenMax[name]).String(); got.String() != ref {
				t.Errorf("parser and reference differ\nparser:\n%sreference:\n%s", got, ref)
			}
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got.String() != string(want) {
				t.Errorf("%s mismatch\ngot:\n%swant:\n%s", path, got, want)
			}
		})
	}
}
