package sse

import (
	"testing"
)

// FuzzChunkSplit feeds data in chunks whose sizes come from cuts (one byte
// per chunk, 1+b%32 bytes, the last chunk taking the rest) under a size
// limit chosen by limitSel, and checks it against a byte-at-a-time run and
// the reference: same segments (oversize parts merged) and an exact byte
// partition, for both runs.
func FuzzChunkSplit(f *testing.F) {
	for _, in := range goldenInputs(f) {
		f.Add(in, []byte{0, 3, 1, 7, 31}, uint8(0))
		f.Add(in, []byte{2}, uint8(2))
	}
	f.Add([]byte("\r\n\r\n"), []byte{0, 0, 0}, uint8(1))
	f.Add([]byte("\xef\xbb\xbf\r\r\n"), []byte{0, 1}, uint8(3))
	f.Fuzz(func(t *testing.T, data, cuts []byte, limitSel uint8) {
		limit := []int{0, 1, 2, 5, 16, 64}[int(limitSel)%6]
		var chunks [][]byte
		rest := data
		for _, c := range cuts {
			n := min(1+int(c%32), len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		chunks = append(chunks, rest)

		want := reference(data, limit)
		if err := checkInvariants(data, limit, bytewise(data), want); err != nil {
			t.Fatalf("byte at a time: %v", err)
		}
		if err := checkInvariants(data, limit, chunks, want); err != nil {
			t.Fatalf("chunks %d: %v", len(chunks), err)
		}
	})
}
