package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stepDeadline bounds how long the upstream waits for the client to receive what it wrote.
// It is a failure deadline, not a timing assertion: a byte held back waits for the next
// upstream write, which never comes while the upstream waits, so it would wait forever.
const stepDeadline = 10 * time.Second

// lockstep is a client and an upstream handler that take turns: the upstream writes a
// piece, then waits until the client has received everything written so far before it
// writes the next. A byte ssetrack held back until the next write stalls the exchange,
// and the test reports which piece did not arrive whole.
type lockstep struct {
	pieces []string
	// ahead is how many bytes the client gets that the upstream did not write
	// (a replay from ssetrack), all before the end of the first piece.
	ahead int

	mu       sync.Mutex
	received []byte
	progress chan struct{} // signalled after each read
	stalls   []string      // pieces the client did not get whole in time
}

func newLockstep(pieces ...string) *lockstep {
	return &lockstep{pieces: pieces, progress: make(chan struct{}, 1)}
}

// serve is the upstream: it writes the pieces in turn, each after the client has the last.
// trailer, if set, is sent as an HTTP trailer after the body (HTTP/2 or chunked HTTP/1.1).
func (ls *lockstep) serve(trailer string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		if trailer != "" {
			h.Set("Trailer", "X-Stream-End")
		}
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		written := 0
		for i, p := range ls.pieces {
			if _, err := io.WriteString(w, p); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			written += len(p)
			if i < len(ls.pieces)-1 && !ls.await(ls.ahead+written) {
				ls.mu.Lock()
				ls.stalls = append(ls.stalls, fmt.Sprintf("piece %d %q: client had %q", i, p, ls.received))
				ls.mu.Unlock()
			}
		}
		if trailer != "" {
			h.Set("X-Stream-End", trailer)
		}
	}
}

// await waits until the client has received n bytes, or stepDeadline passes.
func (ls *lockstep) await(n int) bool {
	deadline := time.NewTimer(stepDeadline)
	defer deadline.Stop()
	for {
		ls.mu.Lock()
		have := len(ls.received)
		ls.mu.Unlock()
		if have >= n {
			return true
		}
		select {
		case <-ls.progress:
		case <-deadline.C:
			return false
		}
	}
}

// read is the client: it reads the body as it arrives until it ends.
func (ls *lockstep) read(body io.Reader) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			ls.mu.Lock()
			ls.received = append(ls.received, buf[:n]...)
			ls.mu.Unlock()
			select {
			case ls.progress <- struct{}{}:
			default:
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// run sends a GET for path through fx's Envoy with the session header (and lastEventID,
// unless empty) and plays the exchange; it returns what the client received.
func (ls *lockstep) run(t *testing.T, fx *fixture, path, session, lastEventID string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := http.Header{"Mcp-Session-Id": {session}}
	if lastEventID != "" {
		h.Set("Last-Event-Id", lastEventID)
	}
	resp, err := fx.open(ctx, http.MethodGet, path, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	if err := ls.read(resp.Body); err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, s := range ls.stalls {
		t.Errorf("held back: %s", s)
	}
	return string(ls.received)
}

// TestTimeliness checks the latency contract through a real Envoy: every byte but those of
// one incomplete event leaves in the answer to the chunk it came in. The upstream writes
// one piece and waits for the client to have it whole before writing the next, so a byte
// held until the next upstream write stalls the test (and fails it at stepDeadline).
func TestTimeliness(t *testing.T) {
	fx := startFixture(t, "envoy.yaml")
	cases := map[string][]string{
		"lf":         {"id: 1\ndata: a\n\n", "id: 2\ndata: b\n\n", "id: 3\ndata: c\n\n"},
		"cr":         {"id: 1\rdata: a\r\r", "id: 2\rdata: b\r\r", "id: 3\rdata: c\r\r"},
		"crlf":       {"id: 1\r\ndata: a\r\n\r\n", "id: 2\r\ndata: b\r\n\r\n", "id: 3\r\ndata: c\r\n\r\n"},
		"heartbeats": {"id: h1\ndata: a\n\n", ": ping\n", ": ping\r\n", ": ping\r", "\n", "data: b\n\n"},
		"retry-only": {"retry: 3000\r\n\r\n", "id: 1\r\ndata: a\r\n\r\n", "retry: 1000\n\n", "data: b\n\n"},
		"blank":      {"id: 1\ndata: a\n\n", "\n", "\r\n", "id: 2\ndata: b\n\n"},
		"crlf split": {"id: 1\r\ndata: a\r\n\r", "\nid: 2\r\ndata: b\r\n\r", "\n"},
	}
	before := fx.envoyStats(t)
	for name, pieces := range cases {
		t.Run(name, func(t *testing.T) {
			ls := newLockstep(pieces...)
			path := fx.up.handleFunc(ls.serve(""))
			got := ls.run(t, fx, path, "timely-"+name, "")
			if want := strings.Join(pieces, ""); got != want {
				t.Errorf("client got %q, want %q", got, want)
			}
		})
	}
	fx.checkNoFailOpen(t, before)
}

// TestTrailersEndTheBody checks an HTTP/2 upstream whose response ends with trailers:
// Envoy then sends no body chunk with end_of_stream. Every complete event reaches the
// client whole (the LF of its final CRLF included). A partial event at the end cannot be
// sent (ssetrack is not told the body ended, and an answer to trailers carries no body);
// it is counted in ssetrack_errors_total{kind="partial_event_unsent"}, and a browser would
// discard it anyway.
func TestTrailersEndTheBody(t *testing.T) {
	fx := startFixture(t, "envoy.yaml")
	// The same Envoy config with HTTP/2 (h2c, prior knowledge) to the upstream.
	src, err := os.ReadFile(filepath.Join(repoRoot, "envoy", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const anchor = "  - name: upstream\n    type: STATIC\n    connect_timeout: 5s\n"
	if !strings.Contains(string(src), anchor) {
		t.Fatalf("envoy.yaml: upstream cluster not found by %q", anchor)
	}
	h2 := strings.Replace(string(src), anchor, anchor+`    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
`, 1)
	fx.envoy.stop()
	startEnvoyConfig(t, fx, "envoy-h2c.yaml", renderConfig(t, h2, map[int]int{
		10000: 0, 8080: fx.up.port, 9001: fx.ssetrackGRPCPort, 9901: 0,
	}), 2)
	before := fx.envoyStats(t)

	events := []string{"id: 1\r\ndata: first\r\n\r\n", "id: 2\r\ndata: second\r\n\r\n"}
	t.Run("complete events", func(t *testing.T) {
		ls := newLockstep(events...)
		path := fx.up.handleFunc(ls.serve("done"))
		got := ls.run(t, fx, path, "trailers-complete", "")
		if want := strings.Join(events, ""); got != want {
			t.Errorf("client got %d bytes %q, want all %d: %q", len(got), got, len(want), want)
		}
	})
	t.Run("partial tail", func(t *testing.T) {
		m0 := fx.ssetrackMetrics(t)
		ls := newLockstep(events[0], events[1]+"id: 3\r\ndata: cut")
		path := fx.up.handleFunc(ls.serve("done"))
		got := ls.run(t, fx, path, "trailers-partial", "")
		if want := strings.Join(events, ""); got != want {
			t.Errorf("client got %q, want the complete events %q", got, want)
		}
		waitFor(t, "partial tail counted", func() bool {
			return fx.ssetrackMetrics(t).sub(m0, `ssetrack_errors_total{kind="partial_event_unsent"}`) == 1
		})
	})
	fx.checkNoFailOpen(t, before)
}

// TestReplayOnQuietStream resumes a stream whose upstream writes nothing at first. Envoy
// gives an ext_proc no way to send body bytes before the upstream's first body chunk
// (envoy/README.md, "Replay and the upstream's first byte"), so the missed events leave
// with the answer to that first chunk: here a heartbeat the upstream writes on opening,
// and the upstream writes nothing more until the client has the replay and the heartbeat.
func TestReplayOnQuietStream(t *testing.T) {
	fx := startFixture(t, "envoy.yaml")
	events := []string{"id: q1\r\ndata: a\r\n\r\n", "id: q2\r\ndata: b\r\n\r\n", "id: q3\r\ndata: c\r\n\r\n", "id: q4\r\ndata: d\r\n\r\n"}
	first := newLockstep(events...)
	// The client lost q3 and q4 in the last mile and resumes from q2.
	replay := events[2] + events[3]
	second := newLockstep(": open\n", "id: q5\r\ndata: e\r\n\r\n")
	second.ahead = len(replay)
	var requests atomic.Int32
	path := fx.up.handleFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			first.serve("")(w, r)
		} else {
			second.serve("")(w, r)
		}
	})
	if got := first.run(t, fx, path, "quiet", ""); got != strings.Join(events, "") {
		t.Fatalf("first stream: got %q", got)
	}
	waitFor(t, "the first stream in JetStream", func() bool {
		return fx.ssetrackMetrics(t).sum("ssetrack_journal_events_published_total") >= 4
	})

	got := second.run(t, fx, path, "quiet", "q2")
	if want := replay + ": open\n" + "id: q5\r\ndata: e\r\n\r\n"; got != want {
		t.Errorf("resumed stream: got %q, want %q", got, want)
	}
}

// waitFor polls cond until it holds or a generous deadline passes, then fails t.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
