package sse

import (
	"strings"
	"testing"
)

// firstIDRef is the first valid id field among the ended lines of block,
// read the slow way: split at every CR, LF or CRLF, keep the lines that end.
func firstIDRef(block string) (string, bool) {
	for len(block) > 0 {
		j := strings.IndexAny(block, "\r\n")
		if j < 0 {
			return "", false // the last line has not ended
		}
		line := block[:j]
		block = block[j+1:]
		name, value, found := strings.Cut(line, ":")
		if found {
			value = strings.TrimPrefix(value, " ")
		}
		if name == "id" && !strings.Contains(value, "\x00") {
			return value, true
		}
	}
	return "", false
}

// TestIDScan feeds blocks to IDScan.Find a prefix at a time, cut at every
// offset and byte by byte, and compares each answer with firstIDRef.
func TestIDScan(t *testing.T) {
	blocks := []string{
		"id: 1\ndata: a\n",
		"data: a\r\nid: 2\r\n",
		"event: e\rid\rdata: b\r",
		"data: " + strings.Repeat("x", 40) + "\nid:7\n",
		": comment\nid: \x00bad\nid: good\n",
		"idx: 1\nid : 2\nid: 3\r\n",
		"i\nid",
		"data\n:id: 9\nid:  spaced\n",
		"retry: 10\r\n\r",
	}
	for _, b := range blocks {
		for cut := 0; cut <= len(b); cut++ {
			for _, step := range []int{0, 1} {
				var s IDScan
				var got string
				var found bool
				feed := func(end int) {
					if found {
						return
					}
					id, ok := s.Find([]byte(b[:end]))
					if ok {
						got, found = string(id), true
					}
					want, wantOK := firstIDRef(b[:end])
					if ok != wantOK || ok && string(id) != want {
						t.Fatalf("%q cut %d step %d: after %q found %q %v, want %q %v", b, cut, step, b[:end], id, ok, want, wantOK)
					}
				}
				if step == 1 {
					for end := 0; end <= len(b); end++ {
						feed(end)
					}
				} else {
					feed(cut)
					feed(len(b))
				}
				want, wantOK := firstIDRef(b)
				if found != wantOK || got != want {
					t.Fatalf("%q cut %d step %d: found %q %v, want %q %v", b, cut, step, got, found, want, wantOK)
				}
			}
		}
	}
}
