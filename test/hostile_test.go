package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/extproc/journal"
	"github.com/ssetrack/ssetrack/test/harness"
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
	evs := []harness.Event{
		{ID: strings.Repeat("h", 200_000), Data: "huge id"},
		{ID: "\xff\xfe\x80", Data: "not utf-8"},
		{ID: "a.b.*.>", Data: "wildcards"},
		{ID: "  spaced  out ", Data: "spaces"},
		{ID: `{"id":1}`, Data: "json id"},
		{ID: "nul\x00id", Data: "ignored id: a browser keeps the previous one"},
		{ID: "b64:AAAA", Data: "looks encoded"},
		{Data: "no id"},
	}
	body := harness.EncodeAll(evs)
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		return harness.Reply{Header: sessionHeader(sid), Body: body, Cuts: harness.EveryCut(len(body), 4096)}
	})
	_, got1 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "first stream", got1, body)
	// The upstream starts over: every event with a (valid) id is dropped;
	// the id-less one and the one whose id SSE ignores pass.
	_, got2 := fx.get(t, path, sessionHeader(sid))
	want := harness.EncodeAll([]harness.Event{evs[5], evs[7]})
	expectBody(t, "second stream", got2, want)

	wantStored := append(bytes.Clone(body), want...)
	// The second stream's events have no ids: wait for the bytes, not for a count of ids.
	js := harness.JetStream(t, fx.ssetrack.NATSURL)
	stored := waitStored(t, js, sid, len(allIDs(wantStored)), 10*time.Second)
	harness.WaitUntil(t, 10*time.Second, func() error {
		var err error
		if stored, _, err = harness.ReadSubject(js, journal.DefaultStream, journal.Subject(journal.DefaultSubjectPrefix, sid)); err != nil {
			return err
		}
		if len(stored) < len(wantStored) {
			return fmt.Errorf("JetStream holds %d bytes of %d", len(stored), len(wantStored))
		}
		return nil
	})
	if !bytes.Equal(stored, wantStored) {
		t.Errorf("JetStream holds %d bytes, want the %d forwarded: %s", len(stored), len(wantStored), diffStreams(stored, wantStored))
	}
}

// TestResumeFromUnmatchableID: the client resumes from an id it cannot send back byte
// for byte (HTTP trims a header value's surrounding spaces, a browser sends U+FFFD for
// bytes that are not UTF-8), or from the id of an event too large to track. The session
// does not know that id; the upstream resumes after it, and what it sends goes to the
// client whole (the client lost it in the last mile), as through Envoy alone. The resume
// continues the stream, so a second loss after it is replayed from JetStream.
func TestResumeFromUnmatchableID(t *testing.T) {
	for _, tc := range []struct {
		name, id, header string
		data             string // the event's data
		args             []string
		stored           float64 // events stored in all: the oversize one is not
	}{
		{"surrounding spaces", " 3 ", " 3 ", "c", nil, 7},
		{"not UTF-8", "3\xff", "3\uFFFD", "c", nil, 7},
		{"over --max-event-size", "3", "3", strings.Repeat("c", 4096), []string{"--max-event-size", "1024"}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t, "envoy.yaml", harness.SsetrackOptions{Args: tc.args})
			sid := newSession(t)
			evs := numberedEvents(7)
			evs[2] = harness.Event{ID: tc.id, Data: tc.data}
			extra := harness.Event{ID: "8", Data: "after the second resume"}
			path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
				switch n {
				case 0:
					return harness.Reply{Header: sessionHeader(sid), Body: harness.EncodeAll(evs[:6])}
				case 1:
					return harness.Reply{Header: sessionHeader(sid), Body: harness.EncodeAll(evs[3:])}
				default: // cannot resume: continues live
					return harness.Reply{Header: sessionHeader(sid), Body: extra.Encode()}
				}
			})
			_, got1 := fx.get(t, path, sessionHeader(sid))
			expectBody(t, "first stream", got1, harness.EncodeAll(evs[:6]))
			// The client got event 3 and lost 4, 5 and 6 after the gateway.
			_, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {tc.header}})
			expectBody(t, "resumed stream", got2, harness.EncodeAll(evs[3:]))
			// Lost again after 5: 6 and 7 come from JetStream, 6 as the first stream
			// stored it, 7 as the resumed one did.
			waitPublished(t, fx, tc.stored, "the resumed stream")
			resp, got3 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {"5"}})
			if h := resp.Header.Get("Ssetrack-Replay"); h != "replayed" {
				t.Errorf("second resume: Ssetrack-Replay = %q, want replayed", h)
			}
			expectBody(t, "second resume", got3, append(harness.EncodeAll(evs[5:]), extra.Encode()...))
		})
	}
}
