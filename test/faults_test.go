package e2e

// Fault and replica tests through a real Envoy, with ssetrack on a separate nats-server
// process that the tests stop and start (issue 3, items 4 and 7):
//
//   - TestNATSOutage: NATS goes away for 10 s in the middle of a stream and comes back on
//     the same port and store; the client stream never stalls and JetStream ends up with
//     every event once.
//   - TestSIGTERMDrains: ssetrack gets SIGTERM in the middle of several streams; it exits 0
//     within its --shutdown-timeout and what it forwarded is in JetStream once.
//   - TestReplicas: two ssetrack processes on one NATS behind one Envoy (round robin);
//     sessions drop and resume on the other replica, with and without Last-Event-ID.
//
// nats-server is built from the module cache (the version go.mod pins), as the journal's
// own fault test does. Nothing here asserts on wall-clock time: waits are bounded polls,
// and "events arrived while NATS was down" is an ordering check.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Metric names read by these tests.
const (
	mForwarded      = "ssetrack_events_forwarded_total"
	mPublished      = "ssetrack_journal_events_published_total"
	mRecordsDropped = "ssetrack_journal_records_dropped_total"
	mRejected       = "ssetrack_journal_rejected_total"
	mStreamsActive  = "ssetrack_streams_active"
)

// ---------------------------------------------------------------------------
// A separate nats-server process.

// natsServer is a nats-server child process with JetStream and a file store. stop and
// start keep its client port and store directory, so a restart is the same server.
type natsServer struct {
	bin      string
	port     int
	monitor  int
	storeDir string
	proc     *process
	starts   int
}

// buildNATSServer builds the nats-server binary go.mod pins from the module cache.
func buildNATSServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nats-server")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build github.com/nats-io/nats-server/v2: %v\n%s", err, out)
	}
	return bin
}

// startNATSServer builds and starts a nats-server with JetStream on free ports.
func startNATSServer(t *testing.T) *natsServer {
	t.Helper()
	ports := freePorts(t, 2)
	n := &natsServer{bin: buildNATSServer(t), port: ports[0], monitor: ports[1], storeDir: t.TempDir()}
	n.start(t)
	return n
}

func (n *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// start starts the server and waits until its /healthz (which covers JetStream) says ok.
func (n *natsServer) start(t *testing.T) {
	t.Helper()
	n.starts++
	name := "nats-server"
	if n.starts > 1 {
		name = fmt.Sprintf("nats-server (start %d)", n.starts)
	}
	p := startProcess(t, name, n.bin,
		"-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-m", strconv.Itoa(n.monitor),
		"-js", "-sd", n.storeDir)
	health := fmt.Sprintf("http://127.0.0.1:%d/healthz", n.monitor)
	if err := waitReady(p, health, func(code int, _ []byte) bool { return code == http.StatusOK }); err != nil {
		t.Fatalf("nats-server did not start: %v\n%s", err, p.logTail())
	}
	n.proc = p
}

// stop stops the server (SIGTERM) and waits for it to exit.
func (n *natsServer) stop() { n.proc.stop() }

// ---------------------------------------------------------------------------
// ssetrack and Envoy wired to the external NATS.

// ssetrackProc is one `ssetrack serve` process using an external NATS.
type ssetrackProc struct {
	name       string
	p          *process
	grpcPort   int
	metricsURL string
}

// startSsetrackOn starts ssetrack with --nats-url and waits until it is ready (NATS
// connected, stream and bucket created).
func startSsetrackOn(t *testing.T, name, natsURL string, extra ...string) *ssetrackProc {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ports := freePorts(t, 2)
		grpcAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
		metricsAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
		args := []string{
			"serve",
			"--listen", grpcAddr,
			"--metrics-listen", metricsAddr,
			"--nats-url", natsURL,
			"--data-dir", t.TempDir(), // unused with --nats-url; keeps the cwd clean
			"--log-level", "info",
		}
		args = append(args, extra...)
		args = append(args, strings.Fields(os.Getenv("E2E_SSETRACK_ARGS"))...)
		p := startProcess(t, name, ssetrackBin, args...)
		metricsURL := "http://" + metricsAddr
		err := waitReady(p, metricsURL+"/readyz", func(code int, _ []byte) bool { return code == http.StatusOK })
		if err == nil {
			return &ssetrackProc{name: name, p: p, grpcPort: ports[0], metricsURL: metricsURL}
		}
		lastErr = err
		exited := p.exited()
		p.stop()
		p.quiet = true
		t.Logf("%s did not start (attempt %d): %v\n%s", name, attempt+1, err, p.logTail())
		if !exited {
			break
		}
	}
	t.Fatalf("%s did not start: %v", name, lastErr)
	return nil
}

func (s *ssetrackProc) metrics(t *testing.T) metrics {
	t.Helper()
	return (&fixture{metricsURL: s.metricsURL}).ssetrackMetrics(t)
}

// requireFaultPrereqs skips like the rest of the suite without Envoy, and skips when the
// journal is turned off through E2E_SSETRACK_ARGS (nothing to check in JetStream then).
func requireFaultPrereqs(t *testing.T) {
	t.Helper()
	requireEnvoy(t)
	if !journalEnabled() {
		t.Skip("E2E_SSETRACK_ARGS has --journal=false: these tests check JetStream")
	}
}

// natsFixture is the usual fixture (upstream, ssetrack, Envoy with the shipped
// envoy/envoy.yaml), except that ssetrack uses the external NATS at natsURL.
func natsFixture(t *testing.T, natsURL string, extra ...string) *fixture {
	t.Helper()
	fx := &fixture{up: startUpstream(t), top: t}
	s := startSsetrackOn(t, "ssetrack", natsURL, extra...)
	fx.ssetrack, fx.metricsURL, fx.ssetrackGRPCPort = s.p, s.metricsURL, s.grpcPort
	fx.startEnvoy(t, "envoy.yaml")
	fx.client = newE2EClient(t)
	return fx
}

func newE2EClient(t *testing.T) *http.Client {
	c := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 200}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// replicaConfig derives the two-replica config from envoy/envoy.yaml: the ssetrack cluster
// gets a second endpoint (the first one's lines, copied) and an explicit round robin
// policy; then the ports are substituted as for every shipped config.
func replicaConfig(t *testing.T, upPort, portA, portB int) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot, "envoy", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const second = 9002 // placeholder for replica B, replaced by renderConfig
	if strings.Contains(string(src), "port_value: "+strconv.Itoa(second)) {
		t.Fatalf("envoy.yaml already uses port %d", second)
	}
	lines := strings.Split(string(src), "\n")
	var out []string
	endpoint, cluster := -1, -1
	for i, l := range lines {
		if strings.Contains(l, "port_value: 9001") {
			endpoint = i
		}
		if strings.TrimSpace(l) == "- name: ssetrack" {
			cluster = i
		}
	}
	if endpoint < 0 || cluster < 0 || cluster > endpoint {
		t.Fatalf("envoy.yaml: cannot find the ssetrack cluster and its endpoint")
	}
	start := endpoint
	for start > endpoint-5 && strings.TrimSpace(lines[start]) != "- endpoint:" {
		start--
	}
	if strings.TrimSpace(lines[start]) != "- endpoint:" {
		t.Fatalf("envoy.yaml: no '- endpoint:' just above the ssetrack port")
	}
	indent := lines[cluster][:len(lines[cluster])-len(strings.TrimLeft(lines[cluster], " "))]
	for i, l := range lines {
		out = append(out, l)
		if i == cluster {
			out = append(out, indent+"  lb_policy: ROUND_ROBIN")
		}
		if i == endpoint {
			for _, c := range lines[start : endpoint+1] {
				out = append(out, strings.Replace(c, "port_value: 9001", "port_value: "+strconv.Itoa(second), 1))
			}
		}
	}
	return renderConfig(t, strings.Join(out, "\n"), map[int]int{
		10000:  0,
		8080:   upPort,
		9001:   portA,
		second: portB,
		9901:   0,
	})
}

// ---------------------------------------------------------------------------
// A client that reads a stream as it arrives.

// liveStream is an SSE response being read by a goroutine; events counts the complete
// blocks received so far (the tests' events contain no blank line, so each "\n\n" ends one).
type liveStream struct {
	mu     sync.Mutex
	buf    []byte
	events atomic.Int64
	done   chan struct{}
	err    error // set before done is closed
	cancel context.CancelFunc
}

// openLive sends a GET through Envoy and starts reading its body.
func openLive(t *testing.T, fx *fixture, path string, h http.Header) *liveStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	resp, err := fx.open(ctx, http.MethodGet, path, h, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	ls := &liveStream{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(ls.done)
		defer resp.Body.Close()
		b := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(b)
			if n > 0 {
				ls.mu.Lock()
				ls.buf = append(ls.buf, b[:n]...)
				c := bytes.Count(ls.buf, []byte("\n\n"))
				ls.mu.Unlock()
				ls.events.Store(int64(c))
			}
			if err != nil {
				if err != io.EOF {
					ls.err = err
				}
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-ls.done
	})
	return ls
}

func (ls *liveStream) bytes() []byte {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return bytes.Clone(ls.buf)
}

// waitEvents waits (bounded) until the client has n events.
func (ls *liveStream) waitEvents(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for ls.events.Load() < n {
		select {
		case <-ls.done:
			t.Fatalf("stream ended after %d events (%v), waiting for %d", ls.events.Load(), ls.err, n)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("client has %d events, waited for %d", ls.events.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wait waits (bounded) for the stream to end and returns its bytes.
func (ls *liveStream) wait(t *testing.T) []byte {
	t.Helper()
	select {
	case <-ls.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("stream did not end (%d events received)", ls.events.Load())
	}
	if ls.err != nil {
		t.Errorf("reading the stream: %v", ls.err)
	}
	return ls.bytes()
}

// eventCuts cuts a body at each event boundary, so every event is a chunk of its own.
func eventCuts(evs []sseEvent) []int {
	var cuts []int
	off := 0
	for _, e := range evs {
		off += len(e.encode())
		cuts = append(cuts, off)
	}
	return cuts
}

// idsReport describes how ids differ from "1", "2", ... "n", in order and each once; ""
// when they do not.
func idsReport(ids []string, n int) string {
	count := map[string]int{}
	var dups, disorder []string
	prev := 0
	for _, id := range ids {
		count[id]++
		if count[id] == 2 {
			dups = append(dups, id)
		}
		if v, err := strconv.Atoi(id); err != nil || v <= prev {
			if len(disorder) < 10 {
				disorder = append(disorder, fmt.Sprintf("%s after %d", id, prev))
			}
		} else {
			prev = v
		}
	}
	var missing []string
	for i := 1; i <= n; i++ {
		if count[strconv.Itoa(i)] == 0 {
			missing = append(missing, strconv.Itoa(i))
		}
	}
	if len(dups) == 0 && len(missing) == 0 && len(disorder) == 0 && len(ids) == n {
		return ""
	}
	return fmt.Sprintf("%d ids for %d events; duplicated %v; missing %v; out of order %v",
		len(ids), n, clipIDs(dups), clipIDs(missing), disorder)
}

// ---------------------------------------------------------------------------
// TestNATSOutage

// NATS stops for 10 s in the middle of a stream and starts again on the same port and
// store. The client stream goes on while NATS is down (the response path never waits on
// NATS), the client gets every event once and in order, and once the publisher has caught
// up JetStream holds every event exactly once, in order, byte for byte, with nothing
// dropped.
func TestNATSOutage(t *testing.T) {
	requireFaultPrereqs(t)
	ns := startNATSServer(t)
	fx := natsFixture(t, ns.url())

	const total = 600
	const pace = 25 * time.Millisecond // ~15 s of stream
	evs := numberedEvents(total)
	body := encodeAll(evs)
	path := fx.up.static(reply{body: body, cuts: eventCuts(evs), pause: pace})
	sid := newSession(t)

	envoyBefore := fx.envoyStats(t)
	ls := openLive(t, fx, path, sessionHeader(sid))
	ls.waitEvents(t, 100)

	ns.stop()
	atStop := ls.events.Load()
	t.Logf("nats-server stopped; the client had %d events", atStop)
	time.Sleep(10 * time.Second) // the outage
	atRestart := ls.events.Load()
	t.Logf("restarting nats-server; the client has %d events (%d arrived while NATS was down); ssetrack /readyz during the outage: %s",
		atRestart, atRestart-atStop, readyz(fx.metricsURL))
	ns.start(t)
	if atRestart-atStop <= 0 {
		t.Errorf("no event reached the client while NATS was down (%d before the stop, %d at the restart): the stream stalled on NATS", atStop, atRestart)
	}
	if atRestart >= total {
		t.Logf("note: the stream ended before NATS came back; the catch-up is still checked")
	}

	got := ls.wait(t)
	expectBody(t, "client stream", got, body)
	if r := idsReport(allIDs(got), total); r != "" {
		t.Errorf("client: %s", r)
	}

	// The publisher retries (same Nats-Msg-Id) until the batches are acknowledged.
	js := jsClient(t, ns.url())
	stored := waitStored(t, js, sid, total, 90*time.Second)
	if r := idsReport(allIDs(stored), total); r != "" {
		t.Errorf("JetStream: %s", r)
	}
	if !bytes.Equal(stored, body) {
		t.Errorf("JetStream payloads differ from the stream: %s", diffStreams(stored, body))
	}

	m := fx.ssetrackMetrics(t)
	if d := m.sum(mRecordsDropped); d != 0 {
		t.Errorf("%s = %v, want 0 (the queue bound was not reached)", mRecordsDropped, d)
	}
	if d := m.sum(mRejected); d != 0 {
		t.Errorf("%s = %v, want 0", mRejected, d)
	}
	t.Logf("journal: %v events in %v batches published, %v publish errors, %v retries",
		m.sum(mPublished), m.sum("ssetrack_journal_batches_published_total"),
		m.sum("ssetrack_journal_publish_errors_total"), m.sum("ssetrack_journal_publish_retries_total"))
	// Envoy never had to carry on without ssetrack: no message timed out (200 ms) while
	// NATS was down.
	fx.checkNoFailOpen(t, envoyBefore)
}

// readyz returns ssetrack's readiness answer, for the log.
func readyz(metricsURL string) string {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(metricsURL + "/readyz")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %q", resp.StatusCode, bytes.TrimSpace(b))
}

// ---------------------------------------------------------------------------
// TestSIGTERMDrains

// SIGTERM reaches ssetrack while several sessions stream. It stops taking streams, cuts
// the open ones after half its --shutdown-timeout (Envoy fails open and the clients keep
// their streams, unprocessed), drains its journal and exits 0 within the timeout. What it
// forwarded is in JetStream exactly once: for each session a gapless prefix of the stream,
// at least every event the client had when the signal was sent.
func TestSIGTERMDrains(t *testing.T) {
	requireFaultPrereqs(t)
	ns := startNATSServer(t)
	const shutdownTimeout = 5 * time.Second
	fx := natsFixture(t, ns.url(), "--shutdown-timeout", shutdownTimeout.String())

	const sessions, total = 4, 800
	const pace = 10 * time.Millisecond // ~8 s per stream: it outlives the shutdown
	evs := numberedEvents(total)
	body := encodeAll(evs)
	path := fx.up.static(reply{body: body, cuts: eventCuts(evs), pause: pace})

	envoyBefore := fx.envoyStats(t)
	sids := make([]string, sessions)
	lives := make([]*liveStream, sessions)
	for i := range sessions {
		sids[i] = newSession(t)
		lives[i] = openLive(t, fx, path, sessionHeader(sids[i]))
	}
	for i := range sessions {
		lives[i].waitEvents(t, 50)
	}

	// Scrape ssetrack's metrics for as long as it answers: a scrape taken once no stream
	// is active any more gives the final count of forwarded events.
	var (
		scrapeMu  sync.Mutex
		lastFinal metrics
	)
	scrapeDone := make(chan struct{})
	go func() {
		defer close(scrapeDone)
		for !fx.ssetrack.exited() {
			b, err := httpGet(fx.metricsURL + "/metrics")
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			m := parseMetrics(b)
			if _, ok := m[mStreamsActive]; ok && m[mStreamsActive] == 0 {
				scrapeMu.Lock()
				lastFinal = m
				scrapeMu.Unlock()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	atTerm := make([]int64, sessions)
	for i := range sessions {
		atTerm[i] = lives[i].events.Load()
	}
	t.Logf("SIGTERM to ssetrack; the clients have %v events", atTerm)
	if err := fx.ssetrack.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fx.ssetrack.done:
	case <-time.After(shutdownTimeout + 20*time.Second):
		_ = fx.ssetrack.cmd.Process.Kill()
		<-fx.ssetrack.done
		t.Errorf("ssetrack did not exit within its --shutdown-timeout %v (plus 20 s of slack); killed", shutdownTimeout)
	}
	<-scrapeDone
	atExit := make([]int64, sessions)
	for i := range sessions {
		atExit[i] = lives[i].events.Load()
	}
	t.Logf("ssetrack exited (%v); the clients have %v events", fx.ssetrack.waitErr, atExit)
	if fx.ssetrack.waitErr != nil {
		t.Errorf("ssetrack exit: %v, want status 0", fx.ssetrack.waitErr)
	}
	logs := fx.ssetrack.logTail()
	for _, bad := range []string{"records lost", "journal shutdown", "journal batch lost", "queue full"} {
		if strings.Contains(logs, bad) {
			t.Errorf("ssetrack logged %q while shutting down", bad)
		}
	}
	if !strings.Contains(logs, "msg=stopped") && !strings.Contains(logs, `"msg":"stopped"`) {
		t.Errorf("ssetrack did not log its clean stop")
	}

	// The clients' streams go on without ssetrack (fail open).
	for i := range sessions {
		got := lives[i].wait(t)
		ids := allIDs(got)
		if r := idsReport(ids, total); r != "" {
			// A duplicate or a reordering is never acceptable; a missing event is the
			// documented cost of failing open mid-stream (envoy.yaml), reported here.
			t.Errorf("session %d: the client stream across the cut: %s", i, r)
		} else if !bytes.Equal(got, body) {
			t.Errorf("session %d: client stream: %s", i, diffStreams(got, body))
		}
		if len(ids) > 0 && ids[len(ids)-1] != strconv.Itoa(total) {
			t.Errorf("session %d: the client stream stopped at id %s after ssetrack left", i, ids[len(ids)-1])
		}
	}
	envoyAfter := fx.envoyStats(t)
	t.Logf("envoy ext_proc after the cut: failure_mode_allowed +%v, streams_failed +%v, message_timeouts +%v",
		envoyAfter.sub(envoyBefore, "failure_mode_allowed"), envoyAfter.sub(envoyBefore, "streams_failed"),
		envoyAfter.sub(envoyBefore, "message_timeouts"))

	// JetStream: what ssetrack accepted, once, in order.
	js := jsClient(t, ns.url())
	storedTotal := 0
	for i, sid := range sids {
		stored := storedSession(t, js, sid)
		ids := allIDs(stored)
		storedTotal += len(ids)
		if !bytes.HasPrefix(body, stored) {
			t.Errorf("session %d: JetStream does not hold a prefix of the stream: %s", i, diffStreams(stored, body[:min(len(body), len(stored))]))
		}
		if r := idsReport(ids, len(ids)); r != "" {
			t.Errorf("session %d: JetStream: %s", i, r)
		}
		if int64(len(ids)) < atTerm[i] {
			t.Errorf("session %d: JetStream holds %d events, but the client had %d through ssetrack before SIGTERM", i, len(ids), atTerm[i])
		}
		t.Logf("session %d: client had %d events at SIGTERM, %d at exit; JetStream holds events 1..%d", i, atTerm[i], atExit[i], len(ids))
	}
	scrapeMu.Lock()
	final := lastFinal
	scrapeMu.Unlock()
	if final == nil {
		t.Logf("no metrics scrape landed between the cut of the streams and the exit: the exact forwarded count is not checked")
	} else {
		fwd := final.sum(mForwarded)
		if float64(storedTotal) != fwd {
			t.Errorf("ssetrack forwarded %v events through its last scrape (no stream open), JetStream holds %d", fwd, storedTotal)
		}
		if d := final.sum(mRecordsDropped) + final.sum(mRejected); d != 0 {
			t.Errorf("ssetrack dropped %v journal records", d)
		}
		t.Logf("ssetrack forwarded %v events in all (last scrape), JetStream holds %d", fwd, storedTotal)
	}
}

// parseMetrics parses a Prometheus text page as fixture.ssetrackMetrics does, for use off
// the test goroutine.
func parseMetrics(b []byte) metrics {
	m := metrics{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

// ---------------------------------------------------------------------------
// TestReplicas

// replicaRig is two ssetrack replicas on one NATS behind one Envoy (round robin).
type replicaRig struct {
	fx   *fixture
	reps [2]*ssetrackProc
	js   jetstream.JetStream
}

var replicaNames = [2]string{"A", "B"}

// served returns which replica a request was served by: the one whose
// ssetrack_responses_total{kind} grew by one between before and after, or -1.
func (rg *replicaRig) served(before, after [2]metrics, kind string) int {
	name := mKinds + `{kind="` + kind + `"}`
	who := -1
	for i := range rg.reps {
		switch after[i].sum(name) - before[i].sum(name) {
		case 0:
		case 1:
			if who >= 0 {
				return -1
			}
			who = i
		default:
			return -1
		}
	}
	return who
}

func (rg *replicaRig) snapshot(t *testing.T) [2]metrics {
	t.Helper()
	return [2]metrics{rg.reps[0].metrics(t), rg.reps[1].metrics(t)}
}

// waitPublished waits (bounded) until the replicas have published every event they
// forwarded: a replica that loads a session from JetStream sees only acknowledged events
// (README, and journal.Publisher.Load), so each handover starts from a settled journal.
func (rg *replicaRig) waitPublished(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := rg.snapshot(t)
		fwd := s[0].sum(mForwarded) + s[1].sum(mForwarded)
		pub := s[0].sum(mPublished) + s[1].sum(mPublished)
		if fwd == pub {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replicas forwarded %v events but published only %v", fwd, pub)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// steer makes the next ext_proc stream go to replica target, relying on round robin over
// one Envoy worker: it sends session-less non-SSE requests until one lands on the other
// replica.
func (rg *replicaRig) steer(t *testing.T, filler string, target int) {
	t.Helper()
	for try := 0; try < 6; try++ {
		before := rg.snapshot(t)
		if _, _, err := rg.fx.fetch(filler, nil); err != nil {
			t.Fatal(err)
		}
		if rg.served(before, rg.snapshot(t), "passthrough") == 1-target {
			return
		}
	}
	t.Fatalf("could not steer a request to replica %s", replicaNames[target])
}

// replicaSession is one session's script and what its client received.
type replicaSession struct {
	sid  string
	evs  []sseEvent
	path string

	mu   sync.Mutex // guards end and hold, read by the upstream
	end  int        // the upstream sends events up to evs[end-1]
	hold bool       // and then keeps the response open

	reqs    int             // requests sent so far (index into upstream.sent)
	has     map[string]bool // ids the client has
	lastID  string          // the last id the client received
	lastOn  [2]int          // last request served by each replica, -1 if none
	history []string        // one line per request, for failure messages
}

// overlapOnResume is how many events the upstream repeats before Last-Event-ID.
const overlapOnResume = 2

func newReplicaSession(t *testing.T, fx *fixture, events int) *replicaSession {
	s := &replicaSession{sid: newSession(t), evs: numberedEvents(events), has: map[string]bool{}, lastOn: [2]int{-1, -1}}
	// An upstream that honours Last-Event-ID but repeats overlapOnResume events, and that
	// starts over without it.
	s.path = fx.up.handle(func(n int, r *http.Request) reply {
		s.mu.Lock()
		end, hold := s.end, s.hold
		s.mu.Unlock()
		sel := resumeFrom(s.evs[:end], r.Header.Get("Last-Event-ID"), overlapOnResume)
		return reply{body: encodeAll(sel), cuts: eventCuts(sel), pause: time.Millisecond, hold: hold}
	})
	return s
}

// round runs one request of the session: the upstream has events up to end; with lei the
// client resumes with Last-Event-ID (its last id); with drop it goes away once it has the
// last event instead of waiting for the end of the response. It returns the replica that
// served the request and an error when the client did not get exactly the events it did
// not have yet.
func (rg *replicaRig) round(t *testing.T, s *replicaSession, end int, lei, drop bool) (int, error) {
	t.Helper()
	s.mu.Lock()
	s.end, s.hold = end, drop
	s.mu.Unlock()
	h := sessionHeader(s.sid)
	what := "GET without Last-Event-ID"
	if lei {
		h.Set("Last-Event-Id", s.lastID)
		what = "GET with Last-Event-ID " + s.lastID
	}
	if drop {
		what += ", client drops after the last event"
	}

	before := rg.snapshot(t)
	var got []byte
	if drop {
		got = rg.readUntil(t, s.path, h, s.evs[end-1].id)
	} else {
		_, b, err := rg.fx.fetch(s.path, h)
		if err != nil {
			t.Fatal(err)
		}
		got = b
	}
	who := rg.served(before, rg.snapshot(t), "sse")
	n := s.reqs
	s.reqs++
	sent := rg.fx.up.sent(s.path)[n]
	want := without(sent, s.has)

	where := "?"
	stale := false
	if who >= 0 {
		where = replicaNames[who]
		stale = s.lastOn[who] >= 0 && s.lastOn[1-who] > s.lastOn[who]
		switch {
		case stale:
			where += fmt.Sprintf(" (cached the session at request %d; replica %s served it since)", s.lastOn[who]+1, replicaNames[1-who])
		case s.lastOn[who] < 0 && s.lastOn[1-who] >= 0:
			where += " (first use: rebuilt from JetStream)"
		}
	}
	s.history = append(s.history, fmt.Sprintf("request %d on replica %s: %s; upstream sent %v; client got %v",
		n+1, where, what, allIDs(sent), allIDs(got)))

	var err error
	if !bytes.Equal(got, want) {
		var dups []string
		for _, id := range allIDs(got) {
			if s.has[id] {
				dups = append(dups, id)
			}
		}
		err = fmt.Errorf("session %s, request %d on replica %s: %s: got ids %v, want %v; delivered again: %v\nsession history:\n  %s",
			s.sid, n+1, where, what, allIDs(got), allIDs(want), dups, strings.Join(s.history, "\n  "))
	}
	for _, id := range allIDs(got) {
		s.has[id] = true
		s.lastID = id
	}
	if who >= 0 {
		s.lastOn[who] = n
	}
	rg.waitPublished(t)
	return who, err
}

// readUntil reads a response until it holds a complete event with id last, then goes away.
func (rg *replicaRig) readUntil(t *testing.T, path string, h http.Header, last string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := rg.fx.open(ctx, http.MethodGet, path, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		got = append(got, buf[:n]...)
		if slices.Contains(allIDs(got), last) {
			return got
		}
		if err != nil {
			t.Fatalf("reading %s after %d bytes, before event %s: %v", path, len(got), last, err)
		}
	}
}

// Two replicas share one NATS (same stream and bucket); Envoy balances ext_proc streams
// over both. Sessions stream, drop and resume, with and without Last-Event-ID, so that
// their requests alternate between the replicas: by the dedup contract (README, "Sessions,
// streams and dedup") the client gets each event exactly once, and JetStream holds each
// event once.
//
// Each request's replica is read from the replicas' ssetrack_responses_total (requests
// run one at a time), so a failure says whether the replica rebuilt the session from
// JetStream (first use) or served it from a cache that predates the other replica's
// deliveries (stale).
func TestReplicas(t *testing.T) {
	requireFaultPrereqs(t)
	ns := startNATSServer(t)
	fx := &fixture{up: startUpstream(t), top: t}
	rg := &replicaRig{fx: fx}
	for i := range rg.reps {
		rg.reps[i] = startSsetrackOn(t, "ssetrack "+replicaNames[i], ns.url())
	}
	cfg := replicaConfig(t, fx.up.port, rg.reps[0].grpcPort, rg.reps[1].grpcPort)
	// One worker: its round robin alternates the replicas strictly, which StaleCache uses
	// to steer requests.
	startEnvoyConfig(t, fx, "envoy-replicas.yaml", cfg, 1)
	fx.client = newE2EClient(t)
	rg.js = jsClient(t, ns.url())
	envoyBefore := fx.envoyStats(t)

	var all []*replicaSession

	// The smallest case, steered: A streams 1-5; the client resumes on B (which rebuilds
	// the session from JetStream) and gets 6-10; then it resumes on A, whose cached
	// session has not seen 6-10; then without Last-Event-ID on B, whose cache has not seen
	// what A delivered.
	t.Run("StaleCache", func(t *testing.T) {
		filler := fx.up.static(reply{header: http.Header{"Content-Type": {"text/plain"}}, body: []byte("not sse\n")})
		s := newReplicaSession(t, fx, 20)
		all = append(all, s)
		steps := []struct {
			on       int
			end      int
			lei      bool
			expected string
		}{
			{0, 5, false, "a new session"},
			{1, 10, true, "first use on B: rebuilt from JetStream"},
			{0, 15, true, "A's cache predates B's 6-10"},
			{1, 20, false, "B's cache predates A's 11-15"},
		}
		for _, st := range steps {
			rg.steer(t, filler, st.on)
			who, err := rg.round(t, s, st.end, st.lei, false)
			if who != st.on {
				t.Fatalf("request went to replica %v, steered to %s", who, replicaNames[st.on])
			}
			if err != nil {
				t.Errorf("%s:\n%v", st.expected, err)
			}
		}
	})

	// A stale cache that continues the same stream: A streams 1-5; B continues the stream
	// with 6-10 (per-session sequence 6-10); the client lost 6-10 on the last mile and
	// resumes on A with Last-Event-ID 5. A's cache matches 5 on the same stream and
	// numbers what it delivers from sequence 6 again, so its batch gets the Nats-Msg-Id of
	// B's batch (session, stream, first sequence) and JetStream may discard it as a
	// duplicate, although it carries events B never had.
	t.Run("StaleCacheSameStream", func(t *testing.T) {
		filler := fx.up.static(reply{header: http.Header{"Content-Type": {"text/plain"}}, body: []byte("not sse\n")})
		s := newReplicaSession(t, fx, 12)
		all = append(all, s)
		for i, st := range []struct{ on, end int }{{0, 5}, {1, 10}} {
			rg.steer(t, filler, st.on)
			if who, err := rg.round(t, s, st.end, i > 0, false); who != st.on || err != nil {
				t.Fatalf("request %d (replica %v, steered to %s): %v", i+1, who, replicaNames[st.on], err)
			}
		}
		// The client lost 6-10: it resumes after 5, and by the contract gets 6-10 again.
		s.lastID = "5"
		for _, id := range []string{"6", "7", "8", "9", "10"} {
			delete(s.has, id)
		}
		rg.steer(t, filler, 0)
		if who, err := rg.round(t, s, 12, true, false); who != 0 || err != nil {
			t.Errorf("request 3 (replica %v, steered to A): %v", who, err)
		}
		stored := storedSession(t, rg.js, s.sid)
		if ids := allIDs(stored); !slices.Contains(ids, "11") || !slices.Contains(ids, "12") {
			t.Errorf("JetStream holds %v: events 11 and 12, delivered to the client by replica A, were never stored (A's batch reused the Nats-Msg-Id of B's batch)\nsession history:\n  %s",
				ids, strings.Join(s.history, "\n  "))
		}
	})

	// Many sessions, requests not steered: five sessions take turns, so with round robin
	// each session's requests alternate between the replicas.
	t.Run("Handover", func(t *testing.T) {
		const sessions, rounds, per = 5, 9, 5
		ss := make([]*replicaSession, sessions)
		for i := range ss {
			ss[i] = newReplicaSession(t, fx, rounds*per)
			all = append(all, ss[i])
		}
		var failed, handovers, staleVisits, staleFailed int
		for r := range rounds {
			// Round kinds: a stream without Last-Event-ID (the upstream starts over), a
			// resume dropped by the client, a resume that completes, a resume dropped.
			lei := r%4 != 0
			drop := r%2 == 1
			for _, s := range ss {
				prev := s.lastOn
				who, err := rg.round(t, s, (r+1)*per, lei && r > 0, drop)
				if who < 0 {
					t.Fatalf("could not tell which replica served session %s", s.sid)
				}
				other := 1 - who
				isStale := prev[who] >= 0 && prev[other] > prev[who]
				if prev[other] >= 0 && prev[other] > prev[who] {
					handovers++
				}
				if isStale {
					staleVisits++
				}
				if err != nil {
					failed++
					if isStale {
						staleFailed++
					}
					if failed <= 3 {
						t.Error(err)
					}
				}
			}
		}
		t.Logf("%d requests, %d handovers to the other replica (%d of them to a replica holding an older copy of the session); %d requests delivered other than the contract says (%d of them on such a stale replica)",
			sessions*rounds, handovers, staleVisits, failed, staleFailed)
		if failed > 3 {
			t.Errorf("... %d requests in all did not deliver each event once", failed)
		}
		if handovers == 0 {
			t.Errorf("no request moved to the other replica: the test did not test handovers")
		}
	})

	// JetStream holds each event of each session once, in order.
	for _, s := range all {
		stored := storedSession(t, rg.js, s.sid)
		if r := idsReport(allIDs(stored), s.end); r != "" {
			t.Errorf("session %s: JetStream: %s", s.sid, r)
		}
	}
	// Both replicas served SSE responses.
	for i, r := range rg.reps {
		if n := r.metrics(t).sum(mKinds + `{kind="sse"}`); n == 0 {
			t.Errorf("replica %s served no SSE response", replicaNames[i])
		} else {
			t.Logf("replica %s served %v SSE responses", replicaNames[i], n)
		}
		if strings.Contains(r.p.logTail(), "load session history") {
			t.Logf("replica %s logged a failed history load (see its output)", replicaNames[i])
		}
	}
	fx.checkNoFailOpen(t, envoyBefore)
}
