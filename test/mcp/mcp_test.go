package mcpe2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
	"github.com/ssetrack/ssetrack/test/harness"
)

const (
	// notifications is how many progress notifications the tool sends.
	notifications = 50
	// cutAt is the progress notification the relay passes last before it swallows.
	cutAt = 10
	// swallow is how many events the relay swallows before it drops the connection.
	swallow = 3
	// protocolVersion is the newest MCP version with sessions and resumable streams: from
	// 2026-07-28 on (SEP-2575, which go-sdk v1.8.0 negotiates by default) a stream cannot be
	// resumed with Last-Event-ID, so ssetrack only observes it.
	protocolVersion = "2025-11-25"
)

// TestMCPResume: the SDK's client calls a tool that sends 50 progress notifications, through
// Envoy with ssetrack; the relay passes notification 10, swallows the next events and drops
// the connection. The server has the SDK's event store, so it gives its events ids and
// answers the client's resume (a GET with Last-Event-ID) by replaying after that id.
// ssetrack serves the swallowed events from JetStream first and drops the server's repeats.
// Each notification arrives once, in order, and then the result.
func TestMCPResume(t *testing.T) {
	resumeThroughCut(t, "replayed", swallow)
}

// TestMCPResumeWithoutReplay is TestMCPResume with ssetrack's replay turned off: the server's
// event store alone gives the client the swallowed events again, and ssetrack forwards them
// (the client's Last-Event-ID says it never got them). The client still gets each
// notification once; JetStream must still hold each once.
func TestMCPResumeWithoutReplay(t *testing.T) {
	resumeThroughCut(t, "", 0, "--replay=false")
}

// resumeThroughCut runs the call of TestMCPResume against ssetrack started with args; the
// resume must carry the Ssetrack-Replay header wantReplay, and ssetrack must drop dedups of
// the server's events as duplicates.
func resumeThroughCut(t *testing.T, wantReplay string, dedups float64, args ...string) {
	sys := startSystem(t, mcp.NewMemoryEventStore(nil), args...)
	sess := sys.connect(t)
	sid := sess.ID()
	js := harness.JetStream(t, sys.ssetrack.NATSURL)
	// The relay drops the connection only once the swallowed events are in JetStream, so
	// that ssetrack can replay them whatever the timing.
	sys.relay.beforeDrop = func() error {
		_, err := readStored(js, sid, func(ev []byte) bool {
			p, ok := progressOf(ev)
			return ok && p == cutAt+swallow
		})
		return err
	}
	before := sys.ssetrack.Metrics(t)
	envoyBefore := sys.envoy.ExtProcStats(t)

	res, err := sys.call(t, sess)
	if err != nil {
		t.Fatalf("tools/call: %v", err)
	}
	if got := resultText(res); got != "counted to 50" {
		t.Errorf("tool result %q, want %q", got, "counted to 50")
	}
	sys.checkCut(t)
	if got, want := sys.progressUpTo(t, notifications), seq(1, notifications); !slices.Equal(got, want) {
		t.Errorf("progress notifications received: %v\nwant each of 1..%d once, in order", got, notifications)
	}

	// The client resumed the tools/call stream by itself, with the id of notification 10.
	resumes := sys.client.resumes()
	if len(resumes) != 1 {
		t.Fatalf("resume requests from the client: %+v, want one GET with Last-Event-ID", resumes)
	}
	r := resumes[0]
	if r.lastEventID != sys.relay.passedID {
		t.Errorf("resume Last-Event-ID %q, want the last id the client saw, %q", r.lastEventID, sys.relay.passedID)
	}
	if r.status != http.StatusOK || r.replay != wantReplay {
		t.Errorf("resume answered %d with Ssetrack-Replay %q, want 200 and %q", r.status, r.replay, wantReplay)
	}
	after := sys.ssetrack.Metrics(t)
	// ssetrack matched the GET to the POST's stream by its Last-Event-ID.
	if d := after.Sum(`ssetrack_resumes_total{result="matched"}`) - before.Sum(`ssetrack_resumes_total{result="matched"}`); d != 1 {
		t.Errorf("ssetrack_resumes_total{result=\"matched\"} grew by %v, want 1 (the GET continues the POST's stream)", d)
	}
	wantReplays := 0.0
	if wantReplay == "replayed" {
		wantReplays = 1
	}
	if d := after.Sum(`ssetrack_replays_total{result="replayed"}`) - before.Sum(`ssetrack_replays_total{result="replayed"}`); d != wantReplays {
		t.Errorf("ssetrack_replays_total{result=\"replayed\"} grew by %v, want %v", d, wantReplays)
	}
	// With a replay, the server's repeats of the swallowed events (from its event store)
	// are dropped.
	if d := after.Sum("ssetrack_events_deduplicated_total") - before.Sum("ssetrack_events_deduplicated_total"); d != dedups {
		t.Errorf("ssetrack_events_deduplicated_total grew by %v, want %v (the server's repeats of the swallowed events)", d, dedups)
	}
	sys.envoy.CheckNoFailOpen(t, envoyBefore)

	// JetStream holds every notification once, up to the result: neither the replay nor
	// the server's repeats were stored again.
	stored, err := readStored(js, sid, func(ev []byte) bool { return bytes.Contains(ev, []byte("counted to 50")) })
	if err != nil {
		t.Fatalf("JetStream: %v", err)
	}
	var storedProgress []int
	for _, ev := range stored {
		if p, ok := progressOf(ev); ok {
			storedProgress = append(storedProgress, p)
		}
	}
	if want := seq(1, notifications); !slices.Equal(storedProgress, want) {
		t.Errorf("JetStream holds notifications %v, want each of 1..%d once, in order", storedProgress, notifications)
	}
}

// TestMCPNoEventStore: the same call to a server without an event store. The SDK's server
// then writes its events without ids, so there is nothing to resume from: the SDK's client
// does not reconnect a POST's stream that carried no id, and fails the call with "request
// terminated without response" once the connection drops. ssetrack cannot help either: it
// tracks, dedups and replays events by id only (the events are forwarded and stored, but
// no request ever asks for them). This test holds that documented behaviour.
func TestMCPNoEventStore(t *testing.T) {
	sys := startSystem(t, nil)
	sess := sys.connect(t)
	before := sys.ssetrack.Metrics(t)

	_, err := sys.call(t, sess)
	if err == nil || !strings.Contains(err.Error(), "request terminated without response") {
		t.Fatalf("tools/call returned %v, want the SDK's \"request terminated without response\"", err)
	}
	sys.checkCut(t)
	if sys.relay.passedID != "" {
		t.Errorf("the server without an event store sent event id %q, want none", sys.relay.passedID)
	}
	if got, want := sys.progressUpTo(t, cutAt), seq(1, cutAt); !slices.Equal(got, want) {
		t.Errorf("progress notifications received: %v, want %v (those before the cut)", got, want)
	}
	if resumes := sys.client.resumes(); len(resumes) != 0 {
		t.Errorf("the client sent resume requests %+v, want none", resumes)
	}
	after := sys.ssetrack.Metrics(t)
	if d := after.Sum("ssetrack_replays_total") - before.Sum("ssetrack_replays_total"); d != 0 {
		t.Errorf("ssetrack_replays_total grew by %v, want 0", d)
	}
}

// system is one running chain: SDK client → relay → Envoy (+ ssetrack) → SDK server.
type system struct {
	ssetrack *harness.Ssetrack
	envoy    *harness.Envoy
	relay    *cutRelay
	client   *recorder
	server   *toolServer

	mu       sync.Mutex
	received []int // progress values, in the order the client's handler saw them
}

// startSystem starts the SDK server (with store as its event store, nil for none), ssetrack
// (with the further flags args),
// Envoy with envoy/envoy.yaml and the relay in front of Envoy.
func startSystem(t *testing.T, store mcp.EventStore, args ...string) *system {
	t.Helper()
	harness.EnvoyBin(t) // skip (or fail in CI) before starting anything
	sys := &system{server: startToolServer(t, store)}
	sys.ssetrack = harness.StartSsetrack(t, harness.SsetrackOptions{Args: args})
	sys.envoy = harness.StartEnvoy(t, harness.EnvoyOptions{UpstreamPort: sys.server.port, ExtProcPort: sys.ssetrack.GRPCPort})
	sys.relay = startCutRelay(t, strings.TrimPrefix(sys.envoy.ProxyURL, "http://"), &cutRelay{
		marker: []byte(`"tools/call"`),
		cutAfter: func(event []byte) bool {
			p, ok := progressOf(event)
			return ok && p == cutAt
		},
		swallow: swallow,
	})
	sys.client = &recorder{base: http.DefaultTransport.(*http.Transport).Clone()}
	t.Cleanup(sys.client.base.CloseIdleConnections)
	return sys
}

// connect initializes an MCP session through the relay, at protocolVersion.
func (sys *system) connect(t *testing.T) *mcp.ClientSession {
	t.Helper()
	client := mcp.NewClient(&mcp.Implementation{Name: "ssetrack-test", Version: "v0"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			sys.mu.Lock()
			defer sys.mu.Unlock()
			sys.received = append(sys.received, int(req.Params.Progress))
		},
	})
	transport := &mcp.StreamableClientTransport{
		Endpoint:   "http://" + sys.relay.addr + "/mcp",
		HTTPClient: &http.Client{Transport: sys.client},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, err := client.Connect(ctx, transport, &mcp.ClientSessionOptions{ProtocolVersion: protocolVersion})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { sess.Close() })
	if sess.ID() == "" {
		t.Fatalf("the server assigned no Mcp-Session-Id")
	}
	if v := sess.InitializeResult().ProtocolVersion; v != protocolVersion {
		t.Fatalf("negotiated protocol version %s, want %s", v, protocolVersion)
	}
	return sess
}

// call calls the tool with a progress token and waits for its result.
func (sys *system) call(t *testing.T, sess *mcp.ClientSession) (*mcp.CallToolResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	params := &mcp.CallToolParams{Name: "count"}
	params.SetProgressToken("count-1")
	return sess.CallTool(ctx, params)
}

// checkCut fails t unless the relay swallowed its events and dropped the connection.
func (sys *system) checkCut(t *testing.T) {
	t.Helper()
	// The client may see the connection end before the relay's goroutine has recorded it.
	select {
	case <-sys.relay.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the relay did not drop the tools/call stream")
	}
	var got []int
	for _, ev := range sys.relay.Swallowed() {
		p, _ := progressOf(ev)
		got = append(got, p)
	}
	if want := seq(cutAt+1, cutAt+swallow); !slices.Equal(got, want) {
		t.Fatalf("the relay swallowed notifications %v, want %v", got, want)
	}
}

// progressUpTo returns the progress values the client received, in order, once it has
// received n of them or 30 s have passed. The SDK's client hands notifications to their
// handler in order but on a goroutine of their own, so the call's result may come first.
func (sys *system) progressUpTo(t *testing.T, n int) []int {
	t.Helper()
	var got []int
	_ = waitFor(30*time.Second, func() error {
		sys.mu.Lock()
		defer sys.mu.Unlock()
		got = slices.Clone(sys.received)
		if len(got) < n {
			return fmt.Errorf("%d notifications", len(got))
		}
		return nil
	})
	return got
}

// toolServer is the SDK's streamable HTTP handler on a free port, serving one server with
// the tool "count": it sends notifications progress notifications, pausing after the
// swallowed ones until the client has resumed (or the test ends), then returns "counted to
// 50".
type toolServer struct {
	port    int
	release chan struct{} // closed to let the tool carry on after the cut
	once    sync.Once
}

func startToolServer(t *testing.T, store mcp.EventStore) *toolServer {
	t.Helper()
	ts := &toolServer{release: make(chan struct{})}
	server := mcp.NewServer(&mcp.Implementation{Name: "ssetrack-progress", Version: "v0"}, nil)
	server.AddTool(&mcp.Tool{Name: "count", InputSchema: map[string]any{"type": "object"}},
		func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			token := req.Params.GetProgressToken()
			for i := 1; i <= notifications; i++ {
				if i == cutAt+swallow+1 {
					select {
					case <-ts.release:
					case <-ctx.Done():
						return nil, ctx.Err()
					}
				}
				if err := req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{
					ProgressToken: token, Progress: float64(i), Total: notifications,
				}); err != nil {
					return nil, fmt.Errorf("notify progress %d: %w", i, err)
				}
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "counted to 50"}}}, nil
		})
	handler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
		&mcp.StreamableHTTPOptions{EventStore: store})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ts.port = l.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The client's resume of the tools/call stream lets the tool carry on.
		if r.Method == http.MethodGet && r.Header.Get("Last-Event-ID") != "" {
			ts.carryOn()
		}
		handler.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() {
		ts.carryOn()
		srv.Close()
	})
	return ts
}

func (ts *toolServer) carryOn() { ts.once.Do(func() { close(ts.release) }) }

// recorder is the SDK client's HTTP transport: it records each resume request (a GET with
// Last-Event-ID) and its answer.
type recorder struct {
	base *http.Transport

	mu   sync.Mutex
	gets []resume
}

// resume is one resume request as the client sent it and the answer it got.
type resume struct {
	lastEventID string
	status      int
	replay      string // the Ssetrack-Replay response header
}

func (rec *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := rec.base.RoundTrip(req)
	if id := req.Header.Get("Last-Event-ID"); id != "" {
		r := resume{lastEventID: id}
		if err == nil {
			r.status, r.replay = resp.StatusCode, resp.Header.Get("Ssetrack-Replay")
		}
		rec.mu.Lock()
		rec.gets = append(rec.gets, r)
		rec.mu.Unlock()
	}
	return resp, err
}

func (rec *recorder) resumes() []resume {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return slices.Clone(rec.gets)
}

// resultText returns the text of a tool result's single text content.
func resultText(res *mcp.CallToolResult) string {
	if res == nil || len(res.Content) != 1 {
		return fmt.Sprintf("%+v", res)
	}
	if tc, ok := res.Content[0].(*mcp.TextContent); ok {
		return tc.Text
	}
	return fmt.Sprintf("%+v", res.Content[0])
}

// seq returns from, from+1, ..., to.
func seq(from, to int) []int {
	var s []int
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// readStored reads the session's events from JetStream with the journal's consumer package,
// waiting for new ones, until last returns true for one; it returns the events read (their
// SSE bytes), or an error after 30 s.
func readStored(js jetstream.JetStream, sid string, last func(ev []byte) bool) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, history.DefaultStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", history.DefaultStream, err)
	}
	var evs [][]byte
	for ev, err := range history.NewReader(stream, "").Events(ctx, sid, history.ReadOptions{Follow: true}) {
		if err != nil {
			return evs, fmt.Errorf("read session %q after %d events: %w", sid, len(evs), err)
		}
		evs = append(evs, bytes.Clone(ev.Data))
		if last(ev.Data) {
			return evs, nil
		}
	}
	return evs, fmt.Errorf("read session %q: ended after %d events", sid, len(evs))
}

// waitFor polls cond until it returns nil or timeout passes, for use off the test
// goroutine.
func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
