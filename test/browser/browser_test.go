// Package browser tests the demo page (`ssetrack demo-upstream`, GET /demo/) in a real
// headless Chromium, driven through the DevTools protocol by github.com/chromedp/chromedp,
// with the page served through a real Envoy in front of a real ssetrack, as `make demo`
// and the compose demo serve it.
//
// It is a Go module of its own so that chromedp stays out of ssetrack's module; it uses
// test/harness from the main module through a replace directive.
//
// Environment: CHROMIUM_BIN names the browser (test/browser/chromium.sh prints it, installing
// Debian's chromium package if needed; `make test-browser` does both). Without a browser the
// test skips loudly, and with CI=true it fails. BROWSER_SCREENSHOT=file.png saves a PNG of
// the page after the resume. The harness's variables (ENVOY_BIN, E2E_LOGS, ...) apply.
package browser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/ssetrack/ssetrack/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// overlap is how many events the demo upstream repeats before the one after Last-Event-ID:
// the duplicates ssetrack must drop on each resume.
const overlap = 3

// chromiumBin returns the browser to drive: $CHROMIUM_BIN, else chromium on PATH. Without one
// the test skips loudly, or fails when CI is set.
func chromiumBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("CHROMIUM_BIN")
	if bin == "" {
		for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
			if p, err := exec.LookPath(name); err == nil {
				bin = p
				break
			}
		}
	}
	if bin != "" {
		if _, err := os.Stat(bin); err == nil {
			return bin
		}
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("CI=true and no Chromium (CHROMIUM_BIN=%q): run test/browser/chromium.sh (make test-browser does)", bin)
	}
	t.Skipf("SKIPPING: NO CHROMIUM (CHROMIUM_BIN=%q): run test/browser/chromium.sh or make test-browser", bin)
	return ""
}

// TestDemoPageResume starts ssetrack, the demo upstream and Envoy with the flags `make demo`
// gives them, checks the page (checkPage), and checks that ssetrack's own /metrics agree
// with what the page shows.
func TestDemoPageResume(t *testing.T) {
	chrome := chromiumBin(t)
	bin := harness.SsetrackBin(t)
	s := harness.StartSsetrack(t, harness.SsetrackOptions{Bin: bin, LogLevel: "info",
		Args: []string{"--session-cookie", "demo_session"}})
	upPort := harness.FreePorts(t, 1)[0]
	up := harness.Start(t, "upstream", exec.Command(bin, "demo-upstream",
		"--listen", harness.Addr(upPort), "--interval", "100ms", "--overlap", strconv.Itoa(overlap),
		"--metrics-url", s.MetricsURL+"/metrics"))
	up.WaitHTTP(t, "http://"+harness.Addr(upPort)+"/healthz")
	e := harness.StartEnvoy(t, harness.EnvoyOptions{UpstreamPort: upPort, ExtProcPort: s.GRPCPort})
	envoyBefore := e.ExtProcStats(t)
	before := s.Metrics(t)

	checkPage(t, chrome, e.ProxyURL+"/demo/")

	after := s.Metrics(t)
	if d := after.Sum("ssetrack_events_deduplicated_total") - before.Sum("ssetrack_events_deduplicated_total"); d != overlap {
		t.Errorf("ssetrack dropped %v duplicates, want %d (the upstream's --overlap)", d, overlap)
	}
	if d := after.Sum(`ssetrack_resumes_total{result="matched"}`) - before.Sum(`ssetrack_resumes_total{result="matched"}`); d != 1 {
		t.Errorf("ssetrack matched %v resumes, want 1", d)
	}
	e.CheckNoFailOpen(t, envoyBefore)
}

// pageAddress finds the page's address in cmd/demo's output.
var pageAddress = regexp.MustCompile(`In a browser: (http://\S+/demo/)`)

// TestMakeDemoPage runs cmd/demo as `make demo` does, checks the page at the address it
// prints (checkPage), then stops it with SIGTERM, which must end it cleanly.
func TestMakeDemoPage(t *testing.T) {
	chrome := chromiumBin(t)
	envoy := harness.EnvoyBin(t)
	bin := harness.SsetrackBin(t)
	demo := filepath.Join(t.TempDir(), "demo")
	build := exec.Command("go", "build", "-o", demo, "./cmd/demo")
	build.Dir = harness.Root(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/demo: %v\n%s", err, out)
	}
	p := harness.Start(t, "demo", exec.Command(demo, "--ssetrack", bin, "--envoy", envoy,
		"--events", "3", "--resume-events", "3", "--interval", "100ms", "--overlap", strconv.Itoa(overlap)))
	var page string
	harness.WaitUntil(t, harness.StartTimeout, func() error {
		if m := pageAddress.FindStringSubmatch(p.Output()); m != nil {
			page = m[1]
			return nil
		}
		if p.Exited() {
			t.Fatalf("cmd/demo exited (%v) without serving the page:\n%s", p.Err(), p.Output())
		}
		return errors.New("cmd/demo has not printed the page's address yet")
	})

	checkPage(t, chrome, page)

	if err := p.Stop(); err != nil {
		t.Errorf("cmd/demo did not exit cleanly on SIGTERM while serving the page: %v", err)
	}
}

// checkPage opens the demo page in a headless Chromium, lets it receive events, presses
// "Drop connection" and checks that the browser's EventSource reconnected (with
// Last-Event-ID) and that the page then shows every id exactly once, in order: the
// upstream's repeats of the events before that id were dropped by ssetrack, which reads the
// session from the page's cookie. The page's ssetrack counters must say so too; they count
// every session, so nothing else may stream meanwhile.
func checkPage(t *testing.T, chrome, page string) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.WindowSize(1100, 1200),
		chromedp.Flag("disable-dev-shm-usage", true), // containers often have a small /dev/shm
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	defer cancelTab()

	// A JavaScript error on the page fails the test. The listener runs in chromedp's reading
	// loop, which may outlive the test: it only records, and the test reports at its end.
	var jsErrs struct {
		sync.Mutex
		list []string
	}
	err := chromedp.Listen(ctx, func(ev any) {
		if ex, ok := ev.(*runtime.EventExceptionThrown); ok {
			jsErrs.Lock()
			d := ex.ExceptionDetails
			msg := d.Text
			if d.Exception != nil && d.Exception.Description != "" {
				msg += " " + d.Exception.Description
			}
			jsErrs.list = append(jsErrs.list, fmt.Sprintf("%s (line %d)", msg, d.LineNumber+1))
			jsErrs.Unlock()
		}
	})
	if err != nil {
		t.Fatalf("start %s: %v", chrome, err)
	}
	defer func() {
		jsErrs.Lock()
		defer jsErrs.Unlock()
		for _, msg := range jsErrs.list {
			t.Errorf("page: uncaught exception: %s", msg)
		}
	}()

	if err := chromedp.Do(ctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("open %s: %v", page, err)
	}
	waitPage(t, ctx, "the page receives 5 events", `document.querySelectorAll("#events li").length >= 5`)

	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("drop"))); err != nil {
		t.Fatalf("click Drop connection: %v", err)
	}
	waitPage(t, ctx, "the browser reconnects", `document.getElementById("reconnects").textContent === "1"`)
	atResume := evalPage[int](t, ctx, `document.querySelectorAll("#events li").length`)
	waitPage(t, ctx, "5 events after the reconnect",
		fmt.Sprintf(`document.querySelectorAll("#events li").length >= %d`, atResume+5))
	ids := evalPage[[]string](t, ctx, `[...document.querySelectorAll("#events li")].map(li => li.dataset.id)`)
	for i, id := range ids {
		if id != strconv.Itoa(i+1) {
			t.Fatalf("the page shows ids %s: want each id once, in order, from 1 (position %d is %q); its log:\n%s",
				strings.Join(ids, ","), i+1, id, evalPage[string](t, ctx, `document.getElementById("log").innerText`))
		}
	}
	t.Logf("the page shows ids 1-%d, each once; it resumed after id %d", len(ids), atResume)

	// The page polls the counters once a second: wait for them to show the resume and its
	// dropped repeats (this fails, after the wait, if ssetrack never drops them).
	waitPage(t, ctx, "the page shows ssetrack's counters after the resume",
		fmt.Sprintf(`document.getElementById("m-resumes").textContent === "1" && document.getElementById("m-dedup").textContent === "%d"`, overlap))

	shown := map[string]string{}
	for _, id := range []string{"dups", "gaps", "reconnects", "m-dedup", "m-replays", "m-resumes"} {
		shown[id] = evalPage[string](t, ctx, fmt.Sprintf(`document.getElementById(%q).textContent`, id))
	}
	want := map[string]string{
		"dups": "0", "gaps": "0", "reconnects": "1",
		"m-dedup": strconv.Itoa(overlap), "m-replays": "0", "m-resumes": "1",
	}
	for id, w := range want {
		if shown[id] != w {
			t.Errorf("the page shows #%s = %q, want %q", id, shown[id], w)
		}
	}

	if path := os.Getenv("BROWSER_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot of %s: %s", page, path)
	}
}

// evalPage evaluates a JavaScript expression on the page and decodes its value as a T.
func evalPage[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitPage waits until a JavaScript expression is true on the page, and fails with what the
// page shows if it does not become true within 30 seconds.
func waitPage(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	harness.WaitUntil(t, 30*time.Second, func() error {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err != nil {
			return fmt.Errorf("%s: %v", what, err)
		}
		if !ok {
			text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 3000) : ""`))
			return fmt.Errorf("%s: not yet (%s); the page shows:\n%s", what, expr, text)
		}
		return nil
	})
}
