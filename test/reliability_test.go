package e2e

// Helpers of the reliability tests (issue 10): a NATS cluster losing nodes
// (TestNATSCluster), ssetrack killed mid-stream (TestSsetrackKilled), an upstream cut in the
// middle of an event (TestUpstreamCut), a reconnect storm (TestReconnectStorm) and a soak
// (TestSoak). Each prints one tally line in the format of tally.log, so runs compare at a
// glance.

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// tally counts the events of a reliability test. Each count is of distinct event ids,
// except duplicated:
//   - sent: events the upstream sent;
//   - delivered: events the client received (complete blocks);
//   - persisted: events in JetStream;
//   - duplicated: copies beyond the first, the client's and JetStream's together;
//   - missing: events sent that the client did not receive.
type tally struct {
	sent, delivered, persisted, duplicated, missing int
}

// countIDs tallies the ids the upstream sent, the client received and JetStream holds.
func countIDs(sent, delivered, persisted []string) tally {
	distinct := func(ids []string) (map[string]bool, int) {
		set := map[string]bool{}
		dups := 0
		for _, id := range ids {
			if set[id] {
				dups++
			}
			set[id] = true
		}
		return set, dups
	}
	s, _ := distinct(sent)
	d, dd := distinct(delivered)
	p, pd := distinct(persisted)
	c := tally{sent: len(s), delivered: len(d), persisted: len(p), duplicated: dd + pd}
	for id := range s {
		if !d[id] {
			c.missing++
		}
	}
	return c
}

// add sums two tallies.
func (c tally) add(o tally) tally {
	return tally{c.sent + o.sent, c.delivered + o.delivered, c.persisted + o.persisted, c.duplicated + o.duplicated, c.missing + o.missing}
}

// log prints the tally as one line: "tally <test>: sent=N delivered=N persisted=N
// duplicated=N missing=N".
func (c tally) log(t *testing.T) {
	t.Helper()
	t.Logf("tally %s: sent=%d delivered=%d persisted=%d duplicated=%d missing=%d",
		t.Name(), c.sent, c.delivered, c.persisted, c.duplicated, c.missing)
}

// meter lets an upstream stream run at its pace up to a limit the test raises, so that a
// stream outlives every fault a test injects however long the faults take, and ends when
// the test says so.
type meter struct {
	mu    sync.Mutex
	cond  *sync.Cond
	limit int // events that may be written
}

func newMeter(limit int) *meter {
	m := &meter{limit: limit}
	m.cond = sync.NewCond(&m.mu)
	return m
}

// wait blocks until event i (from 0) may be written.
func (m *meter) wait(i int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i >= m.limit {
		m.cond.Wait()
	}
}

// allow raises the limit to n events.
func (m *meter) allow(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.limit = max(m.limit, n)
	m.cond.Broadcast()
}

// meteredReply sends evs, one chunk per event with pace between them, each written only when
// m allows it.
func meteredReply(evs []harness.Event, pace time.Duration, m *meter) harness.Reply {
	cuts := harness.EventCuts(evs)
	index := map[int]int{0: 0} // body offset → event index
	for i, c := range cuts {
		index[c] = i + 1
	}
	return harness.Reply{
		Body: harness.EncodeAll(evs), Cuts: cuts, Pause: pace,
		BeforeWrite: func(off int) { m.wait(index[off]) },
	}
}

// readyz asks ssetrack's /readyz once: 200 and its body, or the status or error.
func readyz(c *http.Client, s *harness.Ssetrack) (bool, string) {
	resp, err := c.Get(s.MetricsURL + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	return resp.StatusCode == http.StatusOK, fmt.Sprintf("%d %q", resp.StatusCode, bytes.TrimSpace(b))
}
