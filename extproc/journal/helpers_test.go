package journal

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
	"github.com/ssetrack/ssetrack/extproc/session"
)

// testLog logs to stderr with -v and JOURNAL_TEST_LOG=1, else nowhere.
func testLog() *slog.Logger {
	if os.Getenv("JOURNAL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startTestServer starts an embedded JetStream server on a random port.
func startTestServer(t testing.TB) *Server {
	t.Helper()
	s, err := StartServer(ServerConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s
}

func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := Connect(ConnConfig{URLs: []string{url}, ReconnectWait: 100 * time.Millisecond}, testLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func newPublisher(t testing.TB, nc *nats.Conn, cfg Config) *Publisher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := New(ctx, nc, cfg, testLog(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	return p
}

// events renders n events with ids "<tag>-<first>".."<tag>-<first+n-1>".
func events(tag string, first, n int) ([]byte, []string) {
	var b strings.Builder
	ids := make([]string, 0, n)
	for i := first; i < first+n; i++ {
		id := fmt.Sprintf("%s-%d", tag, i)
		fmt.Fprintf(&b, "id: %s\nevent: message\ndata: {\"n\":%d}\n\n", id, i)
		ids = append(ids, id)
	}
	return []byte(b.String()), ids
}

// record builds a record of n events numbered from seq first.
func record(sid, stream string, first, n int, end bool) session.Record {
	data, ids := events(stream, first, n)
	r := session.Record{
		Session: sid, Stream: stream, Count: n, Data: data, End: end,
		FirstSeq: uint64(first), LastSeq: uint64(first + n - 1),
	}
	if n > 0 {
		r.FirstID, r.LastID = ids[0], ids[n-1]
	}
	return r
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reader returns a history reader of cfg's stream.
func reader(t testing.TB, js jetstream.JetStream, cfg Config) *history.Reader {
	t.Helper()
	cfg = cfg.withDefaults()
	st, err := js.Stream(context.Background(), cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	return history.NewReader(st, cfg.SubjectPrefix)
}

// readAll returns a session's stored batches.
func readAll(t testing.TB, js jetstream.JetStream, cfg Config, sid string) []history.Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []history.Batch
	for b, err := range reader(t, js, cfg).Batches(ctx, sid, history.ReadOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		b.Data = append([]byte(nil), b.Data...)
		out = append(out, b)
	}
	return out
}

func jsOf(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
