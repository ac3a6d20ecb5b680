package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long a process may take to become ready.
const startTimeout = 60 * time.Second

// fixture is one running system: the test upstream, an ssetrack process and an Envoy
// process configured from one of the shipped Envoy configs.
type fixture struct {
	up       *upstream
	ssetrack *process
	envoy    *process

	proxyURL   string // Envoy's listener, where clients connect
	adminURL   string // Envoy's admin
	metricsURL string // ssetrack's metrics and health
	client     *http.Client

	ssetrackGRPCPort int
	ssetrackArgs     []string
	natsURL          string     // ssetrack's embedded NATS server
	top              *testing.T // the test that owns the processes
}

// startFixture starts the system with envoy/<config> and stops it when t ends; the
// processes' logs are printed if t failed.
func startFixture(t *testing.T, config string) *fixture {
	t.Helper()
	requireEnvoy(t)
	fx := &fixture{up: startUpstream(t), top: t}
	fx.startSsetrack(t)
	fx.startEnvoy(t, config)
	fx.client = &http.Client{Transport: &http.Transport{
		// Compare the bytes as sent: no transparent gzip.
		DisableCompression:  true,
		MaxIdleConnsPerHost: 200,
	}}
	t.Cleanup(fx.client.CloseIdleConnections)
	return fx
}

func (fx *fixture) startSsetrack(t *testing.T) {
	t.Helper()
	dataDir := t.TempDir()
	var lastErr error
	// The ports are picked free and then released, so another process may grab one in
	// between; and on a busy machine with PID reuse, a stray signal meant for some other
	// process may end ours. A process that exits while starting is retried a few times.
	for attempt := 0; attempt < 3; attempt++ {
		ports := freePorts(t, 3)
		grpcAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
		metricsAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
		natsAddr := fmt.Sprintf("127.0.0.1:%d", ports[2])
		args := []string{
			"serve",
			"--listen", grpcAddr,
			"--metrics-listen", metricsAddr,
			"--nats-listen", natsAddr,
			"--data-dir", dataDir,
			"--log-level", "debug",
		}
		args = append(args, strings.Fields(os.Getenv("E2E_SSETRACK_ARGS"))...)
		p := startProcess(t, "ssetrack", ssetrackBin, args...)
		metricsURL := "http://" + metricsAddr
		err := waitReady(p, metricsURL+"/readyz", func(code int, _ []byte) bool { return code == http.StatusOK })
		if err == nil {
			fx.ssetrack = p
			fx.metricsURL = metricsURL
			fx.ssetrackGRPCPort = ports[0]
			fx.ssetrackArgs = args
			fx.natsURL = "nats://" + natsAddr
			return
		}
		lastErr = err
		exited := p.exited()
		p.stop()
		p.quiet = true
		t.Logf("ssetrack did not start (attempt %d): %v\n%s", attempt+1, err, p.logTail())
		if !exited {
			break // not ready in time: retrying would not help
		}
	}
	t.Fatalf("ssetrack did not start: %v", lastErr)
}

// stopSsetrack stops ssetrack with SIGTERM and checks that it shut down cleanly.
func (fx *fixture) stopSsetrack(t *testing.T) {
	t.Helper()
	fx.ssetrack.stop()
	if fx.ssetrack.waitErr != nil {
		t.Errorf("ssetrack did not shut down cleanly on SIGTERM: %v", fx.ssetrack.waitErr)
	}
}

// restartSsetrack stops ssetrack and starts it again with the same flags (same ports,
// same data directory).
func (fx *fixture) restartSsetrack(t *testing.T) {
	t.Helper()
	fx.stopSsetrack(t)
	p := startProcess(fx.top, "ssetrack (restarted)", ssetrackBin, fx.ssetrackArgs...)
	if err := waitReady(p, fx.metricsURL+"/readyz", func(code int, _ []byte) bool { return code == http.StatusOK }); err != nil {
		t.Fatalf("ssetrack did not restart: %v", err)
	}
	fx.ssetrack = p
}

func (fx *fixture) startEnvoy(t *testing.T, config string) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot, "envoy", config))
	if err != nil {
		t.Fatal(err)
	}
	// Listener and admin on port 0: Envoy picks free ports and reports them.
	rendered := renderConfig(t, string(src), map[int]int{
		10000: 0,
		8080:  fx.up.port,
		9001:  fx.ssetrackGRPCPort,
		9901:  0,
	})
	startEnvoyConfig(t, fx, config, rendered, 2)
}

// startEnvoyConfig starts Envoy with the given (already rendered) config text on
// concurrency workers and fills in fx.envoy, fx.adminURL and fx.proxyURL.
func startEnvoyConfig(t *testing.T, fx *fixture, name, cfg string, concurrency int) {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, name)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	adminPath := filepath.Join(dir, "admin-address")
	level := os.Getenv("E2E_ENVOY_LOG_LEVEL")
	if level == "" {
		level = "warning"
	}
	p := startProcess(t, "envoy", envoyBin,
		"-c", cfgPath,
		"--use-dynamic-base-id",
		"--admin-address-path", adminPath,
		"--concurrency", strconv.Itoa(concurrency),
		"--log-level", level,
	)
	fx.envoy = p

	deadline := time.Now().Add(startTimeout)
	for {
		b, err := os.ReadFile(adminPath)
		if err == nil && len(bytes.TrimSpace(b)) > 0 {
			fx.adminURL = "http://" + string(bytes.TrimSpace(b))
			break
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("envoy wrote no admin address (exited=%v)\n%s", p.exited(), p.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := waitReady(p, fx.adminURL+"/ready", func(code int, body []byte) bool {
		return code == http.StatusOK && strings.TrimSpace(string(body)) == "LIVE"
	}); err != nil {
		t.Fatalf("envoy not ready: %v\n%s", err, p.logTail())
	}

	var listeners struct {
		ListenerStatuses []struct {
			Name         string `json:"name"`
			LocalAddress struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"local_address"`
		} `json:"listener_statuses"`
	}
	body, err := httpGet(fx.adminURL + "/listeners?format=json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &listeners); err != nil || len(listeners.ListenerStatuses) != 1 {
		t.Fatalf("envoy /listeners: want one listener, got %s (%v)", body, err)
	}
	sa := listeners.ListenerStatuses[0].LocalAddress.SocketAddress
	fx.proxyURL = "http://" + net.JoinHostPort(sa.Address, strconv.Itoa(sa.PortValue))
}

// renderConfig rewrites the port_value of each port in ports. Each port must occur exactly
// once in the config, so a change in the shipped config cannot silently escape the tests.
func renderConfig(t *testing.T, cfg string, ports map[int]int) string {
	t.Helper()
	for from, to := range ports {
		re := regexp.MustCompile(`\bport_value:\s*` + strconv.Itoa(from) + `\b`)
		if n := len(re.FindAllStringIndex(cfg, -1)); n != 1 {
			t.Fatalf("config: port %d occurs %d times, want once", from, n)
		}
		cfg = re.ReplaceAllString(cfg, "port_value: "+strconv.Itoa(to))
	}
	return cfg
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// waitReady polls url until ok accepts the answer, the process exits or startTimeout passes.
func waitReady(p *process, url string, ok func(code int, body []byte) bool) error {
	deadline := time.Now().Add(startTimeout)
	c := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if ok(resp.StatusCode, b) {
				return nil
			}
			last = fmt.Sprintf("%s: %d %q", url, resp.StatusCode, b)
		} else {
			last = err.Error()
		}
		if p.exited() {
			return fmt.Errorf("%s: %w (%v); last answer: %s", p.name, errExited, p.waitErr, last)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v; last answer: %s", p.name, startTimeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpGet(url string) ([]byte, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, nil
}

// process is a child process whose output is kept for the test log.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	// waitErr is set before done is closed.
	waitErr error
	// quiet suppresses the output dump on failure (for a start attempt already logged).
	quiet bool
}

// startProcess starts bin; it is stopped when t ends, and its output is printed if t
// failed (or always, with E2E_LOGS=1).
func startProcess(t testing.TB, name, bin string, args ...string) *process {
	t.Helper()
	return startProcessEnv(t, name, nil, bin, args...)
}

// startProcessEnv is startProcess with extra environment variables.
func startProcessEnv(t testing.TB, name string, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	// Own process group: a Ctrl-C in the terminal reaches only the test binary, which
	// then stops its children in order.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	t.Logf("starting %s: %s %s", name, bin, strings.Join(args, " "))
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if (t.Failed() || os.Getenv("E2E_LOGS") == "1") && !p.quiet {
			t.Logf("---- %s output (exit: %v) ----\n%s\n---- end of %s output ----", name, p.waitErr, p.logTail(), name)
		}
	})
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to exit (SIGTERM), then kills it if it has not within 10s.
// os.Process signals through a pidfd, so a recycled PID is never hit.
func (p *process) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// logTail returns the last 256 KiB of the process's output.
func (p *process) logTail() string {
	b := p.out.Bytes()
	const max = 256 << 10
	if len(b) > max {
		return "[... " + strconv.Itoa(len(b)-max) + " bytes cut ...]\n" + string(b[len(b)-max:])
	}
	return string(b)
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// ssetrackMetrics returns ssetrack's Prometheus metrics: each sample keyed by its name and
// labels as printed (name{a="x",b="y"}).
func (fx *fixture) ssetrackMetrics(t *testing.T) metrics {
	t.Helper()
	b, err := httpGet(fx.metricsURL + "/metrics")
	if err != nil {
		t.Fatalf("ssetrack metrics: %v", err)
	}
	m := metrics{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m
}

// envoyStats returns Envoy's ext_proc counters for the filter (stat_prefix ssetrack),
// keyed by the last part of their name (streams_started, stream_msgs_sent, ...).
func (fx *fixture) envoyStats(t *testing.T) metrics {
	t.Helper()
	b, err := httpGet(fx.adminURL + "/stats?filter=ext_proc")
	if err != nil {
		t.Fatalf("envoy stats: %v", err)
	}
	m := metrics{}
	const prefix = "http.ingress_http.ext_proc.ssetrack."
	for _, line := range strings.Split(string(b), "\n") {
		name, val, ok := strings.Cut(line, ": ")
		if !ok || !strings.HasPrefix(name, prefix) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		m[strings.TrimPrefix(name, prefix)] = v
	}
	if _, ok := m["streams_started"]; !ok {
		t.Fatalf("envoy stats: no %sstreams_started in\n%s", prefix, b)
	}
	return m
}

// metrics maps a metric (with labels, if any) to its value.
type metrics map[string]float64

// sub returns m[name] - old[name].
func (m metrics) sub(old metrics, name string) float64 { return m[name] - old[name] }

// sum adds up the samples of a metric: name is a metric name, optionally followed by
// {label="value",...}, in which case only samples carrying all those labels count.
func (m metrics) sum(name string) float64 {
	base, labels, _ := strings.Cut(name, "{")
	var want []string
	if labels = strings.TrimSuffix(labels, "}"); labels != "" {
		want = strings.Split(labels, ",")
	}
	var total float64
	for k, v := range m {
		kb, kl, _ := strings.Cut(k, "{")
		if kb != base {
			continue
		}
		have := strings.Split(strings.TrimSuffix(kl, "}"), ",")
		ok := true
		for _, w := range want {
			if !slices.Contains(have, w) {
				ok = false
				break
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

// failOpenCounters are the ext_proc counters that grow when Envoy carried on without
// ssetrack (failure_mode_allow) or received something it did not expect. Every test checks
// that they stay flat, because fail-open would otherwise hide a broken ssetrack from tests
// that only compare bytes.
var failOpenCounters = []string{"streams_failed", "failure_mode_allowed", "message_timeouts", "spurious_msgs_received"}

// checkNoFailOpen fails t if any fail-open counter grew since before.
func (fx *fixture) checkNoFailOpen(t *testing.T, before metrics) {
	t.Helper()
	after := fx.envoyStats(t)
	for _, c := range failOpenCounters {
		if d := after.sub(before, c); d != 0 {
			t.Errorf("envoy ext_proc counter %s grew by %v: Envoy carried on without ssetrack", c, d)
		}
	}
}

// get sends a GET through Envoy and reads the whole body; it fails t unless the status is
// 200.
func (fx *fixture) get(t *testing.T, path string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := fx.fetch(path, header)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// fetch is get for use off the test goroutine.
func (fx *fixture) fetch(path string, header http.Header) (*http.Response, []byte, error) {
	return fx.do(http.MethodGet, path, header, nil)
}

// do sends a request through Envoy and reads the whole response body; a status other than
// 200 is an error.
func (fx *fixture) do(method, path string, header http.Header, body []byte) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := fx.open(ctx, method, path, header, body)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, b, fmt.Errorf("%s %s: reading body after %d bytes: %w", method, path, len(b), err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp, b, fmt.Errorf("%s %s: %s: %.200q", method, path, resp.Status, b)
	}
	return resp, b, nil
}

// open sends a request through Envoy and returns the response with its body unread.
func (fx *fixture) open(ctx context.Context, method, path string, header http.Header, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, fx.proxyURL+path, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := fx.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return resp, nil
}
