package e2e

import (
	"bytes"
	"net/http"
	"testing"
	"time"
)

// TestReplayFromJetStream: the client lost the last events the gateway
// delivered (the last mile), and the upstream cannot resume: it ignores
// Last-Event-ID and continues live. ssetrack sends the lost events from
// JetStream before the upstream's, so the client ends with every event once.
func TestReplayFromJetStream(t *testing.T) {
	fx := startFixture(t, "envoy.yaml")
	sid := newSession(t)
	evs := numberedEvents(9)
	path := fx.up.handle(func(n int, r *http.Request) reply {
		if n == 0 {
			b := encodeAll(evs[:6])
			return reply{header: sessionHeader(sid), body: b, cuts: everyCut(len(b), 3)}
		}
		b := encodeAll(evs[6:]) // live continuation, whatever the client asks
		return reply{header: sessionHeader(sid), body: b, cuts: everyCut(len(b), 2)}
	})
	_, got1 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "first stream", got1, encodeAll(evs[:6]))

	// Publishing is asynchronous: wait (bounded) until the six events are
	// in JetStream, so the replay is complete rather than refused.
	for try := 0; fx.ssetrackMetrics(t).sum("ssetrack_journal_events_published_total") < 6; try++ {
		if try == 500 {
			t.Fatal("the journal did not publish the first stream")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The client says it got only up to 3.
	before := fx.ssetrackMetrics(t)
	resp, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {"3"}})
	if h := resp.Header.Get("Ssetrack-Replay"); h != "replayed" {
		t.Fatalf("Ssetrack-Replay = %q, want replayed", h)
	}
	want := append(encodeAll(evs[3:6]), fx.up.sent(path)[1]...)
	expectBody(t, "resumed stream", got2, want)
	after := fx.ssetrackMetrics(t)
	expectDelta(t, `ssetrack_replays_total{result="replayed"}`, before, after, 1)
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
	for try := 0; fx.ssetrackMetrics(t).sum("ssetrack_journal_events_published_total") < 9; try++ {
		if try == 500 {
			t.Fatal("the journal did not publish the resumed stream")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := fx.ssetrackMetrics(t).sum("ssetrack_journal_events_published_total"); n != 9 {
		t.Errorf("journal published %v events, want 9 (each once)", n)
	}
}
