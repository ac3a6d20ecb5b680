package extproc

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssetrack/ssetrack/extproc/session"
	"github.com/ssetrack/ssetrack/extproc/sse"
)

// timelyStreams are streams whose bytes must leave as early as the latency
// contract says, in every line-ending style and with bare heartbeats.
var timelyStreams = map[string]string{
	"lf":         "id: 1\ndata: a\n\nid: 2\ndata: b\n\n",
	"cr":         "id: 1\rdata: a\r\rid: 2\rdata: b\r\r",
	"crlf":       "id: 1\r\ndata: a\r\n\r\nid: 2\r\ndata: b\r\n\r\n",
	"heartbeats": "id: h1\ndata: a\n\n: ping\n: ping\r\n: ping\rdata: b\n\n",
	"retry":      "retry: 3000\r\n\r\nid: 1\r\ndata: a\r\n\r\n",
	"blanks":     "\r\n\n\rid: 1\ndata: a\n\n\r\n",
	"bom":        "\xef\xbb\xbf: hello\r\nid: 1\r\ndata: a\r\n\r\n",
	"id last":    "data: a\nid: 1\n\n: c\r\ndata: b\r\nid: 2\r\n\r\nevent: e\rid\rdata: c\r\r",
}

// TestProcessForwardsAllButUndecided checks the latency contract at the
// processor: cut at every offset, the answer to each chunk completes the
// output to everything received except the bytes of an incomplete event
// that names no id yet (these streams repeat no id, so an event that names
// one is new to the client and goes on), and the journal gets every event's
// bytes exactly.
func TestProcessForwardsAllButUndecided(t *testing.T) {
	for name, body := range timelyStreams {
		for cut := 0; cut <= len(body); cut++ {
			t.Run(fmt.Sprintf("%s/%d", name, cut), func(t *testing.T) {
				rec := &recorder{}
				table := session.NewTable(session.Config{Window: 16})
				defer table.Close()
				srv, err := New(Config{Sessions: table, Recorder: rec, Registerer: prometheus.NewRegistry()})
				if err != nil {
					t.Fatal(err)
				}
				x := newExchange(srv, context.Background())
				x.sseBody, x.sessionID = true, "S"
				x.openStream(context.Background(), false)
				var out []byte
				prev := 0
				for i, fed := range []int{cut, len(body)} {
					got, _ := x.process([]byte(body[prev:fed]), false)
					prev = fed
					out = append(out, got...)
					// What a parser given everything so far in one piece
					// holds, less an event whose first id is known, is all
					// that may be missing.
					var p sse.Parser
					p.Feed([]byte(body[:fed]))
					for _, ok := p.Next(); ok; _, ok = p.Next() {
					}
					undecided := p.Pending()
					var scan sse.IDScan
					if _, ok := scan.Find(p.Held()); ok {
						undecided = 0
					}
					if want := body[:fed-undecided]; string(out) != want {
						t.Fatalf("after chunk %d: forwarded %q, want %q", i, out, want)
					}
				}
				x.close()
				if string(out) != body {
					t.Fatalf("forwarded %q, want %q", out, body)
				}
				var journal bytes.Buffer
				for _, r := range rec.recs {
					journal.Write(r.Data)
				}
				if want := eventBytes(body); journal.String() != want {
					t.Errorf("journal %q, want %q", journal.String(), want)
				}
			})
		}
	}
}

// eventBytes returns the bytes of the events (blocks with data or an id) of
// a whole stream, as a journal must keep them.
func eventBytes(body string) string {
	var p sse.Parser
	p.Feed([]byte(body))
	var b bytes.Buffer
	for s, ok := p.Next(); ok; s, ok = p.Next() {
		if s.Kind == sse.KindBlock && (s.HasData || s.HasID) {
			b.Write(s.Raw)
		}
	}
	return b.String()
}

// TestSplitBOMWithoutSession: without a session nothing waits, not even
// the first bytes of a BOM split across chunks, whether they turn out to
// be a BOM or the start of a block.
func TestSplitBOMWithoutSession(t *testing.T) {
	for name, chunks := range map[string][]string{
		"bom":         {"\xef", "\xbb", "\xbfid: 1\ndata: a\n\n"},
		"bom in two":  {"\xef\xbb", "\xbf: c\n\n"},
		"not a bom":   {"\xef\xbb", "x: 1\n\n"},
		"end in bom":  {"\xef\xbb"},
		"whole block": {"\xef\xbb", "\xbf", "data: a\n", "\n"},
	} {
		t.Run(name, func(t *testing.T) {
			table := session.NewTable(session.Config{Window: 16})
			defer table.Close()
			srv, err := New(Config{Sessions: table, Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			x := newExchange(srv, context.Background())
			x.sseBody = true // no session: x.stream stays nil
			for i, c := range chunks {
				out, _ := x.process([]byte(c), false)
				if string(out) != c {
					t.Errorf("chunk %d %q: answered %q, want it unchanged", i, c, out)
				}
			}
			if out, _ := x.process(nil, true); len(out) != 0 {
				t.Errorf("end of stream: answered %q, want nothing more", out)
			}
		})
	}
}
