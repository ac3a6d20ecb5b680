package main

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// demoSessionCookie names the cookie that carries the demo page's session id. The page sets
// it and its EventSource sends it; ssetrack reads it with --session-cookie demo_session.
const demoSessionCookie = "demo_session"

// demoRetry is the reconnection time, in milliseconds, the stream asks browsers for (the SSE
// "retry" field): after a drop, the page's EventSource reconnects this soon.
const demoRetry = 500

// demoPage is the browser page served at /demo/: plain HTML and JavaScript, no build step.
//
//go:embed demo.html
var demoPage []byte

// demoUpstream runs a small SSE server for demos and the compose file. Each stream sends
// numbered events with ids "<n>"; a request with Last-Event-ID continues after that id,
// first repeating --overlap events the client already has, as some upstreams do, so
// ssetrack's dedup has work to show.
//
// It also serves the demo page, for a browser that reaches it through Envoy (the page, its
// stream and its requests then share one origin, so the session cookie goes along):
//
//	GET  /demo/           the page; sets a new demo_session cookie
//	GET  /demo/events     its SSE stream (as / is, for curl; other paths are 404)
//	POST /demo/drop       ends the open streams of the cookie's session from the server
//	                      side; the browser's EventSource then reconnects by itself, with
//	                      Last-Event-ID
//	GET  /demo/ssetrack   ssetrack's counters from --metrics-url, as JSON
func demoUpstream(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo-upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "`address` to serve SSE on")
	interval := fs.Duration("interval", 200*time.Millisecond, "time between events")
	count := fs.Int("count", 0, "end each stream after this many events (0: never)")
	overlap := fs.Int("overlap", 3, "on a resume, repeat this many events before Last-Event-ID")
	metricsURL := fs.String("metrics-url", "", "ssetrack's Prometheus `URL` (http://host:9090/metrics), read for the demo page's counters (empty: the page shows none)")
	fs.Usage = flagUsage(fs, stderr, "ssetrack demo-upstream [flags]")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log := newLogger(stderr, "info", "text")
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	live := &liveStreams{bySession: map[string]map[*context.CancelFunc]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /demo/{$}", serveDemoPage)
	mux.Handle("GET /demo", http.RedirectHandler("/demo/", http.StatusFound))
	mux.HandleFunc("POST /demo/drop", func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(demoSessionCookie)
		if err != nil || c.Value == "" {
			http.Error(w, "no "+demoSessionCookie+" cookie: open /demo/ first", http.StatusBadRequest)
			return
		}
		writeJSON(w, map[string]int{"dropped": live.drop(c.Value)})
	})
	mux.HandleFunc("GET /demo/ssetrack", func(w http.ResponseWriter, r *http.Request) {
		if *metricsURL == "" {
			http.Error(w, "demo-upstream runs without --metrics-url", http.StatusNotFound)
			return
		}
		counters, err := readSsetrackCounters(r.Context(), *metricsURL)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		writeJSON(w, counters)
	})
	// Only these two paths stream: a browser also asks for /favicon.ico with the page's
	// cookie, and a second stream of the same session would share its event ids, so ssetrack
	// would rightly forward each id on only one of them.
	stream := func(w http.ResponseWriter, r *http.Request) {
		serveDemoStream(w, r, log, live, *interval, *count, *overlap)
	}
	mux.HandleFunc("/{$}", stream)
	mux.HandleFunc("/demo/events", stream)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("demo upstream listening", "addr", lis.Addr().String())
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// serveDemoPage serves the page with a new session cookie: each load of the page is a new
// session (a reload does not resume; only the EventSource's own reconnects do).
func serveDemoPage(w http.ResponseWriter, r *http.Request) {
	var b [8]byte
	rand.Read(b[:])
	http.SetCookie(w, &http.Cookie{
		Name:     demoSessionCookie,
		Value:    "page-" + hex.EncodeToString(b[:]),
		Path:     "/",
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
	})
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.Write(demoPage)
}

// liveStreams holds a cancel function for each open stream, by session id, so that
// POST /demo/drop can end a session's streams. Its mutex guards the map; handlers of any
// goroutine add, remove and drop.
type liveStreams struct {
	mu        sync.Mutex
	bySession map[string]map[*context.CancelFunc]bool
}

// add registers a stream's cancel function; the returned function unregisters it.
func (l *liveStreams) add(sid string, cancel context.CancelFunc) (remove func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := &cancel
	if l.bySession[sid] == nil {
		l.bySession[sid] = map[*context.CancelFunc]bool{}
	}
	l.bySession[sid][key] = true
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.bySession[sid], key)
		if len(l.bySession[sid]) == 0 {
			delete(l.bySession, sid)
		}
	}
}

// drop ends the open streams of a session and returns how many there were.
func (l *liveStreams) drop(sid string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for cancel := range l.bySession[sid] {
		(*cancel)()
	}
	return len(l.bySession[sid])
}

func serveDemoStream(w http.ResponseWriter, r *http.Request, log *slog.Logger, live *liveStreams, interval time.Duration, count, overlap int) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	// The session: the request's Mcp-Session-Id, else the page's cookie, else a new one that
	// the response assigns, as an MCP server does. A cookie session is not echoed in a
	// header: ssetrack must find it in the cookie (--session-cookie), as it would for any
	// browser client.
	sid := r.Header.Get("Mcp-Session-Id")
	echo := sid != ""
	if c, err := r.Cookie(demoSessionCookie); sid == "" && err == nil && c.Value != "" {
		sid = c.Value
	}
	if sid == "" {
		var b [12]byte
		rand.Read(b[:])
		sid, echo = hex.EncodeToString(b[:]), true
	}
	next := 1
	lastID, resume := r.Header["Last-Event-Id"]
	if last, err := strconv.Atoi(r.Header.Get("Last-Event-Id")); err == nil && last >= 0 {
		next = max(1, last+1-overlap)
	}
	log.Info("stream", "path", r.URL.Path, "session", sid, "last_event_id", lastID, "resume", resume, "from", next)
	// A drop ends the stream as if the upstream had closed it: the response ends cleanly.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer live.add(sid, cancel)()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	if echo {
		h.Set("Mcp-Session-Id", sid)
	}
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": demo stream\nretry: %d\n\n", demoRetry)
	flusher.Flush()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for n := next; count == 0 || n <= count; n++ {
		fmt.Fprintf(w, "id: %d\nevent: tick\ndata: {\"n\":%d,\"at\":%q}\n\n", n, n, time.Now().UTC().Format(time.RFC3339Nano))
		flusher.Flush()
		select {
		case <-ctx.Done():
			log.Info("stream ended", "session", sid, "last_sent", n, "dropped", r.Context().Err() == nil)
			return
		case <-tick.C:
		}
	}
	slog.Debug("demo stream done", "events", count)
}

// ssetrackCounters is what GET /demo/ssetrack answers: ssetrack's process-wide counters (all
// sessions), summed over their labels, with the labelled ones also by label value.
type ssetrackCounters struct {
	EventsSeen         float64            `json:"events_seen"`
	EventsForwarded    float64            `json:"events_forwarded"`
	EventsDeduplicated float64            `json:"events_deduplicated"`
	StreamsActive      float64            `json:"streams_active"`
	Resumes            map[string]float64 `json:"resumes"` // by result
	Replays            map[string]float64 `json:"replays"` // by result
}

// readSsetrackCounters scrapes ssetrack's /metrics and picks the counters the demo page
// shows. The text is parsed with Prometheus's own parser (prometheus/common/expfmt).
func readSsetrackCounters(ctx context.Context, url string) (*ssetrackCounters, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("read ssetrack metrics: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read ssetrack metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read ssetrack metrics: %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("read ssetrack metrics: %w", err)
	}
	c := &ssetrackCounters{Resumes: map[string]float64{}, Replays: map[string]float64{}}
	sum := func(name string, byLabel map[string]float64) float64 {
		var total float64
		for _, m := range fams[name].GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			total += v
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && byLabel != nil {
					byLabel[l.GetValue()] += v
				}
			}
		}
		return total
	}
	c.EventsSeen = sum("ssetrack_events_seen_total", nil)
	c.EventsForwarded = sum("ssetrack_events_forwarded_total", nil)
	c.EventsDeduplicated = sum("ssetrack_events_deduplicated_total", nil)
	c.StreamsActive = sum("ssetrack_streams_active", nil)
	sum("ssetrack_resumes_total", c.Resumes)
	sum("ssetrack_replays_total", c.Replays)
	return c, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}
