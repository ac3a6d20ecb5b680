package sse

import "testing"

// TestHeld pins down the latency contract on the cases that matter in the
// field: after each chunk the parser holds exactly the given bytes, and
// every other byte fed so far has been returned.
func TestHeld(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		held   []string // after each chunk
	}{
		{"crlf event, then the next", []string{"id: 1\r\ndata: a\r\n\r\n", "id: 2\r\ndata: b\r\n\r\n"}, []string{"", ""}},
		{"crlf event cut before its last LF", []string{"id: 1\r\ndata: a\r\n\r", "\nid: 2\r\n"}, []string{"", "id: 2\r\n"}},
		{"cr event", []string{"id: 1\rdata: a\r\r", "id: 2\r"}, []string{"", "id: 2\r"}},
		{"lf event", []string{"id: 1\ndata: a\n\n"}, []string{""}},
		{"heartbeats without blank lines", []string{"id: h1\ndata: a\n\n", ": ping\n", ": ping\n", "data: b\n\n"}, []string{"", "", "", ""}},
		{"heartbeat cut mid-line", []string{": pi", "ng\r", "\n"}, []string{"", "", ""}},
		{"blank lines", []string{"\n", "\r\n", "\r", "\n"}, []string{"", "", "", ""}},
		{"retry-only block", []string{"retry: 3000\r\n\r\n"}, []string{""}},
		{"retry line, block not ended", []string{"retry: 3000\n"}, []string{"retry: 3000\n"}},
		{"event cut inside a field", []string{"id: 7\nda", "ta: x\n", "\n"}, []string{"id: 7\nda", "id: 7\ndata: x\n", ""}},
		{"comment inside an undecided block", []string{"id: 7\n: c\n"}, []string{"id: 7\n: c\n"}},
		{"partial first field line", []string{"da"}, []string{"da"}},
		{"bom prefix", []string{"\xef\xbb", "\xbf: hi\n"}, []string{"\xef\xbb", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Parser
			var fed, out string
			for i, c := range tt.chunks {
				p.Feed([]byte(c))
				fed += c
				for {
					s, ok := p.Next()
					if !ok {
						break
					}
					out += string(s.Raw)
				}
				if held := fed[len(out):]; held != tt.held[i] || p.Pending() != len(held) {
					t.Fatalf("after chunk %d %q: holds %q (Pending %d), want %q", i, c, held, p.Pending(), tt.held[i])
				}
			}
			if got := out + string(p.Flush()); got != fed {
				t.Fatalf("bytes lost: %q, fed %q", got, fed)
			}
		})
	}
}
