package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal"
	"github.com/ssetrack/ssetrack/test/harness"
)

// TestUpstreamCut cuts the upstream's connection in the middle of an event (after event 12
// and half of event 13, no final chunk). The client gets every complete event (1..12) and
// nothing of 13 but, at most, its bytes as they came (a browser drops an unfinished event);
// the session's last id is 12, in ssetrack's KV state and in the journal, which holds
// 1..12 once. Then the client resumes:
//   - Resume: Last-Event-ID 12, the upstream repeats 11 and 12: the client gets 13..20 once;
//   - Replay: the client lost 10..12 on the last mile and resumes with Last-Event-ID 9:
//     ssetrack sends 10..12 from JetStream, drops the upstream's repeats, and the client
//     gets 10..20 once.
func TestUpstreamCut(t *testing.T) {
	requireFaultPrereqs(t)
	fx := startFixture(t, "envoy.yaml")
	js := harness.JetStream(t, fx.ssetrack.NATSURL)
	kv, err := js.KeyValue(context.Background(), journal.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}

	// Envoy's first request to a fresh ssetrack opens the ext_proc connection and reads a
	// fresh JetStream: on a loaded 2-core machine that once took longer than the shipped
	// message_timeout (0.2 s), and Envoy let that response through unprocessed. The
	// stream under test must not be that first one.
	warm := fx.up.Static(harness.Reply{Body: harness.EncodeAll(numberedEvents(1))})
	for range 4 {
		fx.get(t, warm, sessionHeader(newSession(t)))
	}

	const total, complete, overlap = 20, 12, 2
	evs := numberedEvents(total)
	full := harness.EncodeAll(evs[:complete])
	next := evs[complete].Encode()
	partial := next[:len(next)/2] // "id: 13\ndata: {\"n\":13,"...
	cutBody := append(slices.Clip(full), partial...)
	var sum tally

	for _, c := range []struct {
		name   string
		lastID string // the client's Last-Event-ID on the resume
	}{
		{"Resume", "12"},
		{"Replay", "9"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := fx.envoy.ExtProcStats(t)
			path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
				if n == 0 {
					cuts := append(harness.EventCuts(evs[:complete]), len(full)+len(partial)/2)
					return harness.Reply{Body: cutBody, Cuts: cuts, Pause: time.Millisecond, Abort: true}
				}
				sel := harness.ResumeFrom(evs, r.Header.Get("Last-Event-ID"), overlap)
				return harness.Reply{Body: harness.EncodeAll(sel), Cuts: harness.EventCuts(sel), Pause: time.Millisecond}
			})
			sid := newSession(t)

			got, readErr := readCut(fx, path, sessionHeader(sid))
			t.Logf("first stream: %d bytes, read ended with %v", len(got), readErr)
			if !bytes.HasPrefix(got, full) || !bytes.HasPrefix(cutBody, got) {
				t.Errorf("client after the cut: want events 1..%d then at most the partial event's bytes: %s",
					complete, diffStreams(got, cutBody))
			}
			if r := idsReport(allIDs(got), complete); r != "" {
				t.Errorf("client after the cut: %s", r)
			}

			// The session's last id, as ssetrack keeps it (KV, written within 100 ms) and
			// as the journal holds it.
			stored := allIDs(waitStored(t, js, sid, complete, 20*time.Second))
			if r := idsReport(stored, complete); r != "" {
				t.Errorf("JetStream after the cut: %s", r)
			}
			harness.WaitUntil(t, 20*time.Second, func() error {
				st, err := sessionState(kv, sid)
				if err != nil {
					return err
				}
				var lasts []string
				for _, id := range st.Streams {
					lasts = append(lasts, id)
				}
				if !slices.Equal(lasts, []string{strconv.Itoa(complete)}) {
					return fmt.Errorf("session state: last ids %v, want [%d]", st.Streams, complete)
				}
				return nil
			})

			h := sessionHeader(sid)
			h.Set("Last-Event-Id", c.lastID)
			resp, b := fx.get(t, path, h)
			lei, _ := strconv.Atoi(c.lastID)
			var want []string
			for i := lei + 1; i <= total; i++ {
				want = append(want, strconv.Itoa(i))
			}
			resumed := allIDs(b)
			if !slices.Equal(resumed, want) {
				t.Errorf("resume with Last-Event-ID %s (Ssetrack-Replay: %q): upstream sent %v, client got %v, want %v",
					c.lastID, resp.Header.Get("Ssetrack-Replay"), allIDs(fx.up.Sent(path)[1]), resumed, want)
			}
			if c.name == "Replay" && resp.Header.Get("Ssetrack-Replay") != "replayed" {
				t.Errorf("Ssetrack-Replay: %q, want replayed", resp.Header.Get("Ssetrack-Replay"))
			}
			fx.envoy.CheckNoFailOpen(t, before)

			var sent []string
			for _, e := range evs {
				sent = append(sent, e.ID)
			}
			// The client's events: what it kept of the first stream (up to its
			// Last-Event-ID), then the resume.
			delivered := append(slices.Clone(allIDs(got)[:lei]), resumed...)
			final := allIDs(waitStored(t, js, sid, total, 20*time.Second))
			tl := countIDs(sent, delivered, final)
			tl.log(t)
			if tl.missing != 0 || tl.duplicated != 0 || tl.persisted != total {
				t.Errorf("want every event delivered and persisted once")
			}
			sum = sum.add(tl)
		})
	}
	sum.log(t)
}

// readCut reads a response through Envoy until it ends, however it ends.
func readCut(fx *fixture, path string, h http.Header) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := fx.open(ctx, http.MethodGet, path, h, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// sessionState reads a session's state from ssetrack's KV bucket.
func sessionState(kv jetstream.KeyValue, sid string) (journal.State, error) {
	var st journal.State
	e, err := kv.Get(context.Background(), journal.SubjectToken(sid))
	if err != nil {
		return st, fmt.Errorf("session state: %w", err)
	}
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return st, fmt.Errorf("session state: %w", err)
	}
	return st, nil
}

// TestHalfOpenResume: the client's connection died without Envoy noticing (a half-open
// last mile) and the client resumed after event 2, while its old response still runs:
// events 3 to 5 go out on the old response, into the dead connection, after the resume
// began. The resumed response must still deliver them when the upstream sends them again,
// as Envoy alone would, and JetStream must hold each event once.
func TestHalfOpenResume(t *testing.T) {
	fx := startFixture(t, "envoy.yaml")
	sid := newSession(t)
	evs, old, cuts := halfOpenEvents()
	resumed := make(chan struct{}) // the resume's response headers passed ssetrack
	oldSent := make(chan struct{}) // the old response sent 3 to 5 through ssetrack
	waitMetric := func(name string, n float64) {
		for fx.ssetrack.Metrics(t).Sum(name) < n {
			time.Sleep(10 * time.Millisecond)
		}
	}
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			return harness.Reply{Header: sessionHeader(sid), Body: old, Cuts: cuts, Hold: true,
				BeforeWrite: func(off int) {
					if off == cuts[1] { // before event 3
						<-resumed
					}
				}}
		}
		return harness.Reply{Header: sessionHeader(sid), Body: harness.EncodeAll(evs[2:]),
			BeforeWrite: func(off int) {
				waitMetric(`ssetrack_resumes_total{result="matched"}`, 1)
				close(resumed)
				waitMetric("ssetrack_events_seen_total", 5)
				close(oldSent)
			}}
	})
	first := fx.openRead(t, path, sessionHeader(sid), cuts[1])
	expectBody(t, "old response before the cut", first, harness.EncodeAll(evs[:2]))
	// The client reads no more from the old connection and resumes after 2.
	_, got := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {"2"}})
	<-oldSent
	expectBody(t, "resumed response", got, harness.EncodeAll(evs[2:]))
	js := harness.JetStream(t, fx.ssetrack.NATSURL)
	stored := waitStored(t, js, sid, 6, 10*time.Second)
	if ids := allIDs(stored); fmt.Sprint(ids) != "[1 2 3 4 5 6]" {
		t.Errorf("JetStream holds ids %v, want 1 to 6 once each", ids)
	}
}

// halfOpenEvents are the half-open tests' events 1 to 6, the old response's body (1 to
// 5) and its cuts after each of the first four events.
func halfOpenEvents() (evs []harness.Event, old []byte, cuts []int) {
	evs = numberedEvents(6)
	old = harness.EncodeAll(evs[:5])
	for i := range 4 {
		cuts = append(cuts, len(harness.EncodeAll(evs[:i+1])))
	}
	return evs, old, cuts
}

// TestHalfOpenResumeOnOtherReplica is TestHalfOpenResume with the resume served by another
// replica: the client's old response runs on replica A, half open, while the client resumes
// after event 2 on replica B. B tells A (a takeover notice over NATS), and A's response,
// which goes on carrying events 3 to 5 into the dead connection, stops storing them: the
// resumed response delivers and stores them. JetStream must hold each event once; before
// the notices it held 3 to 5 twice, one copy per replica, and a later replay from 2 sent
// them twice.
func TestHalfOpenResumeOnOtherReplica(t *testing.T) {
	ns, up, a, b := startReplicas(t)
	sid := newSession(t)
	evs, old, cuts := halfOpenEvents()
	// A's response waits before event 3 until A has superseded it, for at most 20 s: past
	// that (no notice came), it goes on, and JetStream holds 3 to 5 twice.
	superseded := func() bool {
		return a.ssetrack.Metrics(t).Sum(`ssetrack_journal_takeover_notices_total{result="superseded"}`) >= 1
	}
	path := up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			return harness.Reply{Header: sessionHeader(sid), Body: old, Cuts: cuts, Hold: true,
				BeforeWrite: func(off int) {
					if off != cuts[1] { // before event 3
						return
					}
					for deadline := time.Now().Add(20 * time.Second); !superseded() && time.Now().Before(deadline); {
						time.Sleep(10 * time.Millisecond)
					}
				}}
		}
		return harness.Reply{Header: sessionHeader(sid), Body: harness.EncodeAll(evs[2:])}
	})
	first := a.openRead(t, path, sessionHeader(sid), cuts[1])
	expectBody(t, "old response before the cut", first, harness.EncodeAll(evs[:2]))
	js := harness.JetStream(t, ns.URL())
	waitStored(t, js, sid, 2, 10*time.Second) // what B loads the session from
	// The client reads no more from the old connection and resumes after 2, on B.
	_, got := b.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {"2"}})
	expectBody(t, "resumed response", got, harness.EncodeAll(evs[2:]))
	// A's response has carried 3 to 5 once ssetrack saw 5 events there.
	for deadline := time.Now().Add(20 * time.Second); a.ssetrack.Metrics(t).Sum("ssetrack_events_seen_total") < 5; {
		if time.Now().After(deadline) {
			t.Fatal("replica A's old response did not carry events 3 to 5")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !superseded() {
		t.Error("replica A superseded no response: B's takeover notice did not reach it")
	}
	waitStored(t, js, sid, 6, 10*time.Second)
	time.Sleep(200 * time.Millisecond) // a late batch of A's would be stored by now
	stored := harness.StoredSession(t, js, sid)
	if ids := allIDs(stored); fmt.Sprint(ids) != "[1 2 3 4 5 6]" {
		t.Errorf("JetStream holds ids %v, want 1 to 6 once each", ids)
	}
}

// TestResumeOnReplicaHoldingTheSession: an MCP client keeps its standalone GET open while
// its POSTs' responses stream, and round robin may send them to different replicas. Here
// the GET stays open on replica B, so B holds the session in memory, in use, as loaded
// before anything was delivered; a response on A delivers 1 to 6. The client lost 3 to 6
// on the last mile and resumes from 2 on B, from an upstream that resends nothing: only a
// replay from JetStream gives the client what it missed. B must see that its copy lacks
// A's events (another writer's batch is the session's last), merge them and replay 3 to
// 6, and store nothing twice. (Found by a black-box run with the official MCP SDKs:
// before, B answered the resume as one from an unknown id, without a replay.)
func TestResumeOnReplicaHoldingTheSession(t *testing.T) {
	ns, up, a, b := startReplicas(t)
	sid := newSession(t)
	const open, resumed = ": open\n\n", ": resumed\n\n"
	get := up.Handle(func(int, *http.Request) harness.Reply {
		return harness.Reply{Header: sessionHeader(sid), Body: []byte(open), Hold: true}
	})
	expectBody(t, "standalone GET, on B", b.openRead(t, get, sessionHeader(sid), len(open)), []byte(open))

	evs := numberedEvents(6)
	post := up.Handle(func(n int, _ *http.Request) harness.Reply {
		if n == 0 {
			return harness.Reply{Header: sessionHeader(sid), Body: harness.EncodeAll(evs)}
		}
		return harness.Reply{Header: sessionHeader(sid), Body: []byte(resumed)}
	})
	_, got := a.get(t, post, sessionHeader(sid))
	expectBody(t, "first response, on A", got, harness.EncodeAll(evs))
	js := harness.JetStream(t, ns.URL())
	waitStored(t, js, sid, 6, 10*time.Second)

	resp, got := b.get(t, post, http.Header{sessionH: {sid}, "Last-Event-Id": {"2"}})
	if h := resp.Header.Get("Ssetrack-Replay"); h != "replayed" {
		t.Errorf("resume on B: Ssetrack-Replay %q, want replayed", h)
	}
	expectBody(t, "resumed response, on B", got, append(harness.EncodeAll(evs[2:]), resumed...))
	time.Sleep(200 * time.Millisecond) // a batch stored twice would be stored by now
	if ids := allIDs(harness.StoredSession(t, js, sid)); fmt.Sprint(ids) != "[1 2 3 4 5 6]" {
		t.Errorf("JetStream holds ids %v, want 1 to 6 once each", ids)
	}
}

// startReplicas starts a nats-server, an upstream and two ssetrack replicas A and B sharing
// them, each behind its own Envoy 1.40.
func startReplicas(t *testing.T) (ns *harness.NATSServer, up *harness.Upstream, a, b *fixture) {
	t.Helper()
	requireFaultPrereqs(t)
	ns = harness.StartNATSServer(t)
	up = harness.StartUpstream(t)
	client := newClient(t)
	var reps [2]*fixture
	for i := range reps {
		s := harness.StartSsetrack(t, harness.SsetrackOptions{Name: "ssetrack " + replicaNames[i], NATSURL: ns.URL(), LogLevel: "info"})
		e := harness.StartEnvoy(t, harness.EnvoyOptions{Name: "envoy " + replicaNames[i], UpstreamPort: up.Port, ExtProcPort: s.GRPCPort})
		reps[i] = &fixture{up: up, ssetrack: s, envoy: e, client: client}
	}
	return ns, up, reps[0], reps[1]
}
