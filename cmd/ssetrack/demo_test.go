package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// startDemoUpstream runs `ssetrack demo-upstream` in-process until the test ends and waits
// for /healthz; it returns the base URL.
func startDemoUpstream(t *testing.T, args ...string) string {
	t.Helper()
	addr := freeAddr(t)
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, append([]string{"demo-upstream", "--listen", addr}, args...), logs, logs)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo-upstream: %v", err)
		}
		if t.Failed() {
			t.Logf("demo-upstream logs:\n%s", logs.String())
		}
	})
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return "http://" + addr
			}
		}
		select {
		case err := <-done:
			t.Fatalf("demo-upstream exited: %v\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestDemoPageEndpoints checks what the demo page relies on, over real HTTP: the page sets
// the session cookie; a stream of that session does not echo it in Mcp-Session-Id (ssetrack
// must read the cookie); POST /demo/drop ends the stream cleanly; /favicon.ico, which a
// browser fetches with the same cookie, is not a second stream of the session; and
// /demo/ssetrack reports ssetrack's counters read from a real Prometheus exposition.
func TestDemoPageEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	dedup := prometheus.NewCounter(prometheus.CounterOpts{Name: "ssetrack_events_deduplicated_total", Help: "x"})
	replays := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ssetrack_replays_total", Help: "x"}, []string{"result"})
	reg.MustRegister(dedup, replays)
	dedup.Add(3)
	replays.WithLabelValues("replayed").Add(2)
	replays.WithLabelValues("missing").Add(1)
	metrics := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer metrics.Close()

	base := startDemoUpstream(t, "--interval", "10ms", "--metrics-url", metrics.URL)
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Jar: jar, Timeout: 10 * time.Second}

	// The page and its cookie.
	resp, err := client.Get(base + "/demo/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(string(page), "new EventSource(") {
		t.Fatalf("GET /demo/: %s %q, want the page", resp.Status, resp.Header.Get("Content-Type"))
	}
	u, _ := url.Parse(base + "/demo/events")
	if cs := jar.Cookies(u); len(cs) != 1 || cs[0].Name != demoSessionCookie || cs[0].Value == "" {
		t.Fatalf("GET /demo/ set cookies %v, want one %s", cs, demoSessionCookie)
	}

	// A browser's favicon request carries the cookie too: it must not stream.
	resp, err = client.Get(base + "/favicon.ico")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /favicon.ico: %s, want 404 (a second stream of the page's session)", resp.Status)
	}

	// The stream, then a drop.
	resp, err = client.Get(base + "/demo/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got := resp.Header.Get("Mcp-Session-Id"); got != "" {
		t.Errorf("a cookie session's stream carries Mcp-Session-Id: %s; ssetrack would not need the cookie", got)
	}
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if strings.HasPrefix(line, "id: 2") {
			break
		}
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/demo/drop", nil)
	dresp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var dropped struct{ Dropped int }
	json.NewDecoder(dresp.Body).Decode(&dropped)
	dresp.Body.Close()
	if dropped.Dropped != 1 {
		t.Errorf("POST /demo/drop dropped %d streams, want 1", dropped.Dropped)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Errorf("the dropped stream did not end cleanly: %v", err)
	}

	// ssetrack's counters.
	resp, err = client.Get(base + "/demo/ssetrack")
	if err != nil {
		t.Fatal(err)
	}
	var c ssetrackCounters
	err = json.NewDecoder(resp.Body).Decode(&c)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /demo/ssetrack: %s: %v", resp.Status, err)
	}
	if c.EventsDeduplicated != 3 || c.Replays["replayed"] != 2 || c.Replays["missing"] != 1 || c.EventsSeen != 0 {
		t.Errorf("GET /demo/ssetrack = %+v, want 3 deduplicated, replays replayed 2 and missing 1", c)
	}
}
