package e2e

import (
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// TestSsetrackKilled kills ssetrack (SIGKILL) in the middle of a stream, with Envoy on the
// shipped envoy/envoy.yaml (failure_mode_allow: true), then starts it again.
//
// The upstream sends every event twice in a row, so the client's bytes show where ssetrack
// stopped processing: while it runs the second copy is dropped as a duplicate; once it is
// gone both copies pass. The test checks that
//   - the client's stream goes on through Envoy after the kill (unprocessed: doubled), to its
//     end, and every event reaches the client;
//   - JetStream holds a gapless prefix of what ssetrack forwarded, each event once: the kill
//     loses the events ssetrack had forwarded but not yet had acknowledged (its open batch,
//     at most --batch-delay old, and the batch in flight), and it counts them;
//   - after the restart, resumes are deduplicated again: on a resume with Last-Event-ID the
//     upstream's repeats of events ssetrack saw are dropped (those that passed while it was
//     down it cannot know, and are counted).
func TestSsetrackKilled(t *testing.T) {
	requireFaultPrereqs(t)
	ns := harness.StartNATSServer(t)
	fx := natsFixture(t, ns.URL())

	const total, extra = 600, 20
	const pace = 2 * time.Millisecond // per copy: an event every 4 ms
	evs := numberedEvents(total + 2*extra)
	var doubled []harness.Event
	for _, e := range evs[:total] {
		doubled = append(doubled, e, e)
	}
	m := newMeter(400) // copies
	t.Cleanup(func() { m.allow(2 * total) })
	const overlap = 2
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		switch n {
		case 0:
			return meteredReply(doubled, pace, m)
		default: // resumes: the upstream honours Last-Event-ID, repeating overlap events
			sel := harness.ResumeFrom(evs[:total+n*extra], r.Header.Get("Last-Event-ID"), overlap)
			return harness.Reply{Body: harness.EncodeAll(sel), Cuts: harness.EventCuts(sel), Pause: time.Millisecond}
		}
	})
	sid := newSession(t)
	envoyBefore := fx.envoy.ExtProcStats(t)

	ls := openLive(t, fx, path, sessionHeader(sid))
	ls.waitEvents(t, 150)
	pre, preAt := fx.ssetrack.Metrics(t), ls.events.Load()
	m.allow(2 * total)
	ls.waitEvents(t, 250)
	at := ls.events.Load()
	fx.ssetrack.Kill()
	t.Logf("SIGKILL to ssetrack; the client had %d blocks", at)
	got := ls.wait(t)
	after := fx.envoy.ExtProcStats(t)
	t.Logf("envoy ext_proc after the kill: failure_mode_allowed +%v, streams_failed +%v",
		after.Sub(envoyBefore, "failure_mode_allowed"), after.Sub(envoyBefore, "streams_failed"))

	// Where ssetrack stopped: the first event the client got twice in a row.
	ids := allIDs(got)
	processed := len(ids)
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			processed = i
			break
		}
	}
	forwarded := 0 // the last event ssetrack forwarded
	if processed > 0 {
		forwarded, _ = strconv.Atoi(ids[processed-1])
	}
	if r := idsReport(ids[:processed], forwarded); r != "" {
		t.Errorf("client, while ssetrack ran: %s", r)
	}
	if processed == len(ids) {
		t.Fatalf("the client got no event twice: the stream did not go on without ssetrack (ids %v)", clipIDs(ids))
	}
	seen := map[string]int{}
	for _, id := range ids {
		seen[id]++
	}
	var missingAtClient []string
	for _, e := range evs[:total] {
		if seen[e.ID] == 0 {
			missingAtClient = append(missingAtClient, e.ID)
		}
	}
	if len(missingAtClient) > 0 {
		t.Errorf("the client never got events %v", missingAtClient)
	}

	js := harness.JetStream(t, ns.URL())
	stored := allIDs(harness.StoredSession(t, js, sid))
	if r := idsReport(stored, len(stored)); r != "" {
		t.Errorf("JetStream after the kill: %s", r)
	}
	if len(stored) > forwarded {
		t.Errorf("JetStream holds %d events, ssetrack forwarded only %d", len(stored), forwarded)
	}
	lost := forwarded - len(stored)
	t.Logf("kill window: ssetrack forwarded events 1..%d, JetStream holds 1..%d: %d events lost from the journal (forwarded, not acknowledged); %d events passed unprocessed after the kill; a scrape at %d blocks had %v forwarded, %v published",
		forwarded, len(stored), lost, total-forwarded, preAt, pre.Sum(mForwarded), pre.Sum(mPublished))

	// ssetrack again: a resume is deduplicated.
	fx.ssetrack.StartAgain(t)
	delivered := slices.Clone(ids)
	known := map[string]bool{} // ids ssetrack can know: those in JetStream
	for _, id := range stored {
		known[id] = true
	}
	unknowable := 0
	last := evs[total-1].ID
	for round := 1; round <= 2; round++ {
		h := sessionHeader(sid)
		h.Set("Last-Event-Id", last)
		_, b := fx.get(t, path, h)
		sent := fx.up.Sent(path)[round]
		var want []string // what the client lacks
		for _, id := range allIDs(sent) {
			if seen[id] == 0 {
				want = append(want, id)
			}
		}
		gotIDs := allIDs(b)
		var extraIDs []string // delivered again
		for _, id := range gotIDs {
			if seen[id] > 0 {
				extraIDs = append(extraIDs, id)
			}
		}
		fresh := slices.DeleteFunc(slices.Clone(gotIDs), func(id string) bool { return seen[id] > 0 })
		if !slices.Equal(fresh, want) {
			t.Errorf("resume %d after the restart (Last-Event-ID %s): new events %v, want %v", round, last, fresh, want)
		}
		for _, id := range extraIDs {
			if known[id] {
				t.Errorf("resume %d after the restart: event %s, which JetStream holds, was delivered again", round, id)
			} else {
				unknowable++
			}
		}
		t.Logf("resume %d after the restart (Last-Event-ID %s): upstream sent %v, client got %v", round, last, allIDs(sent), gotIDs)
		for _, id := range gotIDs {
			seen[id]++
			known[id] = true
			last = id
		}
		delivered = append(delivered, gotIDs...)
	}
	if unknowable > overlap {
		t.Errorf("the resumes delivered %d events again, more than the first resume's overlap of events ssetrack never saw (%d)", unknowable, overlap)
	}
	storedAll := allIDs(waitStored(t, js, sid, len(stored)+2*extra, 30*time.Second))
	var sentIDs []string
	for _, e := range evs {
		sentIDs = append(sentIDs, e.ID)
	}
	c := countIDs(sentIDs, delivered, storedAll)
	t.Logf("journal: %d events lost by the kill; client duplicates: %d passed twice while ssetrack was down, %d on the first resume (events that passed while it was down)",
		lost, total-forwarded, unknowable)
	c.log(t)
	if c.missing != 0 {
		t.Errorf("%d events never reached the client", c.missing)
	}
	// JetStream: what ssetrack stored before the kill, and everything the resumes delivered
	// (the new events, and the repeats it could not know).
	if want := len(stored) + 2*extra + unknowable; c.persisted != want {
		t.Errorf("JetStream holds %d distinct events, want %d", c.persisted, want)
	}
}
