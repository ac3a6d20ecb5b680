package e2e

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// TestObservabilityMode runs envoy/envoy-observe.yaml: Envoy never waits
// for ssetrack, so the client gets every byte the upstream sent, duplicates
// included, while JetStream still gets each event once.
func TestObservabilityMode(t *testing.T) {
	if !journalEnabled() {
		t.Skip("E2E_SSETRACK_ARGS has --journal=false")
	}
	fx := startFixture(t, "envoy-observe.yaml")
	sid := newSession(t)
	evs := numberedEvents(8)
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			b := harness.EncodeAll(evs[:5])
			return harness.Reply{Header: sessionHeader(sid), Body: b, Cuts: harness.EveryCut(len(b), 6)}
		}
		b := harness.EncodeAll(harness.ResumeFrom(evs, r.Header.Get("Last-Event-ID"), 2))
		return harness.Reply{Header: sessionHeader(sid), Body: b, Cuts: harness.EveryCut(len(b), 4)}
	})
	_, got1 := fx.get(t, path, sessionHeader(sid))
	_, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {"5"}})
	sent := fx.up.Sent(path)
	expectBody(t, "first stream", got1, sent[0])
	expectBody(t, "resumed stream (observed, not deduplicated)", got2, sent[1])

	want := harness.EncodeAll(evs) // 1..8, each once
	stored := waitStored(t, harness.JetStream(t, fx.ssetrack.NATSURL), sid, len(evs), 10*time.Second)
	// Envoy does not wait for ssetrack here, so a request's messages may
	// reach it after the next request's: each event is stored once, but the
	// two streams' order is not guaranteed.
	got := allIDs(stored)
	slices.Sort(got) // ids 1..8: one digit each
	if !slices.Equal(got, allIDs(want)) {
		t.Errorf("JetStream holds ids %v (sorted), want %v", got, allIDs(want))
	}
}
