package journal

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

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

// runNATS runs an in-process nats-server with opts (logs and signals off) until t
// ends.
func runNATS(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.NoLog, opts.NoSigs = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return ns
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

// registries maps each test publisher to the Prometheus registry holding
// its metrics, which statsOf reads.
var registries sync.Map // *Publisher -> *prometheus.Registry

func newPublisher(t testing.TB, nc *nats.Conn, cfg Config) *Publisher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg := prometheus.NewRegistry()
	p, err := New(ctx, nc, cfg, testLog(), reg)
	if err != nil {
		t.Fatal(err)
	}
	registries.Store(p, reg)
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

// stats are a publisher's counters, as scraped from its registry.
type stats struct {
	QueueDepth                    int64
	Dropped, DroppedQueueFull     uint64
	Batches, Events               uint64
	PublishErrors, PublishRetries uint64
	KVWrites                      uint64
	// Takeovers counts takeover notices by result.
	Takeovers map[string]uint64
}

// statsOf reads p's metrics from the registry newPublisher gave it.
func statsOf(t testing.TB, p *Publisher) stats {
	t.Helper()
	reg, ok := registries.Load(p)
	if !ok {
		t.Fatal("publisher not made by newPublisher")
	}
	return gatherStats(t, reg.(prometheus.Gatherer))
}

// gatherStats reads the journal's metrics from g.
func gatherStats(t testing.TB, g prometheus.Gatherer) stats {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	st := stats{Takeovers: map[string]uint64{}}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			switch mf.GetName() {
			case "ssetrack_journal_queue_depth":
				st.QueueDepth = int64(v)
			case "ssetrack_journal_records_dropped_total":
				st.Dropped += uint64(v)
				for _, l := range m.GetLabel() {
					if l.GetName() == "reason" && l.GetValue() == dropQueueFull {
						st.DroppedQueueFull += uint64(v)
					}
				}
			case "ssetrack_journal_batches_published_total":
				st.Batches = uint64(v)
			case "ssetrack_journal_events_published_total":
				st.Events = uint64(v)
			case "ssetrack_journal_publish_errors_total":
				st.PublishErrors = uint64(v)
			case "ssetrack_journal_publish_retries_total":
				st.PublishRetries = uint64(v)
			case "ssetrack_journal_kv_writes_total":
				st.KVWrites = uint64(v)
			case "ssetrack_journal_takeover_notices_total":
				for _, l := range m.GetLabel() {
					st.Takeovers[l.GetValue()] = uint64(v)
				}
			}
		}
	}
	return st
}

// unstoredSeq is the session's highest sequence number not yet stored, or 0.
func (p *Publisher) unstoredSeq(sessionID string) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.unstored[sessionID]
}
