package journal

import (
	"bytes"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// TestEmbeddedServerTakesLargestEvent: an event as large as ssetrack parses
// by default (1 MiB) plus its headers fits in one message of the embedded
// server, whose own default (1 MB) would refuse it.
func TestEmbeddedServerTakesLargestEvent(t *testing.T) {
	srv := startTestServer(t)
	nc := connect(t, srv.ClientURL())
	p := newPublisher(t, nc, Config{})
	data := append(append([]byte("id: big\ndata: "), bytes.Repeat([]byte("x"), 1<<20-20)...), "\n\n"...)
	p.Append(session.Record{Session: "S", Stream: "s1", FirstID: "big", LastID: "big", Count: 1,
		FirstSeq: 1, LastSeq: 1, Data: data, End: true})
	waitFor(t, 10*time.Second, "the large batch", func() bool { return len(readAll(t, jsOf(t, nc), Config{}, "S")) == 1 })
	if got := readAll(t, jsOf(t, nc), Config{}, "S")[0].Data; !bytes.Equal(got, data) {
		t.Errorf("stored %d bytes, want %d", len(got), len(data))
	}
}
