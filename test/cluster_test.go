package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal"
	"github.com/ssetrack/ssetrack/test/harness"
)

// TestNATSCluster runs ssetrack against a three-node NATS cluster (nats-server processes on
// loopback, routes between them) with --replicas 3 and all three URLs. In the middle of a
// stream one node is killed (SIGKILL) and started again; then the stream's leader (from
// stream info) is killed. The client's stream never stops (events arrive while each fault
// lasts), the client gets every event once, JetStream ends up with every event exactly once,
// and /readyz tells the truth throughout.
//
// The truth (journal.Journal.Ready): /readyz answers 200 "ready" only when ssetrack can
// publish: its NATS connection is CONNECTED and the stream has a leader; 503 with the reason
// otherwise. The test polls /readyz, bracketed by two stream-info requests of its own, and
// records each change. It asserts that /readyz is ready again after the recovery, and fails
// on any "ready" answer given while the stream had no leader both before and after it.
func TestNATSCluster(t *testing.T) {
	requireFaultPrereqs(t)
	cl := harness.StartNATSCluster(t, 3)
	fx := natsFixture(t, cl.URLs(), "--replicas", "3")

	js := harness.JetStream(t, cl.URLs(), nats.Name("e2e-observer"), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	kvStream := "KV_" + journal.DefaultBucket
	leader := harness.WaitStreamHealthy(t, js, journal.DefaultStream, 3, time.Minute)
	harness.WaitStreamHealthy(t, js, kvStream, 3, time.Minute)
	for _, s := range []string{journal.DefaultStream, kvStream} {
		sc, err := harness.StreamInfo(js, s, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if sc.Configured != 3 {
			t.Errorf("stream %s has %d replicas, want 3 (--replicas 3)", s, sc.Configured)
		}
	}

	const total = 1200
	const pace = 10 * time.Millisecond
	evs := numberedEvents(total)
	body := harness.EncodeAll(evs)
	m := newMeter(200)
	t.Cleanup(func() { m.allow(total) })
	path := fx.up.Static(meteredReply(evs, pace, m))
	sid := newSession(t)

	envoyBefore := fx.envoy.ExtProcStats(t)
	rw := watchReadiness(t, fx.ssetrack, js)
	ls := openLive(t, fx, path, sessionHeader(sid))
	ls.waitEvents(t, 100)

	// 1. One node goes away and comes back: the node ssetrack is connected to, unless that
	// is the stream's leader.
	victim := cl.Nodes[0]
	if conn, err := cl.ConnectedTo("ssetrack"); err == nil {
		victim = conn
	} else {
		t.Logf("which node ssetrack uses: %v", err)
	}
	if victim.Name == leader {
		for _, n := range cl.Nodes {
			if n.Name != leader {
				victim = n
				break
			}
		}
	}
	m.allow(600)
	at := ls.events.Load()
	rw.mark(fmt.Sprintf("SIGKILL node %s (stream leader: %s)", victim.Name, leader))
	victim.Kill()
	ls.waitEvents(t, at+100) // the stream goes on with a node down
	rw.mark("restart node " + victim.Name)
	victim.Start(t)
	harness.WaitStreamHealthy(t, js, journal.DefaultStream, 3, time.Minute)
	harness.WaitStreamHealthy(t, js, kvStream, 3, time.Minute)
	rw.mark("node " + victim.Name + " rejoined: stream replicas current")
	t.Logf("node %s down and back: the client got %d events meanwhile", victim.Name, ls.events.Load()-at)

	// 2. The stream's leader goes away for good.
	leader = harness.WaitStreamHealthy(t, js, journal.DefaultStream, 3, time.Minute)
	m.allow(total)
	at = ls.events.Load()
	rw.mark("SIGKILL the stream leader " + leader)
	cl.Node(leader).Kill()
	newLeader := harness.WaitStreamHealthy(t, js, journal.DefaultStream, 2, 2*time.Minute)
	during := ls.events.Load() - at
	rw.mark("new stream leader " + newLeader)
	t.Logf("stream leader %s killed; %s took over; the client got %d events meanwhile", leader, newLeader, during)
	if during <= 0 {
		t.Errorf("no event reached the client while the stream had no leader: the stream stalled on NATS")
	}

	got := ls.wait(t)
	expectBody(t, "client stream", got, body)
	if r := idsReport(allIDs(got), total); r != "" {
		t.Errorf("client: %s", r)
	}
	stored := waitStored(t, js, sid, total, 2*time.Minute)
	if r := idsReport(allIDs(stored), total); r != "" {
		t.Errorf("JetStream: %s", r)
	}
	if !bytes.Equal(stored, body) {
		t.Errorf("JetStream payloads differ from the stream: %s", diffStreams(stored, body))
	}
	harness.WaitUntil(t, time.Minute, func() error {
		if ok, ans := readyz(http.DefaultClient, fx.ssetrack); !ok {
			return fmt.Errorf("/readyz after the recovery: %s", ans)
		}
		return nil
	})
	rw.mark("/readyz ready after the recovery; stream ended, journal complete")
	rw.stop()

	met := fx.ssetrack.Metrics(t)
	if d := met.Sum(mRecordsDropped) + met.Sum(mRejected); d != 0 {
		t.Errorf("ssetrack dropped %v journal records", d)
	}
	t.Logf("journal: %v events in %v batches published, %v publish errors, %v retries",
		met.Sum(mPublished), met.Sum("ssetrack_journal_batches_published_total"),
		met.Sum("ssetrack_journal_publish_errors_total"), met.Sum("ssetrack_journal_publish_retries_total"))
	fx.envoy.CheckNoFailOpen(t, envoyBefore)

	rw.report(t)
	countIDs(allIDs(body), allIDs(got), allIDs(stored)).log(t)
}

// readinessWatch polls ssetrack's /readyz, each answer bracketed by two stream-info requests
// of the test's own client, and keeps the changes.
type readinessWatch struct {
	start time.Time
	done  chan struct{}
	quit  chan struct{}

	mu        sync.Mutex
	log       []string // changes and marks, with their time
	lies      []string // "ready" while the stream had no leader before and after
	readyN    int
	notReadyN int
}

// leaderState is what one stream-info request said.
type leaderState struct {
	known  bool   // the test's client was connected and got an answer or a timeout
	leader string // "" when the stream had no leader
}

func watchReadiness(t *testing.T, s *harness.Ssetrack, js jetstream.JetStream) *readinessWatch {
	rw := &readinessWatch{start: time.Now(), done: make(chan struct{}), quit: make(chan struct{})}
	c := &http.Client{Timeout: time.Second}
	nc := js.Conn()
	ask := func() leaderState {
		sc, err := harness.StreamInfo(js, journal.DefaultStream, time.Second)
		if nc.Status() != nats.CONNECTED {
			return leaderState{}
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) &&
			!errors.Is(err, jetstream.ErrJetStreamNotEnabled) && !errors.Is(err, nats.ErrNoResponders) &&
			!strings.Contains(err.Error(), "unavailable") {
			return leaderState{} // a connection error: unknown
		}
		return leaderState{known: true, leader: sc.Leader}
	}
	go func() {
		defer close(rw.done)
		prev := ""
		for {
			select {
			case <-rw.quit:
				return
			case <-time.After(50 * time.Millisecond):
			}
			before := ask()
			ok, ans := readyz(c, s)
			after := ask()
			leader := after.leader
			if !after.known {
				leader = "?"
			} else if leader == "" {
				leader = "none"
			}
			state := fmt.Sprintf("/readyz %s; stream leader %s", ans, leader)
			rw.mu.Lock()
			if ok {
				rw.readyN++
			} else {
				rw.notReadyN++
			}
			if state != prev {
				rw.log = append(rw.log, fmt.Sprintf("%6.2fs %s", time.Since(rw.start).Seconds(), state))
				prev = state
			}
			if ok && before.known && after.known && before.leader == "" && after.leader == "" {
				rw.lies = append(rw.lies, fmt.Sprintf("%.2fs", time.Since(rw.start).Seconds()))
			}
			rw.mu.Unlock()
		}
	}()
	t.Cleanup(rw.stop)
	return rw
}

// mark records a step of the test in the timeline.
func (rw *readinessWatch) mark(what string) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	rw.log = append(rw.log, fmt.Sprintf("%6.2fs -- %s", time.Since(rw.start).Seconds(), what))
}

func (rw *readinessWatch) stop() {
	select {
	case <-rw.quit:
	default:
		close(rw.quit)
	}
	<-rw.done
}

// report logs the timeline and judges the answers.
func (rw *readinessWatch) report(t *testing.T) {
	t.Helper()
	rw.mu.Lock()
	defer rw.mu.Unlock()
	t.Logf("readiness timeline (%d ready, %d not-ready answers):\n  %s", rw.readyN, rw.notReadyN, strings.Join(rw.log, "\n  "))
	if len(rw.lies) > 0 {
		msg := fmt.Sprintf("/readyz said ready %d times while the stream had no leader (ssetrack could not publish), at %s",
			len(rw.lies), strings.Join(clipIDs(rw.lies), " "))
		t.Error(msg)
	}
}
