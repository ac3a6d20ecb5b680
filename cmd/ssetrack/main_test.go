package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ssetrack/ssetrack/extproc/journal"
	"github.com/ssetrack/ssetrack/test/testpki"
)

// syncBuffer is a bytes.Buffer safe for the server's log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServeHelpListsEveryFlag(t *testing.T) {
	var out syncBuffer
	err := Main(context.Background(), []string{"serve", "--help"}, &out, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v, want flag.ErrHelp", err)
	}
	fs, _ := serveFlags(&bytes.Buffer{})
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(out.String(), "--"+f.Name) || !strings.Contains(out.String(), "$"+envName(f.Name)) {
			t.Errorf("help lacks --%s or $%s", f.Name, envName(f.Name))
		}
	})
	for _, want := range []string{"(default 127.0.0.1:9001)", "(default 1024)", "SSETRACK_NATS_URL"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

func TestInvalidConfigListsEveryProblem(t *testing.T) {
	t.Setenv("SSETRACK_LOG_FORMAT", "xml")
	var out syncBuffer
	err := Main(context.Background(), []string{"serve", "--dedup-window", "0", "--replicas", "5", "--tls-cert", "x.pem", "--pprof-sync",
		"--listen", "nonsense", "--nats-url", "nats://[bad"}, &out, &out)
	if err == nil {
		t.Fatal("invalid configuration accepted")
	}
	if exitCode(err) != 2 {
		t.Errorf("exit code %d for an invalid configuration, want 2", exitCode(err))
	}
	for _, want := range []string{"--dedup-window 0", "--replicas 5", "--log-format \"xml\"", "--tls-cert and --tls-key", "--pprof-sync needs --pprof",
		"--listen \"nonsense\"", "--nats-url"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// TestFlagParseErrorAlone: a flag that does not parse is reported with a
// pointer to --help, not followed by every flag's help; --help prints it.
func TestFlagParseErrorAlone(t *testing.T) {
	var out syncBuffer
	err := Main(context.Background(), []string{"serve", "--batch-delay", "foo"}, &out, &out)
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "--help") {
		t.Errorf("error %v (exit %d), want a usage error pointing to --help", err, exitCode(err))
	}
	if strings.Contains(out.String(), "--dedup-window") {
		t.Errorf("a parse error printed the flags' help:\n%s", out.String())
	}
	out = syncBuffer{}
	if err := Main(context.Background(), []string{"serve", "--help"}, &out, &out); !strings.Contains(out.String(), "--dedup-window") {
		t.Errorf("--help (%v) printed no flags:\n%s", err, out.String())
	}
}

func TestEnvTwinLosesToFlag(t *testing.T) {
	t.Setenv("SSETRACK_DEDUP_WINDOW", "0")
	fs, c := serveFlags(&bytes.Buffer{})
	if err := parseFlags(fs, []string{"--dedup-window", "64"}); err != nil {
		t.Fatal(err)
	}
	if c.dedupWindow != 64 {
		t.Errorf("dedup window %d, want the flag's 64", c.dedupWindow)
	}
	t.Setenv("SSETRACK_SESSION_HEADER", "x-session, x-conversation")
	fs, c = serveFlags(&bytes.Buffer{})
	if err := parseFlags(fs, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.sessionHeaders.values, "|"); got != "x-session|x-conversation" {
		t.Errorf("session headers %q from the environment", got)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// served is `ssetrack serve` running in this process.
type served struct {
	metrics string // its metrics listener's address
	logs    *syncBuffer
	exited  chan struct{}
	err     error  // Main's result, once exited is closed
	cancel  func() // asks it to stop (as SIGTERM does), without waiting
	stop    func() // cancels it and waits; idempotent, and run at cleanup
}

// runServe starts `ssetrack serve --metrics-listen <free address> args...`
// in-process and returns at once. Its logs are printed if the test fails.
func runServe(t *testing.T, args ...string) *served {
	t.Helper()
	s := &served{metrics: freeAddr(t), logs: &syncBuffer{}, exited: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.exited)
		s.err = Main(ctx, append([]string{"serve", "--metrics-listen", s.metrics}, args...), s.logs, s.logs)
	}()
	s.stop = sync.OnceFunc(func() {
		cancel()
		<-s.exited
		if s.err != nil {
			t.Errorf("serve: %v", s.err)
		}
		if t.Failed() {
			t.Logf("serve logs:\n%s", s.logs.String())
		}
	})
	t.Cleanup(s.stop)
	return s
}

// readyzUntil polls /readyz every 20 ms until done accepts its answer
// (code 0: no answer), and returns that answer. It fails the test if serve
// exits first.
func (s *served) readyzUntil(t *testing.T, done func(code int) bool) (code int, body string) {
	t.Helper()
	for {
		if code, body = readyz(s.metrics); done(code) {
			return code, body
		}
		select {
		case <-s.exited:
			t.Fatalf("serve exited: %v\n%s", s.err, s.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// startServe runs `ssetrack serve` in-process until the test ends and
// waits for /readyz.
func startServe(t *testing.T, args ...string) (metrics string, logs *syncBuffer) {
	t.Helper()
	s := runServe(t, args...)
	s.readyzUntil(t, func(code int) bool { return code == http.StatusOK })
	return s.metrics, s.logs
}

func TestServeMutualTLS(t *testing.T) {
	dir := t.TempDir()
	testpki.Write(t, dir, "server", "client")
	listen := freeAddr(t)
	startServe(t, "--journal=false", "--listen", listen,
		"--tls-cert", filepath.Join(dir, "server.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"),
		"--tls-client-ca", filepath.Join(dir, "ca.pem"))

	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	clientCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	check := func(tc *tls.Config) error {
		conn, err := grpc.NewClient(listen, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: procv3.ExternalProcessor_ServiceDesc.ServiceName})
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return errors.New(resp.GetStatus().String())
		}
		return nil
	}
	if err := check(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{clientCert}}); err != nil {
		t.Errorf("health over mTLS: %v", err)
	}
	if err := check(&tls.Config{RootCAs: pool}); err == nil {
		t.Error("a client without a certificate was served")
	}
}

// TestServeJournalAndTail drives serve's gRPC as Envoy would, then reads the
// session back with `ssetrack tail` from the embedded NATS server.
func TestServeJournalAndTail(t *testing.T) {
	listen, nats := freeAddr(t), freeAddr(t)
	metrics, logs := startServe(t, "--listen", listen, "--nats-listen", nats, "--data-dir", t.TempDir(), "--batch-delay", "5ms")

	conn, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := procv3.NewExternalProcessorClient(conn)
	const sid = "tail.*>session"
	body := "id: 1\ndata: one\n\n: comment\n\nid: 2\nevent: note\ndata: two\ndata: lines\n\n"
	for round := 0; round < 2; round++ { // the second round is all duplicates
		exchange(t, client, sid, body)
	}

	var out syncBuffer
	var events []eventJSON
	for try := 0; len(events) < 2 && try < 1000; try++ { // bounded: the batch is published asynchronously
		out = syncBuffer{}
		if err := Main(context.Background(), []string{"tail", "--session", sid, "--nats-url", "nats://" + nats, "--json"}, &out, &out); err != nil {
			t.Fatalf("tail: %v\n%s", err, out.String())
		}
		events = nil
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if line == "" {
				continue
			}
			var ev eventJSON
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("tail line %q: %v", line, err)
			}
			events = append(events, ev)
		}
		if len(events) < 2 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if len(events) != 2 {
		t.Fatalf("tail gave %d events, want 2 (duplicates are not persisted):\n%s", len(events), out.String())
	}
	if e := events[1]; e.ID == nil || *e.ID != "2" || e.Event != "note" || e.Data != "two\nlines" || e.Session != sid || e.Seq != 2 {
		t.Errorf("second event %+v", e)
	}
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m bytes.Buffer
	m.ReadFrom(resp.Body)
	for _, want := range []string{"ssetrack_events_deduplicated_total 2", "ssetrack_journal_events_published_total 2"} {
		if !strings.Contains(m.String(), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(logs.String(), sid) {
		t.Error("logs print the raw session id")
	}
}

func TestEventFields(t *testing.T) {
	tests := []struct{ in, event, data string }{
		{"id: 1\ndata: a\n\n", "", "a"},
		{"\nevent: x\r\ndata: a\r\ndata:b\r\n\r", "x", "a\nb"},
		{": c\ndata\n\n", "", ""},
		{"data:  two spaces\n\n", "", " two spaces"},
	}
	for _, tt := range tests {
		if ev, data := eventFields([]byte(tt.in)); ev != tt.event || data != tt.data {
			t.Errorf("eventFields(%q) = %q, %q; want %q, %q", tt.in, ev, data, tt.event, tt.data)
		}
	}
}

// The test binary doubles as ssetrack: with envAsMain set it runs main()
// with its arguments, so tests observe real exit statuses. envBreakAccept
// names a listen address whose listener fails on Accept, the only way to
// make a running gRPC server stop with an error.
const (
	envAsMain      = "SSETRACK_TEST_AS_MAIN"
	envBreakAccept = "SSETRACK_TEST_BREAK_ACCEPT"
)

func TestMain(m *testing.M) {
	if os.Getenv(envAsMain) == "1" {
		if addr := os.Getenv(envBreakAccept); addr != "" {
			listen = func(network, a string) (net.Listener, error) {
				l, err := net.Listen(network, a)
				if err != nil || a != addr {
					return l, err
				}
				return brokenListener{l}, nil
			}
		}
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// brokenListener fails every Accept with a permanent error.
type brokenListener struct{ net.Listener }

func (brokenListener) Accept() (net.Conn, error) {
	return nil, errors.New("accept: injected failure")
}

// runMain runs the test binary as ssetrack with args (after env), until it
// exits or stop is closed (then SIGTERM), and returns its exit status and
// output.
func runMain(t *testing.T, stop <-chan struct{}, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), envAsMain+"=1"), env...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-stop:
		cmd.Process.Signal(syscall.SIGTERM)
		err = <-done
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("ssetrack %v did not exit:\n%s", args, out.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	}
	t.Fatalf("run ssetrack: %v", err)
	return -1, ""
}

// TestFatalErrorsExitNonZero runs ssetrack as a process through every fatal
// path and checks its exit status and that it says why.
func TestFatalErrorsExitNonZero(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	breakAddr := freeAddr(t)
	tests := []struct {
		name string
		env  []string
		args []string
		code int
		says string
	}{
		{"unknown flag", nil, []string{"serve", "--no-such-flag"}, 2, "no-such-flag"},
		{"invalid value", nil, []string{"serve", "--replicas", "5"}, 2, "--replicas 5"},
		{"invalid environment", []string{"SSETRACK_DEDUP_WINDOW=x"}, []string{"serve"}, 2, "SSETRACK_DEDUP_WINDOW"},
		{"unknown command", nil, []string{"nope"}, 2, "unknown command"},
		{"grpc port in use", nil, []string{"serve", "--journal=false", "--listen", busy.Addr().String(), "--metrics-listen", freeAddr(t)}, 1, "address already in use"},
		{"metrics port in use", nil, []string{"serve", "--journal=false", "--listen", freeAddr(t), "--metrics-listen", busy.Addr().String()}, 1, "address already in use"},
		{"nats port in use", nil, []string{"serve", "--listen", freeAddr(t), "--metrics-listen", freeAddr(t), "--nats-listen", busy.Addr().String(), "--data-dir", t.TempDir()}, 1, "address already in use"},
		{"embedded server cannot start", nil, []string{"serve", "--listen", freeAddr(t), "--metrics-listen", freeAddr(t), "--nats-listen", freeAddr(t), "--data-dir", notDir}, 1, "JetStream"},
		{"grpc server error", []string{envBreakAccept + "=" + breakAddr}, []string{"serve", "--journal=false", "--listen", breakAddr, "--metrics-listen", freeAddr(t)}, 1, "injected failure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runMain(t, nil, tt.env, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.says) {
				t.Errorf("exit status %d, want %d, with %q in the output:\n%s", code, tt.code, tt.says, out)
			}
		})
	}
	// The contrast: SIGTERM after a clean start is a clean exit.
	t.Run("sigterm", func(t *testing.T) {
		metrics := freeAddr(t)
		stop := make(chan struct{})
		go func() {
			defer close(stop)
			for i := 0; i < 1000; i++ {
				if resp, err := http.Get("http://" + metrics + "/readyz"); err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						return
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
		code, out := runMain(t, stop, nil, "serve", "--journal=false", "--listen", freeAddr(t), "--metrics-listen", metrics)
		if code != 0 || !strings.Contains(out, "stopped") {
			t.Errorf("exit status %d after SIGTERM, want 0:\n%s", code, out)
		}
	})
}

// exchange sends one HTTP exchange to ssetrack's ext_proc server as Envoy
// would: request headers, SSE response headers, then each body chunk (the
// last with end_of_stream), and returns the body ssetrack forwarded.
func exchange(t *testing.T, client procv3.ExternalProcessorClient, sid string, chunks ...string) string {
	t.Helper()
	stream, err := client.Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	hm := func(kv ...string) *corev3.HeaderMap {
		m := &corev3.HeaderMap{}
		for i := 0; i < len(kv); i += 2 {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return m
	}
	msgs := []*procv3.ProcessingRequest{
		{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{Headers: hm(":method", "GET", "mcp-session-id", sid)}}},
		{Request: &procv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &procv3.HttpHeaders{Headers: hm(":status", "200", "content-type", "text/event-stream")}}},
	}
	for i, c := range chunks {
		msgs = append(msgs, &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{
			ResponseBody: &procv3.HttpBody{Body: []byte(c), EndOfStream: i == len(chunks)-1}}})
	}
	var out strings.Builder
	for i, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if i >= 2 {
			if bm := resp.GetResponseBody().GetResponse().GetBodyMutation(); bm != nil {
				out.Write(bm.GetBody())
			} else {
				out.WriteString(chunks[i-2])
			}
		}
	}
	stream.CloseSend()
	stream.Recv()
	return out.String()
}

// scrape returns ssetrack's metrics.
func scrape(t *testing.T, metrics string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// metricValue is the value of family's series whose labels include the
// given name=value pairs (summed over the others).
func metricValue(mfs map[string]*dto.MetricFamily, family string, labels ...string) float64 {
	var v float64
	mf := mfs[family]
	if mf == nil {
		return 0
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
			}
			if !found {
				continue next
			}
		}
		v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return v
}

// readyz returns /readyz's status and body, or 0 when nothing answers.
func readyz(metrics string) (int, string) {
	resp, err := http.Get("http://" + metrics + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, strings.TrimSpace(b.String())
}

// tailIDs reads a session's stored event ids with `ssetrack tail`.
func tailIDs(t *testing.T, natsURL, sid string) []string {
	t.Helper()
	var out syncBuffer
	if err := Main(context.Background(), []string{"tail", "--session", sid, "--nats-url", natsURL, "--json"}, &out, &out); err != nil {
		t.Fatalf("tail: %v\n%s", err, out.String())
	}
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if line == "" {
			continue
		}
		var ev eventJSON
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("tail line %q: %v", line, err)
		}
		if ev.ID != nil {
			ids = append(ids, *ev.ID)
		}
	}
	return ids
}

// TestServeStartsWithoutNATS: `serve --nats-url` with no NATS there starts
// anyway: it deduplicates in memory, queues for the journal (bounded,
// counting the overflow) and says on /readyz why it is not ready. A
// nats-server started 10 s later gets what the queue held, /readyz turns
// ready, and later events are published as usual.
func TestServeStartsWithoutNATS(t *testing.T) {
	listen, natsAddr := freeAddr(t), freeAddr(t)
	natsURL := "nats://" + natsAddr
	started := time.Now()
	const queue = 3 // records: one per body chunk with events, one per stream end
	ss := runServe(t, "--listen", listen, "--nats-url", natsURL,
		"--queue-size", fmt.Sprint(queue), "--batch-delay", "5ms")
	metrics := ss.metrics

	code, body := ss.readyzUntil(t, func(code int) bool { return code != 0 })
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "NATS connection") {
		t.Fatalf("/readyz without NATS: %d %q, want 503 with the reason", code, body)
	}
	t.Logf("/readyz without NATS: %d %q", code, body)

	conn, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := procv3.NewExternalProcessorClient(conn)
	const sid = "degraded"
	ev := func(id int) string { return fmt.Sprintf("id: %d\ndata: event %d\n\n", id, id) }
	// Five chunks of one event each: the queue takes the first three.
	exchange(t, client, sid, ev(1), ev(2), ev(3), ev(4), ev(5))
	// Deduplication works without NATS: the repeats are dropped.
	if got := exchange(t, client, sid, ev(1)+ev(2)+ev(3)+ev(4)+ev(5)+ev(6)); got != ev(6) {
		t.Errorf("second stream forwarded %q, want only event 6", got)
	}
	mfs := scrape(t, metrics)
	if d := metricValue(mfs, "ssetrack_events_deduplicated_total"); d != 5 {
		t.Errorf("deduplicated %v events without NATS, want 5", d)
	}
	dropped := metricValue(mfs, "ssetrack_journal_records_dropped_total", "reason", "queue_full")
	if depth := metricValue(mfs, "ssetrack_journal_queue_depth"); depth != queue || dropped < 3 {
		t.Errorf("journal queue depth %v, dropped %v: want %d queued and events 4, 5 and 6 counted as dropped", depth, dropped, queue)
	}
	if code, _ := readyz(metrics); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz %d while NATS is still away", code)
	}

	// NATS appears 10 s after ssetrack started, on the address it was given.
	time.Sleep(time.Until(started.Add(10 * time.Second)))
	srv, err := journal.StartServer(journal.ServerConfig{Listen: natsAddr, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	defer ss.stop() // before the server's shutdown, so the journal drains into it
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body = readyz(metrics)
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d %q 30 s after NATS appeared", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var ids []string
	for deadline := time.Now().Add(30 * time.Second); len(ids) < queue && time.Now().Before(deadline); {
		ids = tailIDs(t, natsURL, sid)
		time.Sleep(20 * time.Millisecond)
	}
	if got := strings.Join(ids, ","); got != "1,2,3" {
		t.Fatalf("stored ids %q once NATS appeared, want the queued 1,2,3 once each", got)
	}
	// A new event now goes straight to JetStream.
	exchange(t, client, sid, ev(7))
	for deadline := time.Now().Add(30 * time.Second); len(ids) < queue+1 && time.Now().Before(deadline); {
		ids = tailIDs(t, natsURL, sid)
		time.Sleep(20 * time.Millisecond)
	}
	if got := strings.Join(ids, ","); got != "1,2,3,7" {
		t.Errorf("stored ids %q after NATS appeared, want 1,2,3,7", got)
	}
	mfs = scrape(t, metrics)
	t.Logf("sent 7 events (5 + 1 new + 1 after NATS), deduplicated %v, persisted %v, journal records dropped (queue full) %v",
		metricValue(mfs, "ssetrack_events_deduplicated_total"), metricValue(mfs, "ssetrack_journal_events_published_total"),
		metricValue(mfs, "ssetrack_journal_records_dropped_total", "reason", "queue_full"))
}

// TestServeDrainDelay: on SIGTERM with --drain-delay, serve first says it is
// not ready (/readyz 503, gRPC health NOT_SERVING) while it still takes new
// ext_proc streams, then stops.
func TestServeDrainDelay(t *testing.T) {
	listen := freeAddr(t)
	ss := runServe(t, "--journal=false", "--listen", listen, "--drain-delay", "3s")
	ss.readyzUntil(t, func(code int) bool { return code == http.StatusOK })
	ss.cancel()
	code, body := ss.readyzUntil(t, func(code int) bool { return code != http.StatusOK })
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "shutting down") {
		t.Fatalf("/readyz while draining: %d %q, want 503 shutting down", code, body)
	}
	conn, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health while draining: %v, %v; want NOT_SERVING", hc.GetStatus(), err)
	}
	// A new stream is still served: deduplicated as usual.
	client := procv3.NewExternalProcessorClient(conn)
	ev := "id: 1\ndata: a\n\n"
	exchange(t, client, "draining", ev)
	if got := exchange(t, client, "draining", ev); got != "" {
		t.Errorf("stream opened while draining forwarded %q, want the repeat dropped", got)
	}
	select {
	case <-ss.exited:
		t.Fatal("serve exited before the drain delay ended")
	default:
	}
	<-ss.exited
}
