package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// TestReplayFromJetStream: the client lost the last events the gateway
// delivered (the last mile), and the upstream cannot resume: it ignores
// Last-Event-ID and continues live. ssetrack sends the lost events from
// JetStream before the upstream's, so the client ends with every event once.
func TestReplayFromJetStream(t *testing.T) {
	fx := startFixture(t, "envoy.yaml")
	sid := newSession(t)
	evs := numberedEvents(9)
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			b := harness.EncodeAll(evs[:6])
			return harness.Reply{Header: sessionHeader(sid), Body: b, Cuts: harness.EveryCut(len(b), 3)}
		}
		b := harness.EncodeAll(evs[6:]) // live continuation, whatever the client asks
		return harness.Reply{Header: sessionHeader(sid), Body: b, Cuts: harness.EveryCut(len(b), 2)}
	})
	_, got1 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "first stream", got1, harness.EncodeAll(evs[:6]))

	// Publishing is asynchronous: wait (bounded) until the six events are
	// in JetStream, so the replay is complete rather than refused.
	waitPublished(t, fx, 6, "the first stream")

	// The client says it got only up to 3.
	before := fx.ssetrack.Metrics(t)
	resp, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {"3"}})
	if h := resp.Header.Get("Ssetrack-Replay"); h != "replayed" {
		t.Fatalf("Ssetrack-Replay = %q, want replayed", h)
	}
	want := append(harness.EncodeAll(evs[3:6]), fx.up.Sent(path)[1]...)
	expectBody(t, "resumed stream", got2, want)
	after := fx.ssetrack.Metrics(t)
	expectDelta(t, `ssetrack_replays_total{result="replayed"}`, before, after, 1)
	expectDelta(t, "ssetrack_events_replayed_total", before, after, 3)
	expectDelta(t, mDedup, before, after, 0)

	// Resuming again from the end replays nothing, and the events stay in
	// JetStream once: the replay was not persisted again.
	resp, got3 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {"9"}})
	if h := resp.Header.Get("Ssetrack-Replay"); h != "" {
		t.Errorf("Ssetrack-Replay = %q on a current client", h)
	}
	if !bytes.Equal(got3, nil) {
		t.Errorf("third stream forwarded %q; the upstream only sent events the client has", got3)
	}
	waitPublished(t, fx, 9, "the resumed stream")
	if n := fx.ssetrack.Metrics(t).Sum("ssetrack_journal_events_published_total"); n != 9 {
		t.Errorf("journal published %v events, want 9 (each once)", n)
	}
}

// waitPublished waits (bounded) until ssetrack's journal has published n events in all.
func waitPublished(t *testing.T, fx *fixture, n float64, what string) {
	t.Helper()
	harness.WaitUntil(t, 10*time.Second, func() error {
		if got := fx.ssetrack.Metrics(t).Sum(mPublished); got < n {
			return fmt.Errorf("the journal did not publish %s: %v of %v events published", what, got, n)
		}
		return nil
	})
}

// TestReplayBeyondWindow: the client lost more events than the session's dedup window
// remembers (--dedup-window 8, 30 events lost), so its Last-Event-ID is no longer in
// memory. ssetrack asks JetStream which stream carried that id, continues that stream and
// replays everything the client missed; the upstream continues live.
func TestReplayBeyondWindow(t *testing.T) {
	fx := newFixture(t, "envoy.yaml", harness.SsetrackOptions{Args: []string{"--dedup-window", "8"}})
	sid := newSession(t)
	evs := numberedEvents(40)
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			b := harness.EncodeAll(evs[:35])
			return harness.Reply{Header: sessionHeader(sid), Body: b, Cuts: harness.EventCuts(evs[:35])}
		}
		b := harness.EncodeAll(evs[35:]) // live continuation, whatever the client asks
		return harness.Reply{Header: sessionHeader(sid), Body: b, Cuts: harness.EventCuts(evs[35:])}
	})
	_, got1 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "first stream", got1, harness.EncodeAll(evs[:35]))
	waitPublished(t, fx, 35, "the first stream")

	// The client got only the first 5 events: its id left the window 22 events ago.
	before := fx.ssetrack.Metrics(t)
	resp, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {evs[4].ID}})
	if h := resp.Header.Get("Ssetrack-Replay"); h != "replayed" {
		t.Fatalf("Ssetrack-Replay = %q, want replayed", h)
	}
	expectBody(t, "resumed stream", got2, harness.EncodeAll(evs[5:]))
	after := fx.ssetrack.Metrics(t)
	expectDelta(t, `ssetrack_resumes_total{result="located"}`, before, after, 1)
	expectDelta(t, `ssetrack_replays_total{result="replayed"}`, before, after, 1)
}

// TestReplayAcrossUnstoredEvents: among the events a client lost in the last mile is one
// that went out but that JetStream does not hold: one over --max-event-size (forwarded
// untracked), or one over the NATS server's max_payload (8 MiB on the embedded server:
// the journal gives it up). A replay would send the events after it and lose it, so the
// resume is answered "incomplete" and the upstream's copy goes through, in order.
func TestReplayAcrossUnstoredEvents(t *testing.T) {
	for _, tc := range []struct {
		name, maxEventSize string
		size               int // the unstored event's data
		metric             string
	}{
		{"over --max-event-size", "1024", 4 << 10, "ssetrack_events_oversize_total"},
		{"over max_payload", "16777216", 9 << 20, `ssetrack_journal_records_dropped_total{reason="too_large"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t, "envoy.yaml", harness.SsetrackOptions{Args: []string{"--max-event-size", tc.maxEventSize}})
			sid := newSession(t)
			evs := numberedEvents(7)
			evs[3].Data = strings.Repeat("x", tc.size)
			path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
				if n == 0 {
					return harness.Reply{Header: sessionHeader(sid), Body: harness.EncodeAll(evs[:6])}
				}
				// An upstream that resumes: everything after the client's id.
				return harness.Reply{Header: sessionHeader(sid), Body: harness.EncodeAll(evs[3:])}
			})
			_, got1 := fx.get(t, path, sessionHeader(sid))
			expectBody(t, "first stream", got1, harness.EncodeAll(evs[:6]))
			harness.WaitUntil(t, 20*time.Second, func() error {
				m := fx.ssetrack.Metrics(t)
				if m.Sum(tc.metric) < 1 || m.Sum(mPublished) < 5 {
					return fmt.Errorf("%s %v, %v events published; want 1 and 5", tc.metric, m.Sum(tc.metric), m.Sum(mPublished))
				}
				return nil
			})
			// The client lost 4, 5 and 6 after the gateway.
			resp, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {"3"}})
			if h := resp.Header.Get("Ssetrack-Replay"); h != "incomplete" {
				t.Errorf("Ssetrack-Replay = %q, want incomplete", h)
			}
			expectBody(t, "resumed stream", got2, harness.EncodeAll(evs[3:]))
		})
	}
}

// TestReplayRightAfterDelivery: the client resumes at once, while its first response is
// still open and the events it missed are still on their way to JetStream (--batch-delay
// 1h: a batch would wait an hour, and only a stream's end publishes at once). The replay
// publishes them first, then replays them.
func TestReplayRightAfterDelivery(t *testing.T) {
	fx := newFixture(t, "envoy.yaml", harness.SsetrackOptions{Args: []string{"--batch-delay", "1h"}})
	sid := newSession(t)
	evs := numberedEvents(8)
	first := harness.EncodeAll(evs[:6])
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			return harness.Reply{Header: sessionHeader(sid), Body: first, Hold: true}
		}
		return harness.Reply{Header: sessionHeader(sid), Body: harness.EncodeAll(evs[6:])} // cannot resume
	})
	got1 := fx.openRead(t, path, sessionHeader(sid), len(first))
	expectBody(t, "first stream", got1, first)
	// The client lost 4 to 6 and resumes while the first response is still open.
	resp, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {"3"}})
	if h := resp.Header.Get("Ssetrack-Replay"); h != "replayed" {
		t.Errorf("Ssetrack-Replay = %q, want replayed", h)
	}
	expectBody(t, "resumed stream", got2, harness.EncodeAll(evs[3:]))
}
