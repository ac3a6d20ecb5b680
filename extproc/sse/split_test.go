package sse

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

// splitInputs returns the golden inputs plus generated ones that stress line
// endings at chunk edges.
func splitInputs(t testing.TB) map[string][]byte {
	inputs := goldenInputs(t)
	gen := map[string]string{
		"crlf_pairs":     "\r\n\r\n\r\n",
		"cr_lf_alt":      "\r\r\n\n\r\n\r",
		"bom_crlf":       "\xef\xbb\xbf\r\n\r\n",
		"bom_bom":        "\xef\xbb\xbf\xef\xbb\xbf",
		"bom_prefix_eol": "\xef\xbb\r\n\n",
		"bom_prefix_cr":  "\xef\r\r",
		"lone_cr_lines":  "data: a\rdata: b\rid: c\r\revent: d\r\r",
		"long_line":      "data: " + string(bytes.Repeat([]byte("x"), 300)) + "\n\n",
		"cr_in_value":    "data: a\r \r\n\r\n",
		"nested_colons":  "data:: x\nid:::\nevent: a: b\n\n",
	}
	for k, v := range gen {
		inputs["gen_"+k] = []byte(v)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 8 {
		inputs[fmt.Sprintf("random_%d", i)] = randomStream(r, 40+r.IntN(200))
	}
	return inputs
}

// randomStream builds n bytes drawn mostly from SSE syntax.
func randomStream(r *rand.Rand, n int) []byte {
	atoms := []string{"\n", "\r", "\r\n", "data", "data:", "data: ", "id: ", "id", "event:", "retry: ", "12", "x", ":", " ", "\x00", "\xef\xbb\xbf", "\xef"}
	var b []byte
	for len(b) < n {
		b = append(b, atoms[r.IntN(len(atoms))]...)
	}
	return b
}

// splitLimits are the size limits every split test runs under: the default,
// and small ones so that oversize blocks meet chunk edges everywhere.
var splitLimits = []int{0, 1, 8, 33}

// TestSplitEveryOffset feeds each input in one chunk, byte by byte, split
// once at every offset and, for small inputs, split twice at every pair of
// offsets. Every run must give the same segments as the reference (oversize
// parts of one block merged) and partition the input exactly.
func TestSplitEveryOffset(t *testing.T) {
	for name, in := range splitInputs(t) {
		for _, limit := range splitLimits {
			if limit == 0 {
				limit = goldenMax[name]
			}
			t.Run(fmt.Sprintf("%s/max%d", name, limit), func(t *testing.T) {
				want := reference(in, limit)
				check := func(desc string, chunks [][]byte) {
					t.Helper()
					if err := checkInvariants(in, limit, chunks, want); err != nil {
						t.Fatalf("%s: %v", desc, err)
					}
				}
				check("one chunk", [][]byte{in})
				check("byte by byte", bytewise(in))
				for i := 0; i <= len(in); i++ {
					check(fmt.Sprintf("split at %d", i), splitAt(in, i))
				}
				if len(in) > 200 {
					return
				}
				for i := 0; i <= len(in); i++ {
					for j := i; j <= len(in); j++ {
						check(fmt.Sprintf("split at %d,%d", i, j), splitAt(in, i, j))
					}
				}
			})
		}
	}
}

// TestSplitWithEmptyChunks checks that empty chunks anywhere change nothing.
func TestSplitWithEmptyChunks(t *testing.T) {
	for name, in := range goldenInputs(t) {
		var chunks [][]byte
		for _, c := range bytewise(in) {
			chunks = append(chunks, nil, c, []byte{})
		}
		if err := checkInvariants(in, goldenMax[name], chunks, reference(in, goldenMax[name])); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
