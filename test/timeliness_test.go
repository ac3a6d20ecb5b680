package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// stepDeadline bounds how long the upstream waits for the client to receive what it wrote.
// It is a failure deadline, not a timing assertion: a byte held back waits for the next
// upstream write, which never comes while the upstream waits, so it would wait forever.
const stepDeadline = 10 * time.Second

// lockstep is a client and an upstream reply that take turns: the upstream writes a piece,
// then waits until the client has received everything written so far before it writes the
// next. A byte ssetrack held back until the next write stalls the exchange, and the test
// reports which piece did not arrive whole.
type lockstep struct {
	pieces []string
	// ahead is how many bytes the client gets that the upstream did not write (a replay
	// from ssetrack), all before the end of the first piece.
	ahead int

	mu       sync.Mutex
	received []byte
	progress chan struct{} // signalled after each read
	stalls   []string      // pieces the client did not get whole in time
}

func newLockstep(pieces ...string) *lockstep {
	return &lockstep{pieces: pieces, progress: make(chan struct{}, 1)}
}

// reply is the upstream's side: the pieces, each written once the client has the ones
// before it, then trailer (if any) as HTTP trailers.
func (ls *lockstep) reply(trailer http.Header) harness.Reply {
	var cuts []int
	off := 0
	for _, p := range ls.pieces[:len(ls.pieces)-1] {
		off += len(p)
		cuts = append(cuts, off)
	}
	return harness.Reply{
		Body: []byte(strings.Join(ls.pieces, "")), Cuts: cuts, Trailer: trailer,
		BeforeWrite: func(off int) {
			if off > 0 && !ls.await(ls.ahead+off) {
				ls.mu.Lock()
				ls.stalls = append(ls.stalls, fmt.Sprintf("after %d bytes written: client had %q", off, ls.received))
				ls.mu.Unlock()
			}
		},
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

// run is the client: a GET for path through fx's Envoy with the session header (and
// lastEventID, unless empty), reading the body as it arrives until it ends. It returns
// what the client received.
func (ls *lockstep) run(t *testing.T, fx *fixture, path, session, lastEventID string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := http.Header{sessionH: {session}}
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
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
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
			break
		}
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, s := range ls.stalls {
		t.Errorf("held back: %s", s)
	}
	return string(ls.received)
}

// TestTimeliness checks the latency contract through a real Envoy: every byte but those of
// one incomplete event that names no id yet leaves in the answer to the chunk it came in
// (an event cut across writes streams through once its first id is known to be new). The
// upstream writes
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
		"event cut":  {"id: 1\ndata: a", "aa\ndata: b", "bb\n", "\nid: 2\r\ndata: ", "c\r\n", "\r\n"},
		"large event": {"id: 1\ndata: " + strings.Repeat("x", 40<<10), strings.Repeat("y", 40<<10),
			strings.Repeat("z", 40<<10) + "\n", "\n"},
	}
	before := fx.envoy.ExtProcStats(t)
	for name, pieces := range cases {
		t.Run(name, func(t *testing.T) {
			ls := newLockstep(pieces...)
			path := fx.up.Static(ls.reply(nil))
			got := ls.run(t, fx, path, "timely-"+name, "")
			if want := strings.Join(pieces, ""); got != want {
				t.Errorf("client got %q, want %q", got, want)
			}
		})
	}
	fx.envoy.CheckNoFailOpen(t, before)
}

// TestTrailersEndTheBody checks an HTTP/2 upstream whose response ends with trailers:
// Envoy then sends no body chunk with end_of_stream. Every complete event reaches the
// client whole (the LF of its final CRLF included). A partial event at the end cannot be
// sent when it names no id (ssetrack is not told the body ended, and an answer to trailers
// carries no body); it is counted in ssetrack_errors_total{kind="partial_event_unsent"},
// and a browser would discard it anyway. One whose first id is new went on as it came.
func TestTrailersEndTheBody(t *testing.T) {
	harness.EnvoyBin(t)
	up := harness.StartUpstream(t)
	sset := harness.StartSsetrack(t, harness.SsetrackOptions{})
	// The shipped config with HTTP/2 (h2c, prior knowledge) to the upstream.
	src := withH2Upstream(t, harness.ShippedEnvoyConfig(t, "envoy.yaml"))
	fx := sourceFixture(t, up, sset, "envoy-h2c.yaml", src)
	before := fx.envoy.ExtProcStats(t)
	trailer := http.Header{"X-Stream-End": {"done"}}

	events := []string{"id: 1\r\ndata: first\r\n\r\n", "id: 2\r\ndata: second\r\n\r\n"}
	t.Run("complete events", func(t *testing.T) {
		ls := newLockstep(events...)
		got := ls.run(t, fx, up.Static(ls.reply(trailer)), "trailers-complete", "")
		if want := strings.Join(events, ""); got != want {
			t.Errorf("client got %d bytes %q, want all %d: %q", len(got), got, len(want), want)
		}
	})
	t.Run("partial tail", func(t *testing.T) {
		m0 := sset.Metrics(t)
		ls := newLockstep(events[0], events[1]+"data: cut")
		got := ls.run(t, fx, up.Static(ls.reply(trailer)), "trailers-partial", "")
		if want := strings.Join(events, ""); got != want {
			t.Errorf("client got %q, want the complete events %q", got, want)
		}
		harness.WaitUntil(t, 30*time.Second, func() error {
			if d := sset.Metrics(t).Sub(m0, `ssetrack_errors_total{kind="partial_event_unsent"}`); d != 1 {
				return fmt.Errorf("partial_event_unsent grew by %v, want 1", d)
			}
			return nil
		})
	})
	t.Run("partial tail with an id", func(t *testing.T) {
		m0 := sset.Metrics(t)
		pieces := []string{events[0], events[1] + "id: 3\r\ndata: cut"}
		ls := newLockstep(pieces...)
		got := ls.run(t, fx, up.Static(ls.reply(trailer)), "trailers-partial-id", "")
		if want := strings.Join(pieces, ""); got != want {
			t.Errorf("client got %q, want all of it %q", got, want)
		}
		if d := sset.Metrics(t).Sub(m0, `ssetrack_errors_total{kind="partial_event_unsent"}`); d != 0 {
			t.Errorf("partial_event_unsent grew by %v, want 0", d)
		}
	})
	fx.envoy.CheckNoFailOpen(t, before)
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
	path := fx.up.Handle(func(n int, _ *http.Request) harness.Reply {
		if n == 0 {
			return first.reply(nil)
		}
		return second.reply(nil)
	})
	if got := first.run(t, fx, path, "quiet", ""); got != strings.Join(events, "") {
		t.Fatalf("first stream: got %q", got)
	}
	harness.WaitUntil(t, 30*time.Second, func() error {
		if n := fx.ssetrack.Metrics(t).Sum("ssetrack_journal_events_published_total"); n < 4 {
			return fmt.Errorf("%v events published, want 4", n)
		}
		return nil
	})
	got := second.run(t, fx, path, "quiet", "q2")
	if want := replay + ": open\n" + "id: q5\r\ndata: e\r\n\r\n"; got != want {
		t.Errorf("resumed stream: got %q, want %q", got, want)
	}
}
