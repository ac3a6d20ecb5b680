package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal"

	"github.com/ssetrack/ssetrack/test/harness"
)

// Metric names from ssetrack's contract, and the session header.
const (
	mChunks         = "ssetrack_response_chunks_total"
	mDedup          = "ssetrack_events_deduplicated_total"
	mKinds          = "ssetrack_responses_total"
	mForwarded      = "ssetrack_events_forwarded_total"
	mRedelivered    = "ssetrack_events_redelivered_total"
	mPublished      = "ssetrack_journal_events_published_total"
	mRecordsDropped = "ssetrack_journal_records_dropped_total"
	mRejected       = "ssetrack_journal_rejected_total"
	sessionH        = "Mcp-Session-Id"
)

// TestShippedConfigsValidate checks every shipped Envoy config with `envoy --mode validate`.
func TestShippedConfigsValidate(t *testing.T) {
	bin := harness.EnvoyBin(t)
	for _, f := range envoyConfigs(t) {
		t.Run(filepath.Base(f), func(t *testing.T) { validateEnvoyConfig(t, bin, f) })
	}
}

// TestModeOverride runs the suite through envoy/envoy.yaml: body modes NONE, ssetrack turns
// streaming on for SSE responses with mode_override.
func TestModeOverride(t *testing.T) { runSuite(t, "envoy.yaml") }

// TestStaticStreamed runs the suite through envoy/envoy-streamed.yaml: response body mode
// STREAMED, ssetrack turns streaming off for everything but SSE.
func TestStaticStreamed(t *testing.T) { runSuite(t, "envoy-streamed.yaml") }

// suite lists the cases every Envoy config must pass. They run one after another on one
// fixture, so each can read counter deltas without interference.
var suite = []struct {
	name string
	run  func(t *testing.T, fx *fixture)
}{
	{"LoadedConfig", testLoadedConfig},
	{"ChunkBoundaries", testChunkBoundaries},
	{"ResumeWithLastEventID", testResumeWithLastEventID},
	{"ResumeWithoutLastEventID", testResumeWithoutLastEventID},
	{"ResumeAfterClientDisconnect", testResumeAfterClientDisconnect},
	{"PostThenGet", testPostThenGet},
	{"IDLessEvents", testIDLessEvents},
	{"SessionsIndependent", testSessionsIndependent},
	{"ConcurrentStreams", testConcurrentStreams},
	{"NonSSEBody", testNonSSEBody},
	{"LargeEvent", testLargeEvent},
	{"GzipSSE", testGzipSSE},
	{"Journal", testJournal},
}

func runSuite(t *testing.T, config string) {
	fx := startFixture(t, config)
	for _, c := range suite {
		t.Run(c.name, func(t *testing.T) {
			before := fx.envoy.ExtProcStats(t)
			c.run(t, fx)
			fx.envoy.CheckNoFailOpen(t, before)
		})
	}
	m := fx.ssetrack.Metrics(t)
	var summary []string
	for k, v := range m {
		if strings.HasPrefix(k, "ssetrack_events_") || strings.HasPrefix(k, "ssetrack_responses_") || k == mChunks {
			summary = append(summary, fmt.Sprintf("%s=%v", k, v))
		}
	}
	slices.Sort(summary)
	t.Logf("ssetrack counters after the suite: %s", strings.Join(summary, " "))

	// These two stop ssetrack, so they come last.
	t.Run("ResumeAfterSsetrackRestart", func(t *testing.T) { testResumeAfterRestart(t, fx) })
	t.Run("FailOpenWhenSsetrackIsDown", func(t *testing.T) { testFailOpen(t, fx) })
}

// newSession returns a session id no other test uses.
func newSession(t *testing.T) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "e2e-" + hex.EncodeToString(b[:])
}

func sessionHeader(sid string) http.Header { return http.Header{sessionH: {sid}} }

// numberedEvents returns events with ids 1..n.
func numberedEvents(n int) []harness.Event {
	evs := make([]harness.Event, n)
	for i := range evs {
		evs[i] = harness.Event{ID: strconv.Itoa(i + 1), Data: fmt.Sprintf(`{"n":%d,"text":"event number %d"}`, i+1, i+1)}
	}
	return evs
}

// idSet returns the set of ids.
func idSet(ids ...string) map[string]bool {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// deliveredThrough returns the ids of the blocks of body up to and including the one with
// id last: the events a client that says Last-Event-ID: last already has.
func deliveredThrough(body []byte, last string) []string {
	var ids []string
	for _, bl := range splitBlocks(body) {
		if !bl.hasID || !bl.complete {
			continue
		}
		ids = append(ids, bl.id)
		if bl.id == last {
			return ids
		}
	}
	return nil
}

// allIDs returns the ids of the complete blocks of body.
func allIDs(body []byte) []string {
	var ids []string
	for _, bl := range splitBlocks(body) {
		if bl.hasID && bl.complete {
			ids = append(ids, bl.id)
		}
	}
	return ids
}

func expectBody(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: body differs from the expected bytes: %s", what, diffStreams(got, want))
	}
}

// expectDelta checks that a counter grew by want between two snapshots.
func expectDelta(t *testing.T, name string, before, after harness.Metrics, want float64) {
	t.Helper()
	if got := after.Sum(name) - before.Sum(name); got != want {
		t.Errorf("%s grew by %v, want %v", name, got, want)
	}
}

// (a) Events cut into chunks at every kind of boundary arrive byte-identical, and the body
// really went through ssetrack.
func testChunkBoundaries(t *testing.T, fx *fixture) {
	body := []byte("\xEF\xBB\xBF: stream start\r\n" +
		"retry: 1500\r\n\r\n" +
		"id: a1\r\nevent: greet\r\ndata: hello\r\ndata: world\r\n\r\n" +
		"id: a2\ndata:no-space\n\n" +
		"id: a3\rdata: lone cr\r\r" +
		": a comment\ndata: id-less\n\n" +
		"id: a4\ndata: last\n\n")
	at := func(s string, off int) int {
		i := bytes.Index(body, []byte(s))
		if i < 0 {
			t.Fatalf("%q not in body", s)
		}
		return i + off
	}
	cases := []struct {
		name        string
		cuts        []int
		contentType string
		tail        string
	}{
		{name: "InsideBOM", cuts: []int{1, 2}},
		{name: "InsideFieldName", cuts: []int{at("event:", 2), at("data: hello", 2), at("id: a2", 1)}},
		{name: "AfterColon", cuts: []int{at("data: hello", 5), at("data:no-space", 5), at("id: a3", 3)}},
		{name: "InsideCRLF", cuts: []int{at("id: a1\r\n", 7), at("data: hello\r\n", 12)}},
		{name: "BetweenBlankLineNewlines", cuts: []int{at("world\r\n\r\n", 7), at("no-space\n\n", 9), at("lone cr\r\r", 8)}},
		{name: "InsideBlankLineCRLF", cuts: []int{at("world\r\n\r\n", 8)}},
		{name: "LoneCRBeforeChunkEnd", cuts: []int{at("id: a3\r", 7)}},
		{name: "CharsetParam", cuts: []int{at("data: hello", 2), at("world\r\n\r\n", 7)}, contentType: "text/event-stream; charset=utf-8"},
		{name: "PartialTailAtEnd", cuts: []int{at("id: a4", 3)}, tail: "id: a5\ndata: never finish"},
		{name: "OneBytePerChunk", cuts: harness.EveryCut(len(body), 1)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := append(slices.Clip(body), c.tail...)
			rep := harness.Reply{Body: b, Cuts: c.cuts, Pause: 2 * time.Millisecond}
			if c.contentType != "" {
				rep.Header = http.Header{"Content-Type": {c.contentType}}
			}
			path := fx.up.Static(rep)
			before := fx.ssetrack.Metrics(t)
			_, got := fx.get(t, path, sessionHeader(newSession(t)))
			expectBody(t, "stream", got, b)
			if ev, want := parseClient(got), parseClient(b); !slices.Equal(ev, want) {
				t.Errorf("client saw events %q, want %q", ev, want)
			}
			after := fx.ssetrack.Metrics(t)
			if d := after.Sum(mChunks) - before.Sum(mChunks); d < 1 {
				t.Errorf("%s grew by %v: the SSE body did not go through ssetrack", mChunks, d)
			}
		})
	}
}

// (b) A resume with Last-Event-ID, where the upstream replays events the client already
// has, delivers each event once. The session id is assigned by the upstream on the first
// response, as an MCP server does.
func testResumeWithLastEventID(t *testing.T, fx *fixture) {
	sid := newSession(t)
	evs := numberedEvents(8)
	const lastID, overlap = "3", 2
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		hdr := http.Header{sessionH: {sid}}
		if n == 0 {
			b := harness.EncodeAll(evs[:5])
			return harness.Reply{Header: hdr, Body: b, Cuts: harness.EveryCut(len(b), 7)}
		}
		b := harness.EncodeAll(harness.ResumeFrom(evs, r.Header.Get("Last-Event-ID"), overlap))
		return harness.Reply{Header: hdr, Body: b, Cuts: harness.EveryCut(len(b), 5)}
	})

	resp, got1 := fx.get(t, path, nil)
	if g := resp.Header.Get(sessionH); g != sid {
		t.Fatalf("response %s = %q, want %q", sessionH, g, sid)
	}
	sent := fx.up.Sent(path)
	expectBody(t, "first stream", got1, sent[0])

	before := fx.ssetrack.Metrics(t)
	resp2, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {lastID}})
	sent = fx.up.Sent(path)
	drop := deliveredThrough(got1, lastID)
	if len(drop) == 0 {
		t.Fatalf("the first stream did not deliver id %s", lastID)
	}
	want := without(sent[1], idSet(drop...))
	expectBody(t, "resumed stream", got2, want)
	if len(sent[1]) == len(want) {
		t.Fatalf("test bug: the upstream replayed no overlap")
	}
	// The client said it has only up to 3 of the 5 the gateway delivered. If
	// ssetrack replayed 4 and 5 from JetStream (the bytes are the same), the
	// upstream's own 4 and 5 were dropped too.
	replayed := 0
	if resp2.Header.Get("Ssetrack-Replay") == "replayed" {
		replayed = len(allIDs(got1)) - len(drop)
	}
	upstreamDelivered := len(allIDs(got2)) - replayed
	expectDelta(t, mDedup, before, fx.ssetrack.Metrics(t), float64(len(allIDs(sent[1]))-upstreamDelivered))
}

// (c) The same resume without Last-Event-ID (a new request in the same session): every id
// already delivered in the session is dropped.
func testResumeWithoutLastEventID(t *testing.T, fx *fixture) {
	sid := newSession(t)
	evs := numberedEvents(8)
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			b := harness.EncodeAll(evs[:5])
			return harness.Reply{Body: b, Cuts: harness.EveryCut(len(b), 11)}
		}
		// No Last-Event-ID: this upstream starts over.
		b := harness.EncodeAll(harness.ResumeFrom(evs, r.Header.Get("Last-Event-ID"), 0))
		return harness.Reply{Body: b, Cuts: harness.EveryCut(len(b), 13)}
	})
	_, got1 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "first stream", got1, fx.up.Sent(path)[0])

	before := fx.ssetrack.Metrics(t)
	_, got2 := fx.get(t, path, sessionHeader(sid))
	sent := fx.up.Sent(path)
	want := without(sent[1], idSet(allIDs(got1)...))
	expectBody(t, "second stream", got2, want)
	expectDelta(t, mDedup, before, fx.ssetrack.Metrics(t), float64(len(allIDs(got1))))
}

// (d) Events without ids are never dropped, even when their bytes repeat.
func testIDLessEvents(t *testing.T, fx *fixture) {
	sid := newSession(t)
	evs := []harness.Event{{Data: "ping"}, {Data: "ping"}, {ID: "x1", Data: "one"}, {Data: "ping"}, {ID: "x2", Data: "two"}, {Data: "tick"}}
	body := harness.EncodeAll(evs)
	path := fx.up.Static(harness.Reply{Body: body, Cuts: harness.EveryCut(len(body), 4)})

	_, got1 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "first stream", got1, body)
	_, got2 := fx.get(t, path, sessionHeader(sid))
	want := without(body, idSet("x1", "x2"))
	expectBody(t, "second stream", got2, want)
	if n := len(parseClient(got2)); n != 4 {
		t.Errorf("client saw %d events on the second stream, want the 4 id-less ones", n)
	}
}

// (e) Two sessions with the same event ids do not affect each other. Their ids differ only
// in characters that are special in NATS subjects.
func testSessionsIndependent(t *testing.T, fx *fixture) {
	base := newSession(t)
	a, b := base+".a *", base+".a >"
	body := harness.EncodeAll(numberedEvents(5))
	path := fx.up.Static(harness.Reply{Body: body, Cuts: harness.EveryCut(len(body), 9)})

	_, gotA := fx.get(t, path, sessionHeader(a))
	expectBody(t, "session A", gotA, body)
	_, gotB := fx.get(t, path, sessionHeader(b))
	expectBody(t, "session B", gotB, body)
	// Session A still remembers its ids; B's stream did not change that.
	_, gotA2 := fx.get(t, path, sessionHeader(a))
	expectBody(t, "session A again", gotA2, without(body, idSet(allIDs(body)...)))
}

// (f) 100 concurrent sessions, each with a stream and a resume that replays an overlap.
func testConcurrentStreams(t *testing.T, fx *fixture) {
	const streams, events, lastID, overlap = 100, 12, "4", 3
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(i), 42))
			evs := numberedEvents(events)
			randomCuts := func(size int) []int {
				var cuts []int
				for c := rng.IntN(20) + 1; c < size; c += rng.IntN(40) + 1 {
					cuts = append(cuts, c)
				}
				return cuts
			}
			var mu sync.Mutex
			path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
				mu.Lock()
				defer mu.Unlock()
				var b []byte
				if n == 0 {
					b = harness.EncodeAll(evs[:8])
				} else {
					b = harness.EncodeAll(harness.ResumeFrom(evs, r.Header.Get("Last-Event-ID"), overlap))
				}
				return harness.Reply{Body: b, Cuts: randomCuts(len(b)), Pause: time.Millisecond}
			})
			sid := fmt.Sprintf("%s-%d", newSession(t), i)
			_, got1, err := fx.fetch(path, sessionHeader(sid))
			if err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			if sent := fx.up.Sent(path)[0]; !bytes.Equal(got1, sent) {
				errs <- fmt.Errorf("stream %d, first request: %s", i, diffStreams(got1, sent))
				return
			}
			_, got2, err := fx.fetch(path, http.Header{sessionH: {sid}, "Last-Event-Id": {lastID}})
			if err != nil {
				errs <- fmt.Errorf("stream %d, resume: %w", i, err)
				return
			}
			want := without(fx.up.Sent(path)[1], idSet(deliveredThrough(got1, lastID)...))
			if !bytes.Equal(got2, want) {
				errs <- fmt.Errorf("stream %d, resume: %s", i, diffStreams(got2, want))
			}
		})
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 5 {
			t.Error(err)
		}
	}
	if n > 5 {
		t.Errorf("... and %d more failed streams", n-5)
	}
}

// (g) A 1 MiB non-SSE body passes byte-identical and is never sent to ssetrack.
func testNonSSEBody(t *testing.T, fx *fixture) {
	body := make([]byte, 1<<20)
	rng := mrand.NewChaCha8([32]byte{7})
	_, _ = rng.Read(body)
	path := fx.up.Static(harness.Reply{
		Header: http.Header{"Content-Type": {"application/octet-stream"}, "Content-Length": {strconv.Itoa(len(body))}},
		Body:   body,
		Cuts:   harness.EveryCut(len(body), 64<<10),
	})
	sBefore, eBefore := fx.ssetrack.Metrics(t), fx.envoy.ExtProcStats(t)
	_, got := fx.get(t, path, sessionHeader(newSession(t)))
	if !bytes.Equal(got, body) {
		t.Errorf("body differs: got %d bytes, want %d", len(got), len(body))
	}
	sAfter, eAfter := fx.ssetrack.Metrics(t), fx.envoy.ExtProcStats(t)
	expectDelta(t, mChunks, sBefore, sAfter, 0)
	expectDelta(t, mKinds+`{kind="passthrough"}`, sBefore, sAfter, 1)
	// One ext_proc stream carrying the request headers and the response headers, nothing
	// else: a body chunk would be a third message.
	if d := eAfter.Sub(eBefore, "streams_started"); d != 1 {
		t.Errorf("envoy ext_proc streams_started grew by %v, want 1", d)
	}
	if d := eAfter.Sub(eBefore, "stream_msgs_sent"); d > 2 {
		t.Errorf("envoy sent %v ext_proc messages for a header-only exchange, want at most 2: the body went to ssetrack", d)
	}
}

// (h) A 3 MB event (beyond any sensible event size limit) passes untouched, and the stream
// goes on after it.
func testLargeEvent(t *testing.T, fx *fixture) {
	data := make([]byte, 3_000_000)
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	rng := mrand.New(mrand.NewPCG(3, 3))
	for i := range data {
		data[i] = letters[rng.IntN(len(letters))]
	}
	var body []byte
	body = append(body, "id: before\ndata: small\n\n"...)
	body = append(body, "id: big\ndata: "...)
	body = append(body, data...)
	body = append(body, "\n\nid: after\ndata: still streaming\n\n"...)
	path := fx.up.Static(harness.Reply{Body: body, Cuts: harness.EveryCut(len(body), 64<<10)})
	_, got := fx.get(t, path, sessionHeader(newSession(t)))
	if !bytes.Equal(got, body) {
		t.Errorf("stream with a 3 MB event: %s", diffStreams(got, body))
	}
	if evs := parseClient(got); len(evs) != 3 || len(evs[1].data) != len(data) {
		t.Errorf("client saw %d events, want 3 with the 3 MB one in the middle", len(evs))
	}
}

// (i) Gzip-encoded SSE passes untouched: ssetrack cannot parse it and must not touch it,
// so even a repeat in the same session is delivered whole.
func testGzipSSE(t *testing.T, fx *fixture) {
	plain := harness.EncodeAll(numberedEvents(20))
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = zw.Write(plain)
	_ = zw.Close()
	gz := zb.Bytes()
	path := fx.up.Static(harness.Reply{
		Header: http.Header{"Content-Encoding": {"gzip"}},
		Body:   gz,
		Cuts:   harness.EveryCut(len(gz), 50),
	})
	sid := newSession(t)
	before := fx.ssetrack.Metrics(t)
	for i := range 2 {
		resp, got := fx.get(t, path, sessionHeader(sid))
		if ce := resp.Header.Get("Content-Encoding"); ce != "gzip" {
			t.Errorf("request %d: Content-Encoding %q, want gzip", i, ce)
		}
		if !bytes.Equal(got, gz) {
			t.Errorf("request %d: gzip body differs: got %d bytes, want %d", i, len(got), len(gz))
			continue
		}
		zr, err := gzip.NewReader(bytes.NewReader(got))
		if err != nil {
			t.Fatal(err)
		}
		if un, err := io.ReadAll(zr); err != nil || !bytes.Equal(un, plain) {
			t.Errorf("request %d: gunzipped body differs (%v)", i, err)
		}
	}
	after := fx.ssetrack.Metrics(t)
	expectDelta(t, mChunks, before, after, 0)
	expectDelta(t, mKinds+`{kind="encoded"}`, before, after, 2)
}

// The settings that bite (DESIGN.md, "Envoy facts that bite") are in the config Envoy
// actually loaded.
func testLoadedConfig(t *testing.T, fx *fixture) {
	b := fx.envoy.Admin(t, "/config_dump")
	var dump any
	if err := json.Unmarshal(b, &dump); err != nil {
		t.Fatal(err)
	}
	var routes, hcms, extprocs []map[string]any
	walkJSON(dump, func(m map[string]any) {
		if m["cluster"] == "upstream" {
			routes = append(routes, m)
		}
		if m["stat_prefix"] == "ingress_http" {
			hcms = append(hcms, m)
		}
		if ty, _ := m["@type"].(string); strings.HasSuffix(ty, ".ext_proc.v3.ExternalProcessor") {
			extprocs = append(extprocs, m)
		}
	})
	// The listener appears both in the bootstrap and in the listener dump.
	if len(routes) == 0 || len(hcms) == 0 || len(extprocs) == 0 {
		t.Fatalf("config dump: found %d routes to upstream, %d connection managers, %d ext_proc filters", len(routes), len(hcms), len(extprocs))
	}
	for _, r := range routes {
		if v := r["timeout"]; v != "0s" {
			t.Errorf("route timeout = %v, want 0s (the 15s default cuts SSE streams)", v)
		}
	}
	for _, h := range hcms {
		if v := h["stream_idle_timeout"]; v != "0s" {
			t.Errorf("stream_idle_timeout = %v, want 0s", v)
		}
	}
	for _, e := range extprocs {
		for _, k := range []string{"allow_mode_override", "failure_mode_allow"} {
			if e[k] != true {
				t.Errorf("ext_proc %s = %v, want true", k, e[k])
			}
		}
	}
}

// walkJSON calls f for every object in v.
func walkJSON(v any, f func(map[string]any)) {
	switch v := v.(type) {
	case map[string]any:
		f(v)
		for _, c := range v {
			walkJSON(c, f)
		}
	case []any:
		for _, c := range v {
			walkJSON(c, f)
		}
	}
}

// A client that goes away mid-stream and resumes with the id of the last event it got
// receives each event once, although the upstream replays an overlap.
func testResumeAfterClientDisconnect(t *testing.T, fx *fixture) {
	sid := newSession(t)
	evs := numberedEvents(8)
	const overlap = 2
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			// Three events, then the stream stays open until the client leaves.
			b := harness.EncodeAll(evs[:3])
			return harness.Reply{Body: b, Cuts: harness.EveryCut(len(b), 10), Hold: true}
		}
		b := harness.EncodeAll(harness.ResumeFrom(evs, r.Header.Get("Last-Event-ID"), overlap))
		return harness.Reply{Body: b, Cuts: harness.EveryCut(len(b), 10)}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	resp, err := fx.open(ctx, http.MethodGet, path, sessionHeader(sid), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var got1 []byte
	buf := make([]byte, 4096)
	for {
		sent := fx.up.Sent(path)
		if len(sent) == 1 && len(got1) >= len(sent[0]) {
			break
		}
		n, err := resp.Body.Read(buf)
		got1 = append(got1, buf[:n]...)
		if err != nil {
			cancel()
			t.Fatalf("reading the first stream after %d bytes: %v", len(got1), err)
		}
	}
	cancel() // the client goes away
	resp.Body.Close()
	expectBody(t, "first stream", got1, fx.up.Sent(path)[0])
	ids := allIDs(got1)
	last := ids[len(ids)-1]

	_, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {last}})
	want := without(fx.up.Sent(path)[1], idSet(deliveredThrough(got1, last)...))
	expectBody(t, "resumed stream", got2, want)
}

// An MCP client: POST (initialize) answered with an SSE stream and a new mcp-session-id,
// then a GET stream in that session on which the upstream repeats the POST's events.
func testPostThenGet(t *testing.T, fx *fixture) {
	sid := newSession(t)
	evs := numberedEvents(6)
	reqBody := []byte(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`)
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			return harness.Reply{Header: http.Header{sessionH: {sid}}, Body: harness.EncodeAll(evs[:3])}
		}
		return harness.Reply{Body: harness.EncodeAll(evs)}
	})
	resp, got1, err := fx.do(http.MethodPost, path, http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json, text/event-stream"}}, reqBody)
	if err != nil {
		t.Fatal(err)
	}
	if g := resp.Header.Get(sessionH); g != sid {
		t.Fatalf("response %s = %q, want %q", sessionH, g, sid)
	}
	if rb := fx.up.Received(path)[0]; !bytes.Equal(rb, reqBody) {
		t.Errorf("upstream received request body %q, want %q", rb, reqBody)
	}
	expectBody(t, "POST stream", got1, fx.up.Sent(path)[0])

	_, got2 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "GET stream", got2, without(fx.up.Sent(path)[1], idSet(allIDs(got1)...)))
}

// journalEnabled reports whether ssetrack runs with its journal (E2E_SSETRACK_ARGS can turn
// it off while it is being debugged).
func journalEnabled() bool {
	return !strings.Contains(os.Getenv("E2E_SSETRACK_ARGS"), "--journal=false")
}

// The events delivered in a session, and only those (no dropped duplicate), reach
// JetStream, in order, on the session's subject, readable by any NATS client.
func testJournal(t *testing.T, fx *fixture) {
	if !journalEnabled() {
		t.Skip("E2E_SSETRACK_ARGS has --journal=false")
	}
	sid := newSession(t) + ".with *special> chars"
	evs := numberedEvents(8)
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			return harness.Reply{Body: harness.EncodeAll(evs[:5])}
		}
		return harness.Reply{Body: harness.EncodeAll(evs)}
	})
	_, got1 := fx.get(t, path, sessionHeader(sid))
	_, got2 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "second stream", got2, without(fx.up.Sent(path)[1], idSet(allIDs(got1)...)))
	want := append(slices.Clip(got1), got2...)

	js := harness.JetStream(t, fx.ssetrack.NATSURL)
	subject := journal.Subject("", sid)
	// Batches are published asynchronously: read until they are all there.
	var stored []byte
	var msgs int
	harness.WaitUntil(t, 20*time.Second, func() error {
		var err error
		stored, msgs, err = harness.ReadSubject(js, journal.DefaultStream, subject)
		if err != nil {
			return fmt.Errorf("read %s from stream %s: %w", subject, journal.DefaultStream, err)
		}
		if len(stored) < len(want) {
			return fmt.Errorf("journal of the session (subject %s): %s", subject, diffStreams(stored, want))
		}
		return nil
	})
	if !bytes.Equal(stored, want) {
		t.Errorf("journal of the session (subject %s): %s", subject, diffStreams(stored, want))
	}
	t.Logf("journal: %d bytes in %d messages on %s", len(stored), msgs, subject)
}

// waitStored waits (bounded) until the session's subject holds at least want events
// (complete blocks), and returns what it holds.
func waitStored(t *testing.T, js jetstream.JetStream, sid string, want int, bound time.Duration) []byte {
	t.Helper()
	var data []byte
	subject := journal.Subject(journal.DefaultSubjectPrefix, sid)
	harness.WaitUntil(t, bound, func() error {
		var err error
		// A read can fail for a moment (a JetStream cluster electing a
		// leader answers "no responders"): try again until the bound.
		if data, _, err = harness.ReadSubject(js, journal.DefaultStream, subject); err != nil {
			return fmt.Errorf("read %s from stream %s: %w", subject, journal.DefaultStream, err)
		}
		if n := len(allIDs(data)); n < want {
			return fmt.Errorf("JetStream holds %d events of session %s, want %d", n, sid, want)
		}
		return nil
	})
	return data
}

// Session state survives an ssetrack restart (it lives in JetStream; the in-memory table
// is a cache): after SIGTERM (a clean shutdown that drains the journal) and a restart on
// the same data directory, a resume still drops what was delivered before.
func testResumeAfterRestart(t *testing.T, fx *fixture) {
	if !journalEnabled() {
		t.Skip("E2E_SSETRACK_ARGS has --journal=false: no state survives a restart")
	}
	sid := newSession(t)
	evs := numberedEvents(8)
	const lastID, overlap = "3", 2
	path := fx.up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			return harness.Reply{Body: harness.EncodeAll(evs[:5])}
		}
		return harness.Reply{Body: harness.EncodeAll(harness.ResumeFrom(evs, r.Header.Get("Last-Event-ID"), overlap))}
	})
	_, got1 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "first stream", got1, fx.up.Sent(path)[0])

	fx.ssetrack.Restart(t)

	before := fx.envoy.ExtProcStats(t)
	_, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {lastID}})
	expectBody(t, "resume after restart", got2, without(fx.up.Sent(path)[1], idSet(deliveredThrough(got1, lastID)...)))
	_, got3 := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "new stream after restart", got3, without(fx.up.Sent(path)[2], idSet(allIDs(fx.up.Sent(path)[2])...)))
	fx.envoy.CheckNoFailOpen(t, before)
}

// With ssetrack gone, Envoy fails open (failure_mode_allow: true): streams pass untouched.
func testFailOpen(t *testing.T, fx *fixture) {
	fx.ssetrack.Stop(t)
	body := harness.EncodeAll(numberedEvents(5))
	path := fx.up.Static(harness.Reply{Body: body, Cuts: harness.EveryCut(len(body), 16)})
	before := fx.envoy.ExtProcStats(t)
	sid := newSession(t)
	for i := range 2 {
		_, got := fx.get(t, path, sessionHeader(sid))
		expectBody(t, fmt.Sprintf("request %d without ssetrack", i), got, body)
	}
	after := fx.envoy.ExtProcStats(t)
	if after.Sub(before, "failure_mode_allowed") < 1 {
		t.Errorf("envoy ext_proc failure_mode_allowed did not grow with ssetrack down; stats: %v", after)
	}
}
