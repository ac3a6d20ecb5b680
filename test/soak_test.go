package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// Soak bounds. RSS after the warm-up may grow by soakRSSGrowth (a fraction) or
// soakRSSSlackMiB, whichever is larger, by the end; goroutines and open files must come back
// within soakMargin of their count before the streams.
const (
	// More than Envoy's default circuit breakers (1024 concurrent requests or connections per
	// cluster): every stream holds an upstream connection and an ext_proc gRPC stream, so the
	// shipped config must raise both (the overflow check below fails otherwise).
	soakStreams     = 1100
	soakRSSGrowth   = 0.20
	soakRSSSlackMiB = 16
	soakMargin      = 8
	soakWindow      = 8
)

// TestSoak holds soakStreams (1,100) concurrent SSE streams through Envoy (envoy/envoy.yaml) and ssetrack
// for about 60 s (15 s with -short), each a session of its own with an event a second. It
// asserts that ssetrack's resident memory (VmRSS in /proc/<pid>/status) is flat after the
// warm-up (all streams open, then a quarter of the run, or long enough to fill the sessions'
// dedup windows): at the end it is within
// soakRSSGrowth or soakRSSSlackMiB of the warm-up figure; that once the streams ended its
// goroutines (go_goroutines on /metrics) and open file descriptors (/proc/<pid>/fd) come
// back to their count before the streams, within soakMargin; that every client got every
// event once; and that Envoy overflowed no circuit breaker (Envoy's defaults allow 1,024
// connections and requests per cluster; envoy.yaml raises them for both clusters). Envoy's fail-open count is
// logged: on a loaded machine the 200 ms message_timeout trips for some streams.
func TestSoak(t *testing.T) {
	requireFaultPrereqs(t)
	raiseFileLimit(t, 4*soakStreams+1024)
	ns := harness.StartNATSServer(t)
	// A small dedup window, so that each session's window is full after the warm-up: its
	// growth up to the window (bounded, by design) does not count as RSS growth.
	// --gc-headroom 0: with it the heap grows toward live + headroom on its own schedule,
	// which would read as RSS growth here; this test is after leaks, not the GC's target.
	fx := natsFixture(t, ns.URL(), "--log-level", "warn", "--dedup-window", strconv.Itoa(soakWindow), "--gc-headroom", "0")

	run := 60 * time.Second
	if testing.Short() {
		run = 15 * time.Second
	}
	const pace = time.Second
	events := int(run / pace)
	evs := numberedEvents(events)
	body := harness.EncodeAll(evs)
	m := newMeter(events - 1) // the last event waits for the end sample
	t.Cleanup(func() { m.allow(events) })
	path := fx.up.Handle(func(int, *http.Request) harness.Reply { return meteredReply(evs, pace, m) })

	pid := fx.ssetrack.Proc.Pid()
	// A first stream, so that the Envoy to ssetrack connections exist in the baseline.
	_, _ = fx.get(t, fx.up.Static(harness.Reply{Body: harness.EncodeAll(evs[:1])}), sessionHeader(newSession(t)))
	base := procSample(t, fx, pid)
	publishedBefore := fx.ssetrack.Metrics(t).Sum(mPublished)
	envoyBefore := fx.envoy.ExtProcStats(t)
	t.Logf("baseline: %s", base)

	start := time.Now()
	streams := make([]*liveStream, soakStreams)
	for i := range streams { // one after another: a ramp, not a thundering herd
		streams[i] = openLive(t, fx, path, sessionHeader(newSession(t)))
	}
	for _, ls := range streams {
		ls.waitEvents(t, 1)
	}
	t.Logf("%d streams open after %v; envoy message_timeouts +%v", soakStreams, time.Since(start).Round(time.Millisecond),
		fx.envoy.ExtProcStats(t).Sub(envoyBefore, "message_timeouts"))
	time.Sleep(max(run/4, (soakWindow+2)*pace))
	warm := procSample(t, fx, pid)
	t.Logf("after the warm-up: %s; envoy message_timeouts +%v", warm, fx.envoy.ExtProcStats(t).Sub(envoyBefore, "message_timeouts"))
	peak := warm.rssKiB
	harness.WaitUntil(t, 2*run, func() error {
		s := procSample(t, fx, pid)
		peak = max(peak, s.rssKiB)
		for _, ls := range streams {
			if n := ls.events.Load(); n < int64(events-1) {
				return fmt.Errorf("a stream has %d events of %d", n, events-1)
			}
		}
		return nil
	})
	end := procSample(t, fx, pid)
	t.Logf("at the end, %d streams open: %s; peak RSS %d KiB", soakStreams, end, peak)
	m.allow(events)

	failed := 0
	for i, ls := range streams {
		got := ls.wait(t)
		if !bytes.Equal(got, body) {
			if failed++; failed <= 3 {
				t.Errorf("stream %d: %s; %s", i, idsReport(allIDs(got), events), diffStreams(got, body))
			}
		}
	}
	if failed > 3 {
		t.Errorf("... %d streams in all differ from what the upstream sent", failed)
	}

	bound := warm.rssKiB + max(int64(float64(warm.rssKiB)*soakRSSGrowth), soakRSSSlackMiB<<10)
	if end.rssKiB > bound {
		t.Errorf("RSS grew from %d KiB after the warm-up to %d KiB at the end, over the bound %d KiB", warm.rssKiB, end.rssKiB, bound)
	}
	var after sample
	harness.WaitUntil(t, 60*time.Second, func() error {
		after = procSample(t, fx, pid)
		if after.goroutines > base.goroutines+soakMargin || after.fds > base.fds+soakMargin || after.streamsActive != 0 {
			return fmt.Errorf("after the streams: %s; baseline: %s", after, base)
		}
		return nil
	})
	t.Logf("after the streams ended: %s", after)

	// Envoy's message_timeout (200 ms) may trip on a loaded 2-core machine: the stream then
	// goes on without ssetrack (fail open). That is logged, not failed: the bounds above are
	// what this test asserts.
	ep := fx.envoy.ExtProcStats(t)
	t.Logf("envoy ext_proc: streams_started +%v, message_timeouts +%v, failure_mode_allowed +%v",
		ep.Sub(envoyBefore, "streams_started"), ep.Sub(envoyBefore, "message_timeouts"), ep.Sub(envoyBefore, "failure_mode_allowed"))
	stats := fx.envoy.Admin(t, "/stats?filter=overflow")
	for line := range strings.Lines(string(stats)) {
		if name, v, ok := strings.Cut(strings.TrimSpace(line), ": "); ok && v != "0" {
			t.Errorf("envoy %s = %s: a circuit breaker or limit was hit", name, v)
		}
	}
	met := fx.ssetrack.Metrics(t)
	if d := met.Sum(mRecordsDropped) + met.Sum(mRejected); d != 0 {
		t.Errorf("ssetrack dropped %v journal records", d)
	}
	// Tally: every stream's events; persisted is ssetrack's published total (reading 1,100
	// subjects back would cost more than the soak); streams that failed open are not in it.
	sent := soakStreams * events
	delivered := (soakStreams - failed) * events
	t.Logf("tally %s: sent=%d delivered=%d persisted=%d duplicated=%d missing=%d",
		t.Name(), sent, delivered, int(met.Sum(mPublished)-publishedBefore), 0, sent-delivered)
}

// sample is ssetrack's process figures at one moment.
type sample struct {
	rssKiB        int64
	goroutines    int
	fds           int
	streamsActive int
}

func (s sample) String() string {
	return fmt.Sprintf("RSS %d KiB, %d goroutines, %d open fds, %d streams active", s.rssKiB, s.goroutines, s.fds, s.streamsActive)
}

// procSample reads ssetrack's VmRSS and open file descriptors from /proc and its
// goroutines and active streams from /metrics.
func procSample(t *testing.T, fx *fixture, pid int) sample {
	t.Helper()
	rss, err := procStatusKiB(pid, "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	s := sample{rssKiB: rss}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	s.fds = len(fds)
	met := fx.ssetrack.Metrics(t)
	s.goroutines = int(met.Sum("go_goroutines"))
	s.streamsActive = int(met.Sum("ssetrack_streams_active"))
	return s
}

// procStatusKiB reads a size field of /proc/<pid>/status (Linux), such as VmRSS or
// VmHWM, in KiB.
func procStatusKiB(pid int, field string) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// raiseFileLimit raises the soft limit on open files of this process (and so of the
// processes it starts) to at least n, up to the hard limit; it fails t if that is too low.
func raiseFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Fatalf("open files: hard limit %d, the soak needs %d", lim.Max, n)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
}
