package e2e

// BenchmarkPerf measures ssetrack side by side with its baselines, in one run, with one SSE
// upstream and one HTTP client:
//
//	direct          client → upstream (no Envoy): the reference
//	envoy           client → Envoy → upstream; envoy/envoy.yaml with the ext_proc filter removed
//	envoy-noop      envoy/envoy.yaml with a do-nothing ext_proc server (below): every message
//	                answered unchanged, and SSE responses switched to STREAMED with the same
//	                mode_override as ssetrack, so Envoy makes the same per-chunk round trips
//	envoy-noop-journal
//	                the same do-nothing server, which also publishes every response body chunk
//	                to a JetStream stream of its own embedded nats-server (perf_floor_test.go,
//	                noopJournal): the floor of persisting the stream through JetStream
//	envoy-ssetrack  envoy/envoy.yaml with the built ssetrack (default flags: embedded
//	                JetStream journal on, dedup on; every request carries an mcp-session-id)
//	envoy-ssetrack-nojournal
//	                the same with a second ssetrack started with --journal=false: parsing,
//	                tracking and dedup without persistence
//
// and four workloads, each run against every setup in that order:
//
//	tokens        one stream of small (100 B) LLM-token-like events, one write+flush each, as
//	              fast as the path takes them: events/s, and the latency of each event from the
//	              upstream's write to the client's read (queueing included)
//	tokens-paced  the same events at one per PERF_PACE (default 1ms): per-event latency when
//	              nothing queues, each event its own chunk and ext_proc round trip
//	mcp           PERF_STREAMS (default 64) concurrent streams of MCP JSON-RPC notifications
//	              (256 B): aggregate events/s
//	large         one stream of 64 KiB events: MB/s
//
// One benchmark op is one event (b.N events per round, split evenly across the streams), so
// ns/op is the time per event and the MB/s column is the SSE payload rate. Each result also
// has events/s, p50-us and p99-us (upstream write to client read, microseconds), and for the
// ext_proc setups chunks/ev (body chunks Envoy sent to the ext_proc server per event) and
// failopen (Envoy's fail-open counters; anything but 0 means the numbers are not ssetrack's)
// and msg-timeouts (Envoy's ext_proc message_timeouts alone, one of the fail-open counters);
// the ssetrack setups also report abandoned (ssetrack_responses_abandoned_seconds: streams
// Envoy ended while ssetrack waited for their next message; the client here never leaves
// early) and abandoned-idle-200ms+ (those where ssetrack had received nothing on the
// stream for longer than message_timeout: what Envoy gave up waiting for was on its side).
// The ext_proc setups also report xenvoy (their events/s over envoy's), and the two ssetrack
// setups xnoop (their events/s over envoy-noop's). CPU time per event (user +
// system, microseconds) is reported for Envoy (envoy-cpu-us/ev), the ext_proc server
// (xp-cpu-us/ev: the noop process, or ssetrack with its embedded NATS server) and this test
// process (harness-cpu-us/ev: client and upstream): on a small machine every process shares
// the cores, so CPU per event is the fairer measure of cost, events/s the end result.
// A table with all ratios is printed at the end.
//
// Run (a few seconds per setup; about a minute in all on two cores):
//
//	go test -run '^$' -bench Perf -benchtime 2s ./test/
//
// The benchmarks only run with -bench; `go test ./...` and `make test` never start them.
// Timing is reported, never asserted: a round fails only if the client did not receive
// every event.
//
// Environment:
//
//	PERF_STREAMS             concurrent streams of the mcp workload (default 64)
//	PERF_ROUNDS              rounds of every setup, in turn, per workload (default 1):
//	                         alternated, unlike -count, which runs a setup's rounds back
//	                         to back, so what drifts during a run weighs on all setups alike
//	PERF_PACE                interval of tokens-paced (default 1ms)
//	PERF_SSETRACK_ARGS       extra `ssetrack serve` flags, for both ssetrack setups
//	PERF_CPUPROFILE_DIR      if set, profile ssetrack (served with --pprof --pprof-sync) during
//	                         each envoy-ssetrack setup: cpu-<workload>.pprof,
//	                         PERF_CPUPROFILE_SECONDS (default 10) from the start of that setup,
//	                         and {allocs,mutex,block}-<workload>-{0,1}.pprof before and after
//	                         it (compare with go tool pprof -diff_base). Give the setup
//	                         enough load, e.g.
//	                         -bench 'Perf/^(tokens|mcp)$/envoy-ssetrack$' -benchtime 8s.
//	PERF_TRACE_DIR           if set, fetch a Go execution trace of ssetrack during each
//	                         round of each envoy-ssetrack setup, PERF_TRACE_SECONDS (default
//	                         5) from the setup's first (sizing) run on, all of the setup if
//	                         that is long enough: trace-<workload>-<round>.out (test/bench
//	                         reads them: where the messages Envoy timed out on had waited);
//	                         and run every Envoy with enable_dispatcher_stats, each Envoy
//	                         setup reporting envoy-loop-max-ms and envoy-poll-delay-max-ms
//	                         (the longest event-loop iteration and poll delay of its workers
//	                         since it started). Both cost CPU: a traced run's CPU figures
//	                         are not comparable with an untraced run's.
//	E2E_LOGS=1               print the processes' output at the end

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"

	"github.com/ssetrack/ssetrack/extproc"
	"github.com/ssetrack/ssetrack/test/harness"
)

// perfNoopEnv, when set in the environment of this test binary, makes it the do-nothing
// ext_proc server listening on that address instead of running tests. The benchmark starts
// it that way, so the baseline runs in its own process like ssetrack does, and does not
// share the Go scheduler and GC of the client and upstream.
const perfNoopEnv = "SSETRACK_PERF_NOOP_LISTEN"

func init() {
	if addr := os.Getenv(perfNoopEnv); addr != "" {
		os.Exit(runNoopExtProc(addr))
	}
}

// perfEpoch is the time base of the timestamps the upstream writes into events; the client
// lives in the same process and reads them against the same monotonic clock.
var perfEpoch = time.Now()

// perfWorkload is one traffic shape.
type perfWorkload struct {
	name    string
	kind    string        // event format: tokens, mcp, large
	size    int           // bytes per event, exactly
	streams int           // concurrent streams
	pace    time.Duration // interval between events of a stream; 0: as fast as possible
}

// perfSetup is one path from the client to the upstream.
type perfSetup struct {
	name       string
	baseURL    string         // where the client connects
	envoy      *harness.Envoy // nil without Envoy
	extProc    bool           // Envoy runs the ext_proc filter
	metricsURL string         // ssetrack's metrics (and pprof) listener, "" otherwise

	extProcProc *harness.Process // for its CPU time; nil if none
}

// perfResult is what one round measured.
type perfResult struct {
	events   int
	elapsed  time.Duration
	evPerSec float64
	mbPerSec float64
	p50, p99 time.Duration
}

// perfEnv is the running system: one upstream, one client, every setup.
type perfEnv struct {
	up      *perfUpstream
	client  *http.Client
	setups  []*perfSetup
	nextSID atomic.Int64

	profDir  string
	profSecs int
	profWG   sync.WaitGroup

	traceDir  string
	traceSecs int
}

func BenchmarkPerf(b *testing.B) {
	harness.EnvoyBin(b)
	streams := perfEnvInt(b, "PERF_STREAMS", 64)
	rounds := perfEnvInt(b, "PERF_ROUNDS", 1)
	pace := 1 * time.Millisecond
	if s := os.Getenv("PERF_PACE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			b.Fatalf("PERF_PACE=%q: want a positive duration", s)
		}
		pace = d
	}
	workloads := []perfWorkload{
		{name: "tokens", kind: "tokens", size: 100, streams: 1},
		{name: "tokens-paced", kind: "tokens", size: 100, streams: 1, pace: pace},
		{name: "mcp", kind: "mcp", size: 256, streams: streams},
		{name: "large", kind: "large", size: 64 << 10, streams: 1},
	}

	env := startPerfEnv(b)
	table := map[string]map[string]perfResult{}
	for _, w := range workloads {
		results := map[string]perfResult{}
		table[w.name] = results
		b.Run(w.name, func(b *testing.B) {
			for round := range rounds {
				for _, s := range env.setups {
					profiled := round > 0
					traced := false
					b.Run(s.name, func(b *testing.B) {
						if s.metricsURL != "" && env.profDir != "" && !profiled {
							profiled = true
							label := w.name
							if s.name != "envoy-ssetrack" {
								label += "-" + strings.TrimPrefix(s.name, "envoy-ssetrack-")
							}
							env.startProfile(b, s, label)
						}
						if s.name == "envoy-ssetrack" && env.traceDir != "" && !traced {
							// Once a round, from the setup's first (sizing) run on.
							traced = true
							env.startTrace(b, s, fmt.Sprintf("%s-%d", w.name, round))
						}
						r := env.round(b, w, s)
						results[s.name] = r
						if e, ok := results["envoy"]; ok && s.extProc && e.evPerSec > 0 {
							b.ReportMetric(r.evPerSec/e.evPerSec, "xenvoy")
						}
						if n, ok := results["envoy-noop"]; ok && s.metricsURL != "" && n.evPerSec > 0 {
							b.ReportMetric(r.evPerSec/n.evPerSec, "xnoop")
						}
					})
				}
			}
		})
	}
	// Printed, not logged: a parent benchmark's log shows only with -v.
	fmt.Printf("\nBenchmarkPerf summary (last round of each setup; xS = events/s over setup S's):\n%s\n", perfSummary(workloads, env.setups, table))
}

// perfSummary formats the results as a table with ratios.
func perfSummary(workloads []perfWorkload, setups []*perfSetup, table map[string]map[string]perfResult) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%-13s %-24s %12s %9s %22s %8s %8s %8s\n", "workload", "setup", "events/s", "MB/s", "lat p50/p99 (us)", "xdirect", "xenvoy", "xnoop")
	ratio := func(r perfResult, base map[string]perfResult, name string) string {
		if o, ok := base[name]; ok && o.evPerSec > 0 {
			return fmt.Sprintf("%.3f", r.evPerSec/o.evPerSec)
		}
		return "-"
	}
	for _, w := range workloads {
		res := table[w.name]
		for _, s := range setups {
			r, ok := res[s.name]
			if !ok {
				continue
			}
			lat := fmt.Sprintf("%d/%d", r.p50.Microseconds(), r.p99.Microseconds())
			fmt.Fprintf(&sb, "%-13s %-24s %12.0f %9.1f %22s %8s %8s %8s\n", w.name, s.name, r.evPerSec, r.mbPerSec, lat,
				ratio(r, res, "direct"), ratio(r, res, "envoy"), ratio(r, res, "envoy-noop"))
		}
	}
	return sb.String()
}

// round sends b.N events of workload w through setup s and reports what it measured.
func (e *perfEnv) round(b *testing.B, w perfWorkload, s *perfSetup) perfResult {
	n := b.N
	streams := min(w.streams, n)
	lat := make([]int64, n)
	counts := make([]int, streams)
	for i := range counts {
		counts[i] = n / streams
		if i < n%streams {
			counts[i]++
		}
	}
	var envoyBefore, ssetrackBefore harness.Metrics
	envoyCPU, xpCPU, selfCPU := perfCPU(s.envoyProc()), perfCPU(s.extProcProc), perfSelfCPU()
	if s.extProc {
		envoyBefore = s.envoy.ExtProcStats(b)
	}
	if s.metricsURL != "" {
		ssetrackBefore = harness.Scrape(b, s.metricsURL+"/metrics")
	}
	// Bounded: a stuck stream ends the round with an error instead of hanging the run.
	timeout := 2*time.Minute + time.Duration(n/max(streams, 1))*w.pace
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	b.SetBytes(int64(w.size))
	b.ResetTimer()
	start := time.Now()
	errs := make([]error, streams)
	var wg sync.WaitGroup
	off := 0
	for i, c := range counts {
		sid := fmt.Sprintf("perf-%s-%d", w.name, e.nextSID.Add(1))
		wg.Add(1)
		go func(lat []int64) {
			defer wg.Done()
			errs[i] = e.stream(ctx, s, w, sid, lat)
		}(lat[off : off+c])
		off += c
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	// CPU time per event: what each process spent (the ext_proc server's includes, for
	// ssetrack, its embedded NATS server; the harness is the client and the upstream).
	perEvent := func(d time.Duration) float64 { return float64(d) / 1e3 / float64(n) }
	if s.envoy != nil {
		b.ReportMetric(perEvent(perfCPU(s.envoyProc())-envoyCPU), "envoy-cpu-us/ev")
	}
	if s.extProcProc != nil {
		b.ReportMetric(perEvent(perfCPU(s.extProcProc)-xpCPU), "xp-cpu-us/ev")
	}
	b.ReportMetric(perEvent(perfSelfCPU()-selfCPU), "harness-cpu-us/ev")

	if err := errors.Join(errs...); err != nil {
		b.Fatalf("%s/%s with %d events: %v", w.name, s.name, n, err)
	}
	slices.Sort(lat)
	r := perfResult{
		events:   n,
		elapsed:  elapsed,
		evPerSec: float64(n) / elapsed.Seconds(),
		mbPerSec: float64(n) * float64(w.size) / 1e6 / elapsed.Seconds(),
		p50:      time.Duration(lat[(n-1)*50/100]),
		p99:      time.Duration(lat[(n-1)*99/100]),
	}
	b.ReportMetric(r.evPerSec, "events/s")
	b.ReportMetric(float64(r.p50)/1e3, "p50-us")
	b.ReportMetric(float64(r.p99)/1e3, "p99-us")
	if s.envoy != nil && e.traceDir != "" {
		time.Sleep(600 * time.Millisecond) // two stats flushes: the round's iterations are merged
		loop, poll := envoyDispatcherMax(b, s.envoy)
		b.ReportMetric(loop, "envoy-loop-max-ms")
		b.ReportMetric(poll, "envoy-poll-delay-max-ms")
	}
	if s.extProc {
		after := s.envoy.ExtProcStats(b)
		// Two header messages per request; the rest are response body chunks.
		chunks := after.Sub(envoyBefore, "stream_msgs_sent") - 2*float64(streams)
		b.ReportMetric(chunks/float64(n), "chunks/ev")
		var failOpen float64
		for _, c := range harness.FailOpenCounters {
			failOpen += after.Sub(envoyBefore, c)
		}
		b.ReportMetric(failOpen, "failopen")
		b.ReportMetric(after.Sub(envoyBefore, "message_timeouts"), "msg-timeouts")
		if failOpen != 0 {
			var by []string
			for _, c := range harness.FailOpenCounters {
				if d := after.Sub(envoyBefore, c); d != 0 {
					by = append(by, fmt.Sprintf("%s=%v", c, d))
				}
			}
			b.Logf("WARNING: Envoy's ext_proc fail-open counters grew by %v (%s): the ext_proc server was bypassed", failOpen, strings.Join(by, " "))
		}
	}
	if s.metricsURL != "" {
		after := harness.Scrape(b, s.metricsURL+"/metrics")
		// Responses Envoy gave up while ssetrack waited for their next message, and of
		// those, the ones where ssetrack had been waiting over message_timeout (0.2 s in
		// envoy.yaml): Envoy timed out on a message ssetrack had not received.
		abandoned := after.Sub(ssetrackBefore, "ssetrack_responses_abandoned_seconds_count")
		b.ReportMetric(abandoned, "abandoned")
		b.ReportMetric(abandoned-after.Sub(ssetrackBefore, `ssetrack_responses_abandoned_seconds_bucket{le="0.2"}`), "abandoned-idle-200ms+")
		if chunks := after.Sub(ssetrackBefore, "ssetrack_response_chunks_total"); chunks > 0 {
			b.ReportMetric(after.Sub(ssetrackBefore, "ssetrack_response_chunks_rewritten_total")/chunks, "rewritten/chunk")
		}
		if d := after.Sum("ssetrack_events_deduplicated_total") - ssetrackBefore.Sum("ssetrack_events_deduplicated_total"); d != 0 {
			b.Fatalf("ssetrack dropped %v events as duplicates: every id is new", d)
		}
		if d := after.Sum("ssetrack_journal_records_dropped_total") - ssetrackBefore.Sum("ssetrack_journal_records_dropped_total"); d != 0 {
			b.Logf("WARNING: ssetrack's journal dropped %v records (queue full): persistence did not keep up", d)
		}
	}
	return r
}

// stream reads one SSE response of len(lat) events through s and stores each event's
// latency in lat.
func (e *perfEnv) stream(ctx context.Context, s *perfSetup, w perfWorkload, sid string, lat []int64) error {
	u := fmt.Sprintf("%s/sse?kind=%s&n=%d&size=%d&pace=%d", s.baseURL, w.kind, len(lat), w.size, w.pace)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Mcp-Session-Id", sid)
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %q", u, resp.Status, b)
	}
	br := bufio.NewReaderSize(resp.Body, 256<<10)
	got := 0
	sent := int64(-1)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && len(line) == 0 {
				break
			}
			return fmt.Errorf("stream %s: after %d of %d events: %w", sid, got, len(lat), err)
		}
		switch {
		case len(line) == 1: // the blank line that ends an event
			if sent >= 0 && got < len(lat) {
				lat[got] = time.Since(perfEpoch).Nanoseconds() - sent
			}
			got++
			sent = -1
		case bytes.HasPrefix(line, []byte("data:")):
			sent = perfStamp(line)
		}
	}
	if got != len(lat) {
		return fmt.Errorf("stream %s: got %d events, want %d", sid, got, len(lat))
	}
	return nil
}

// perfStamp returns the number after the first `"t":` in line, or -1.
func perfStamp(line []byte) int64 {
	i := bytes.Index(line, []byte(`"t":`))
	if i < 0 {
		return -1
	}
	var v int64
	found := false
	for _, c := range line[i+4:] {
		if c < '0' || c > '9' {
			break
		}
		v = v*10 + int64(c-'0')
		found = true
	}
	if !found {
		return -1
	}
	return v
}

// perfUpstream is the SSE server of every setup: GET /sse?kind=K&n=N&size=S&pace=P sends N
// events of exactly S bytes in format K, each written and flushed on its own, P nanoseconds
// apart (0: back to back). Every event carries the time it was written ("t", nanoseconds
// since perfEpoch) and an id that is new in its session.
type perfUpstream struct {
	url  string
	port int
	srv  *http.Server
}

func startPerfUpstream(b *testing.B) *perfUpstream {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	u := &perfUpstream{url: "http://" + l.Addr().String(), port: l.Addr().(*net.TCPAddr).Port}
	u.srv = &http.Server{Handler: http.HandlerFunc(u.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = u.srv.Serve(l) }()
	b.Cleanup(func() { u.srv.Close() })
	return u
}

// perfPad fills events to their size.
var perfPad = bytes.Repeat([]byte("x"), 1<<20)

func (u *perfUpstream) serve(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	kind := q.Get("kind")
	n, err1 := strconv.Atoi(q.Get("n"))
	size, err2 := strconv.Atoi(q.Get("size"))
	pace, err3 := strconv.ParseInt(q.Get("pace"), 10, 64)
	if r.URL.Path != "/sse" || errors.Join(err1, err2, err3) != nil || n < 0 || size <= 0 || size > len(perfPad) {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	if sid := r.Header.Get("Mcp-Session-Id"); sid != "" {
		h.Set("Mcp-Session-Id", sid)
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return
	}
	buf := make([]byte, 0, size+256)
	start := time.Now()
	for i := 0; i < n; i++ {
		if pace > 0 {
			if d := time.Until(start.Add(time.Duration(int64(i) * pace))); d > 0 {
				time.Sleep(d)
			}
		}
		buf = appendPerfEvent(buf[:0], kind, i, size, time.Since(perfEpoch).Nanoseconds())
		if _, err := w.Write(buf); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
	}
}

// appendPerfEvent appends event i of the given kind, padded to size bytes (longer only if
// its fixed part is).
func appendPerfEvent(buf []byte, kind string, i, size int, t int64) []byte {
	start := len(buf)
	var suffix string
	switch kind {
	case "mcp": // an MCP Streamable HTTP server's progress notification
		buf = append(buf, "event: message\nid: "...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, "\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"p1\",\"progress\":"...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, ",\"t\":"...)
		buf = strconv.AppendInt(buf, t, 10)
		buf = append(buf, ",\"message\":\""...)
		suffix = "\"}}\n\n"
	case "large":
		buf = append(buf, "id: "...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, "\ndata: {\"t\":"...)
		buf = strconv.AppendInt(buf, t, 10)
		buf = append(buf, ",\"blob\":\""...)
		suffix = "\"}\n\n"
	default: // tokens: an LLM API's streamed completion delta
		buf = append(buf, "id: "...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, "\ndata: {\"t\":"...)
		buf = strconv.AppendInt(buf, t, 10)
		buf = append(buf, ",\"choices\":[{\"delta\":{\"content\":\""...)
		suffix = "\"}}]}\n\n"
	}
	if pad := size - (len(buf) - start) - len(suffix); pad > 0 {
		buf = append(buf, perfPad[:pad]...)
	}
	return append(buf, suffix...)
}

// startPerfEnv starts the upstream, the do-nothing ext_proc server, ssetrack and three
// Envoys; all stop when b ends.
func startPerfEnv(b *testing.B) *perfEnv {
	e := &perfEnv{up: startPerfUpstream(b)}
	e.client = &http.Client{Transport: &http.Transport{
		DisableCompression:  true,
		MaxIdleConnsPerHost: 256,
	}}
	b.Cleanup(e.client.CloseIdleConnections)
	if dir := os.Getenv("PERF_CPUPROFILE_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		e.profDir = dir
		e.profSecs = perfEnvInt(b, "PERF_CPUPROFILE_SECONDS", 10)
	}
	if dir := os.Getenv("PERF_TRACE_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		e.traceDir = dir
		e.traceSecs = perfEnvInt(b, "PERF_TRACE_SECONDS", 5)
	}

	noopPort, noopProc := startNoopProcess(b, false)
	floorPort, floorProc := startNoopProcess(b, true)
	extra := strings.Fields(os.Getenv("PERF_SSETRACK_ARGS"))
	if e.profDir != "" {
		extra = append(extra, "--pprof-sync") // mutex and block profiles
	}
	sse := harness.StartSsetrack(b, harness.SsetrackOptions{
		LogLevel: "info",
		Args:     append([]string{"--pprof"}, extra...),
	})
	sseNoJournal := harness.StartSsetrack(b, harness.SsetrackOptions{
		Name:     "ssetrack-nojournal",
		LogLevel: "info",
		Args:     append([]string{"--pprof", "--journal=false"}, extra...),
	})

	src := harness.ShippedEnvoyConfig(b, "envoy.yaml")
	if e.traceDir != "" {
		// Top-level bootstrap fields: the shipped config ends in a top-level block. Envoy
		// merges its workers' histograms at each stats flush (5 s by default).
		src = strings.TrimRight(src, "\n") + "\nenable_dispatcher_stats: true\nstats_flush_interval: 0.25s\n"
	}
	envoy := func(name, cfg string, extProcPort int) *harness.Envoy {
		return harness.StartEnvoy(b, harness.EnvoyOptions{Name: name, Source: cfg, UpstreamPort: e.up.port, ExtProcPort: extProcPort})
	}
	e.setups = append(e.setups, &perfSetup{name: "direct", baseURL: e.up.url})
	en := envoy("envoy", perfWithoutExtProc(b, src), noopPort)
	e.setups = append(e.setups, &perfSetup{name: "envoy", baseURL: en.ProxyURL, envoy: en})
	en = envoy("envoy-noop", src, noopPort)
	e.setups = append(e.setups, &perfSetup{name: "envoy-noop", baseURL: en.ProxyURL, envoy: en, extProc: true, extProcProc: noopProc})
	en = envoy("envoy-noop-journal", src, floorPort)
	e.setups = append(e.setups, &perfSetup{name: "envoy-noop-journal", baseURL: en.ProxyURL, envoy: en, extProc: true, extProcProc: floorProc})
	en = envoy("envoy-ssetrack", src, sse.GRPCPort)
	e.setups = append(e.setups, &perfSetup{name: "envoy-ssetrack", baseURL: en.ProxyURL, envoy: en, extProc: true,
		metricsURL: sse.MetricsURL, extProcProc: sse.Proc})
	en = envoy("envoy-ssetrack-nojournal", src, sseNoJournal.GRPCPort)
	e.setups = append(e.setups, &perfSetup{name: "envoy-ssetrack-nojournal", baseURL: en.ProxyURL, envoy: en, extProc: true,
		metricsURL: sseNoJournal.MetricsURL, extProcProc: sseNoJournal.Proc})
	// Registered last, so it runs first: a profile in flight ends before ssetrack stops.
	b.Cleanup(e.profWG.Wait)
	return e
}

// startProfile fetches, in the background, ssetrack's allocation profile, then a CPU profile
// of e.profSecs seconds, then the allocation profile again. One profile at a time: it first
// waits (timer stopped) for the previous one.
func (e *perfEnv) startProfile(b *testing.B, s *perfSetup, workload string) {
	b.StopTimer()
	e.profWG.Wait()
	b.StartTimer()
	fetch := func(path, file string, timeout time.Duration) {
		fetchToFile(s.metricsURL+path, filepath.Join(e.profDir, file), timeout)
	}
	// Cumulative profiles, before and after: compare with go tool pprof -diff_base.
	cumulative := []string{"allocs", "mutex", "block"}
	for _, p := range cumulative {
		fetch("/debug/pprof/"+p, p+"-"+workload+"-0.pprof", 30*time.Second)
	}
	e.profWG.Add(1)
	go func() {
		defer e.profWG.Done()
		fetch(fmt.Sprintf("/debug/pprof/profile?seconds=%d", e.profSecs), "cpu-"+workload+".pprof", time.Duration(e.profSecs+30)*time.Second)
		for _, p := range cumulative {
			fetch("/debug/pprof/"+p, p+"-"+workload+"-1.pprof", 30*time.Second)
		}
	}()
}

// startTrace fetches, in the background, a Go execution trace of e.traceSecs seconds of
// ssetrack (see PERF_TRACE_DIR). One fetch at a time, shared with startProfile.
func (e *perfEnv) startTrace(b *testing.B, s *perfSetup, workload string) {
	b.StopTimer()
	e.profWG.Wait()
	b.StartTimer()
	e.profWG.Add(1)
	go func() {
		defer e.profWG.Done()
		fetchToFile(fmt.Sprintf("%s/debug/pprof/trace?seconds=%d", s.metricsURL, e.traceSecs),
			filepath.Join(e.traceDir, "trace-"+workload+".out"), time.Duration(e.traceSecs+30)*time.Second)
	}()
}

// fetchToFile GETs url into file, streamed (a trace of a flood is large), within timeout;
// a failure is printed, not fatal: a profile is an extra of the benchmark.
func fetchToFile(url, file string, timeout time.Duration) {
	err := func() error {
		resp, err := (&http.Client{Timeout: timeout}).Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			return fmt.Errorf("%s: %s", resp.Status, body)
		}
		f, err := os.Create(file)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, resp.Body)
		return errors.Join(err, f.Close())
	}()
	if err != nil {
		fmt.Fprintf(os.Stderr, "perf: fetch %s: %v\n", url, err)
	}
}

// envoyP100 matches the cumulative maximum of an Envoy histogram on its admin /stats page:
// "P100(interval,cumulative)".
var envoyP100 = regexp.MustCompile(`P100\(([^,]*),([^)]*)\)`)

// envoyDispatcherMax returns, from Envoy's dispatcher stats (enable_dispatcher_stats), the
// longest event-loop iteration and the longest poll delay of its worker threads since it
// started, in milliseconds. It fails b when Envoy shows no worker's.
func envoyDispatcherMax(b *testing.B, en *harness.Envoy) (loopMs, pollMs float64) {
	found := false
	for line := range strings.Lines(string(en.Admin(b, "/stats?filter=dispatcher"))) {
		m := envoyP100.FindStringSubmatch(line)
		if m == nil || !strings.Contains(line, ".worker_") {
			continue // the main thread's, or none recorded
		}
		found = true
		us, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			b.Fatalf("envoy dispatcher stats: %q: %v", line, err)
		}
		switch {
		case strings.Contains(line, ".loop_duration_us:"):
			loopMs = max(loopMs, us/1e3)
		case strings.Contains(line, ".poll_delay_us:"):
			pollMs = max(pollMs, us/1e3)
		}
	}
	if !found {
		b.Fatal("envoy: no worker dispatcher histogram on /stats (enable_dispatcher_stats)")
	}
	return loopMs, pollMs
}

// perfWithoutExtProc returns the Envoy config with the ext_proc filter removed: the filter
// list keeps only what follows it (the router).
func perfWithoutExtProc(b *testing.B, cfg string) string {
	i := strings.Index(cfg, "- name: envoy.filters.http.ext_proc")
	j := strings.Index(cfg, "- name: envoy.filters.http.router")
	if i < 0 || j < i {
		b.Fatal("envoy.yaml: cannot find the ext_proc filter followed by the router")
	}
	i = strings.LastIndexByte(cfg[:i], '\n') + 1
	j = strings.LastIndexByte(cfg[:j], '\n') + 1
	return cfg[:i] + cfg[j:]
}

// startNoopProcess runs this test binary as the do-nothing ext_proc server (see init) and
// returns its port once it accepts connections. With journal, the server also persists
// every response body chunk (noopJournal) in a directory of b's, and runs at GOGC=400
// (unless GOGC is set): ssetrack's --gc-headroom gives it a larger heap than Go's
// default, and at 400 the two reach about the same peak RSS in BenchmarkProcessor
// (115 and 120 MiB), so the floor is not charged for collections ssetrack skips.
func startNoopProcess(b *testing.B, journal bool) (int, *harness.Process) {
	port := harness.FreePorts(b, 1)[0]
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), perfNoopEnv+"="+harness.Addr(port))
	name := "noop ext_proc"
	if journal {
		name = "noop-journal ext_proc"
		cmd.Env = append(cmd.Env, perfNoopJournalEnv+"="+b.TempDir())
		if os.Getenv("GOGC") == "" {
			cmd.Env = append(cmd.Env, "GOGC=400")
		}
	}
	p := harness.Start(b, name, cmd)
	p.WaitDial(b, harness.Addr(port))
	return port, p
}

// envoyProc returns the setup's Envoy process, nil without Envoy.
func (s *perfSetup) envoyProc() *harness.Process {
	if s.envoy == nil {
		return nil
	}
	return s.envoy.Proc
}

// perfCPU returns the CPU time (user and system) p has used so far, from /proc (Linux); 0
// for nil or where /proc cannot tell.
func perfCPU(p *harness.Process) time.Duration {
	if p == nil {
		return 0
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid()))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parentheses: state is
	// field 3, utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// perfSelfCPU returns the CPU time this process (the client and the upstream) has used.
func perfSelfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func perfEnvInt(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return v
}

// noopExtProc is the do-nothing ext_proc server: it answers every message without a change,
// except that, like ssetrack (extproc/exchange.go, responseHeaders), it turns response body
// streaming on for a 2xx, not content-encoded text/event-stream response (mode_override to
// STREAMED, content-length removed) and off for anything else.
type noopExtProc struct {
	procv3.UnimplementedExternalProcessorServer
	// journal, when not nil, persists every response body chunk (perfNoopJournalEnv).
	journal *noopJournal
}

// runNoopExtProc serves noopExtProc on addr until SIGTERM; the gRPC server options are
// ssetrack's (cmd/ssetrack/serve.go, newGRPCServer).
func runNoopExtProc(addr string) int {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "noop ext_proc: %v\n", err)
		return 1
	}
	// This process serves nothing else, and has made no gRPC call yet: setting the
	// process-wide pool here is as ssetrack's init function does it.
	buffers := new(extproc.BufferPool)
	experimental.SetDefaultBufferPool(buffers)
	srv := grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		grpc.MaxRecvMsgSize(64<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		experimental.BufferPool(buffers),
	)
	noop := &noopExtProc{}
	if dir := os.Getenv(perfNoopJournalEnv); dir != "" {
		if noop.journal, err = startNoopJournal(dir); err != nil {
			fmt.Fprintf(os.Stderr, "noop ext_proc: journal: %v\n", err)
			return 1
		}
		defer noop.journal.close()
	}
	procv3.RegisterExternalProcessorServer(srv, noop)
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		<-sig
		srv.Stop()
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		fmt.Fprintf(os.Stderr, "noop ext_proc: %v\n", err)
		return 1
	}
	return 0
}

func (n *noopExtProc) Process(stream procv3.ExternalProcessor_ProcessServer) error {
	var subject string
	if n.journal != nil {
		subject = n.journal.subject()
	}
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		if req.GetObservabilityMode() {
			continue
		}
		var resp *procv3.ProcessingResponse
		switch r := req.Request.(type) {
		case *procv3.ProcessingRequest_RequestHeaders:
			resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestHeaders{RequestHeaders: &procv3.HeadersResponse{}}}
		case *procv3.ProcessingRequest_ResponseHeaders:
			resp = noopResponseHeaders(r.ResponseHeaders)
		case *procv3.ProcessingRequest_RequestBody:
			resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestBody{RequestBody: &procv3.BodyResponse{}}}
		case *procv3.ProcessingRequest_ResponseBody:
			if n.journal != nil {
				n.journal.publish(subject, r.ResponseBody.GetBody())
			}
			resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseBody{ResponseBody: &procv3.BodyResponse{}}}
		case *procv3.ProcessingRequest_RequestTrailers:
			resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestTrailers{RequestTrailers: &procv3.TrailersResponse{}}}
		case *procv3.ProcessingRequest_ResponseTrailers:
			resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &procv3.TrailersResponse{}}}
		default:
			continue
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func noopResponseHeaders(h *procv3.HttpHeaders) *procv3.ProcessingResponse {
	var contentType, encoding, status string
	for _, hv := range h.GetHeaders().GetHeaders() {
		v := string(hv.GetRawValue())
		if v == "" {
			v = hv.GetValue()
		}
		switch hv.GetKey() {
		case "content-type":
			contentType = v
		case "content-encoding":
			encoding = v
		case ":status":
			status = v
		}
	}
	ct, _, _ := strings.Cut(contentType, ";")
	sse := strings.EqualFold(strings.TrimSpace(ct), "text/event-stream") &&
		(encoding == "" || strings.EqualFold(encoding, "identity")) &&
		len(status) == 3 && status[0] == '2' && !h.GetEndOfStream()
	hr := &procv3.HeadersResponse{}
	mode := &filterv3.ProcessingMode{
		RequestHeaderMode:  filterv3.ProcessingMode_SEND,
		ResponseHeaderMode: filterv3.ProcessingMode_SEND,
		RequestBodyMode:    filterv3.ProcessingMode_NONE,
		ResponseBodyMode:   filterv3.ProcessingMode_NONE,
	}
	if sse {
		mode.ResponseBodyMode = filterv3.ProcessingMode_STREAMED
		hr.Response = &procv3.CommonResponse{HeaderMutation: &procv3.HeaderMutation{RemoveHeaders: []string{"content-length"}}}
	}
	return &procv3.ProcessingResponse{
		Response:     &procv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: hr},
		ModeOverride: mode,
	}
}
