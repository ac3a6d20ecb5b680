package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// TestReconnectStorm: 100 sessions stream, then each resumes 10 times in a row with
// Last-Event-ID, all sessions at once: 1,000 resumes through Envoy, about 100 in flight at
// any moment. Each resume the upstream has 5 new events and repeats 2 the client has; on
// every other resume the client claims to have lost its last 2 events on the last mile
// (Last-Event-ID 2 events back), so they must come again, from JetStream (replay) or from
// the upstream. Every response must hold exactly the events after the client's
// Last-Event-ID, each once; JetStream must hold each session's events once.
//
// It runs twice: as configured, and with --journal-timeout 1ms, so that most history loads
// and replay reads fail as they do on an overloaded gateway; the client must still get each
// event once (from the upstream), and JetStream must still hold each event once.
func TestReconnectStorm(t *testing.T) {
	requireFaultPrereqs(t)
	t.Run("default", func(t *testing.T) { testReconnectStorm(t) })
	t.Run("journal-timeouts", func(t *testing.T) { testReconnectStorm(t, "--journal-timeout", "1ms") })
}

func testReconnectStorm(t *testing.T, args ...string) {
	ns := harness.StartNATSServer(t)
	fx := natsFixture(t, ns.URL(), append([]string{"--log-level", "warn"}, args...)...)

	const sessions, resumes, initial, step, overlap, lostOnLastMile = 100, 10, 5, 5, 2, 2
	const total = initial + resumes*step
	evs := numberedEvents(total)

	type stormSession struct {
		sid       string
		path      string
		end       int // events the upstream has; set before each request
		mu        sync.Mutex
		responses [][]string // the ids of each response
		history   []string   // one line per request, for failure messages
		errs      []string
	}
	ss := make([]*stormSession, sessions)
	for i := range ss {
		s := &stormSession{sid: newSession(t)}
		s.path = fx.up.Handle(func(n int, r *http.Request) harness.Reply {
			s.mu.Lock()
			end := s.end
			s.mu.Unlock()
			sel := harness.ResumeFrom(evs[:end], r.Header.Get("Last-Event-ID"), overlap)
			return harness.Reply{Body: harness.EncodeAll(sel), Cuts: harness.EventCuts(sel)}
		})
		ss[i] = s
	}
	envoyBefore := fx.envoy.ExtProcStats(t)
	before := fx.ssetrack.Metrics(t)

	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(func() {
			last := 0 // the last event the client has
			for r := 0; r <= resumes; r++ {
				s.mu.Lock()
				s.end = initial + r*step
				s.mu.Unlock()
				h := sessionHeader(s.sid)
				lei := 0
				if r > 0 {
					lei = last
					if r%2 == 0 {
						lei = last - lostOnLastMile
					}
					h.Set("Last-Event-Id", strconv.Itoa(lei))
				}
				resp, b, err := fx.fetch(s.path, h)
				if err != nil {
					s.errs = append(s.errs, err.Error())
					return
				}
				replay := resp.Header.Get("Ssetrack-Replay")
				var want []string
				for i := lei + 1; i <= initial+r*step; i++ {
					want = append(want, strconv.Itoa(i))
				}
				got := allIDs(b)
				s.history = append(s.history, fmt.Sprintf("request %d, Last-Event-ID %d, Ssetrack-Replay %q: got %v", r, lei, replay, got))
				if !slices.Equal(got, want) {
					s.errs = append(s.errs, fmt.Sprintf("request %d (Last-Event-ID %d): got %v, want %v", r, lei, got, want))
				}
				s.mu.Lock()
				s.responses = append(s.responses, got)
				s.mu.Unlock()
				if len(got) > 0 {
					last, _ = strconv.Atoi(got[len(got)-1])
				}
			}
		})
	}
	wg.Wait()

	after := fx.ssetrack.Metrics(t)
	js := harness.JetStream(t, ns.URL())
	var sum tally
	failed := 0
	var sent []string
	for _, e := range evs {
		sent = append(sent, e.ID)
	}
	for i, s := range ss {
		for _, e := range s.errs {
			if failed++; failed <= 5 {
				t.Errorf("session %d: %s", i, e)
			}
		}
		var stored []string
		err := harness.WaitUntilErr(30*time.Second, func() error {
			stored = allIDs(harness.StoredSession(t, js, s.sid))
			if r := idsReport(stored, total); r != "" {
				return fmt.Errorf("session %d: JetStream: %s", i, r)
			}
			return nil
		})
		if err != nil {
			msg := fmt.Sprintf("%v\n  %s", err, strings.Join(s.history, "\n  "))
			if failed++; failed <= 5 {
				t.Error(msg)
			}
		}
		// The client's copies: what it kept of each response (the events it lost on the
		// last mile before an even-numbered request do not count as delivered then).
		var kept []string
		for r, resp := range s.responses {
			if next := r + 1; next < len(s.responses) && next%2 == 0 {
				resp = resp[:max(0, len(resp)-lostOnLastMile)]
			}
			kept = append(kept, resp...)
		}
		sum = sum.add(countIDs(sent, kept, stored))
	}
	if failed > 5 {
		t.Errorf("... %d failures in all", failed)
	}
	t.Logf("%d resumes: ssetrack dropped %v duplicates, resumes %v, replays %v",
		sessions*resumes, after.Sub(before, mDedup), resumeCounts(before, after, "ssetrack_resumes_total"), resumeCounts(before, after, "ssetrack_replays_total"))
	fx.envoy.CheckNoFailOpen(t, envoyBefore)
	sum.log(t)
	if sum.missing != 0 || sum.duplicated != 0 || sum.persisted != sessions*total {
		t.Errorf("want every event of every session delivered and persisted once")
	}
}

// resumeCounts lists the series of a labelled counter that grew, with their growth.
func resumeCounts(before, after harness.Metrics, name string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if n, _ := splitName(k); n == name {
			if d := v - before[k]; d != 0 {
				out[k[len(name):]] = d
			}
		}
	}
	return out
}

// splitName returns a Metrics key's metric name and the rest.
func splitName(key string) (string, string) {
	for i, c := range key {
		if c == '{' {
			return key[:i], key[i:]
		}
	}
	return key, ""
}
