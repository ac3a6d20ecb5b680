package e2e

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHostileEventIDs streams events whose ids are hostile to naive code:
// huge, not UTF-8, subject wildcards, spaces, a JSON-looking id and one with
// a NUL (which SSE ignores). The client gets the bytes as sent; a resume
// without Last-Event-ID where the upstream starts over gets nothing twice;
// JetStream holds each event once.
func TestHostileEventIDs(t *testing.T) {
	if !journalEnabled() {
		t.Skip("E2E_SSETRACK_ARGS has --journal=false")
	}
	fx := startFixture(t, "envoy.yaml")
	sid := newSession(t) + " *>.\tx" // inner whitespace: HTTP trims it at the ends
	evs := []sseEvent{
		{id: strings.Repeat("h", 200_000), data: "huge id"},
		{id: "\xff\xfe\x80", data: "not utf-8"},
		{id: "a.b.*.>", data: "wildcards"},
		{id: "  spaced  out ", data: "spaces"},
		{id: `{"id":1}`, data: "json id"},
		{id: "nul\x00id", data: "ignored id: a browser keeps the previous one"},
		{id: "b64:AAAA", data: "looks encoded"},
		{data: "no id"},
	}
	body := encodeAll(evs)
	path := fx.up.handle(func(n int, r *http.Request) reply {
		return reply{header: sessionHeader(sid), body: body, cuts: everyCut(len(body), 4096)}
	})
	_, got1 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "first stream", got1, body)
	// The upstream starts over: every event with a (valid) id is dropped;
	// the id-less one and the one whose id SSE ignores pass.
	_, got2 := fx.get(t, path, sessionHeader(sid))
	want := encodeAll([]sseEvent{evs[5], evs[7]})
	expectBody(t, "second stream", got2, want)

	wantStored := append(bytes.Clone(body), want...)
	stored := waitStored(t, jsClient(t, fx.natsURL), sid, len(allIDs(wantStored)), 10*time.Second)
	if !bytes.Equal(stored, wantStored) {
		t.Errorf("JetStream holds %d bytes, want the %d forwarded: %s", len(stored), len(wantStored), diffStreams(stored, wantStored))
	}
}
