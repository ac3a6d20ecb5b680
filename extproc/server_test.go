package extproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// harness runs a Server behind real gRPC on an in-memory listener.
type harness struct {
	srv    *Server
	client procv3.ExternalProcessorClient
}

func newHarness(tb testing.TB, mutate func(*Config)) *harness {
	tb.Helper()
	table := session.NewTable(session.Config{Window: 1024})
	cfg := Config{Sessions: table, Registerer: prometheus.NewRegistry()}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	// The message size limits of production: the server takes messages up
	// to 64 MiB as cmd/ssetrack's gRPC server does (a 4 MiB cap would
	// reject a large chunk), and the client, standing in for Envoy's own
	// gRPC client (no receive limit), takes answers as large.
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
	procv3.RegisterExternalProcessorServer(gs, srv)
	go gs.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		conn.Close()
		gs.Stop()
		table.Close()
	})
	return &harness{srv: srv, client: procv3.NewExternalProcessorClient(conn)}
}

func headerMap(kv ...string) *corev3.HeaderMap {
	m := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return m
}

// request is one HTTP exchange as Envoy would present it.
type request struct {
	reqHeaders  []string // key, value pairs
	respHeaders []string
	chunks      [][]byte
	observe     bool
}

// result is what ssetrack answered.
type result struct {
	reqResp  *procv3.HeadersResponse
	respResp *procv3.ProcessingResponse
	body     []byte   // what Envoy would forward to the client
	answers  int      // body responses received
	pieces   []string // what Envoy would forward for each chunk
	mutated  int      // answers that replace their chunk
}

func sseHeaders(extra ...string) []string {
	return append([]string{":status", "200", "content-type", "text/event-stream"}, extra...)
}

// run plays req through a new ext_proc stream and applies the answers as
// Envoy does: each body response replaces (or keeps) the chunk it answers.
func (h *harness) run(tb testing.TB, req request) result {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.client.Process(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	send := func(r *procv3.ProcessingRequest) {
		r.ObservabilityMode = req.observe
		if err := stream.Send(r); err != nil {
			tb.Fatal(err)
		}
	}
	recv := func() *procv3.ProcessingResponse {
		r, err := stream.Recv()
		if err != nil {
			tb.Fatal(err)
		}
		return r
	}
	var res result
	send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &procv3.HttpHeaders{Headers: headerMap(append([]string{":method", "GET", ":path", "/mcp"}, req.reqHeaders...)...), EndOfStream: true}}})
	if !req.observe {
		res.reqResp = recv().GetRequestHeaders()
	}
	send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &procv3.HttpHeaders{Headers: headerMap(req.respHeaders...)}}})
	if !req.observe {
		res.respResp = recv()
	}
	for i, c := range req.chunks {
		send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{
			ResponseBody: &procv3.HttpBody{Body: c, EndOfStream: i == len(req.chunks)-1}}})
		if req.observe {
			res.body = append(res.body, c...)
			continue
		}
		br := recv().GetResponseBody()
		if br == nil {
			tb.Fatalf("chunk %d: answer is not a body response", i)
		}
		res.answers++
		piece := c
		if mut := br.GetResponse().GetBodyMutation(); mut != nil {
			piece = mut.GetBody()
			res.mutated++
		}
		res.body = append(res.body, piece...)
		res.pieces = append(res.pieces, string(piece))
	}
	stream.CloseSend()
	// The server ends the stream once it has handled everything; an answer
	// here is one too many (in observability mode, any answer is).
	if r, err := stream.Recv(); err == nil {
		tb.Fatalf("unexpected answer %v", r)
	}
	return res
}

// eventCuts returns the offsets just after each blank line ("\n\n") of s:
// with split, one event per chunk.
func eventCuts(s string) []int {
	var cuts []int
	for i := 0; ; {
		j := strings.Index(s[i:], "\n\n")
		if j < 0 || i+j+2 == len(s) {
			return cuts
		}
		i += j + 2
		cuts = append(cuts, i)
	}
}

// replayHeader is the ssetrack-replay header a response's headers answer
// set, "" if none.
func replayHeader(res result) string {
	for _, o := range res.respResp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if o.GetHeader().GetKey() == headerReplay {
			return string(o.GetHeader().GetRawValue())
		}
	}
	return ""
}

func split(s string, at ...int) [][]byte {
	var out [][]byte
	prev := 0
	for _, a := range at {
		out = append(out, []byte(s[prev:a]))
		prev = a
	}
	return append(out, []byte(s[prev:]))
}

func TestResponseHeadersModes(t *testing.T) {
	h := newHarness(t, nil)
	tests := []struct {
		name       string
		headers    []string
		wantStream bool
	}{
		{"sse", sseHeaders(), true},
		{"sse with charset", []string{":status", "200", "content-type", "Text/Event-Stream; charset=utf-8"}, true},
		{"json", []string{":status", "200", "content-type", "application/json"}, false},
		{"no content type", []string{":status", "200"}, false},
		{"gzip sse", sseHeaders("content-encoding", "gzip"), false},
		{"identity sse", sseHeaders("content-encoding", "identity"), true},
		{"sse error status", []string{":status", "500", "content-type", "text/event-stream"}, false},
		{"lookalike type", []string{":status", "200", "content-type", "text/event-streamx"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := h.run(t, request{respHeaders: tt.headers})
			mode := res.respResp.GetModeOverride()
			if mode == nil {
				t.Fatal("no mode_override")
			}
			streamed := mode.GetResponseBodyMode() == filterv3.ProcessingMode_STREAMED
			if streamed != tt.wantStream {
				t.Errorf("response body mode %v, want streamed=%v", mode.GetResponseBodyMode(), tt.wantStream)
			}
			removed := res.respResp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetRemoveHeaders()
			if tt.wantStream && (len(removed) != 1 || removed[0] != "content-length") {
				t.Errorf("removed headers %q, want content-length", removed)
			}
		})
	}
}

const mcpStream = "id: 1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n" +
	": keep-alive\n\n" +
	"id: 2\r\ndata: line one\r\ndata: line two\r\n\r\n" +
	"data: no id here\n\n" +
	"retry: 1000\n\n" +
	"id: 3\rdata: cr only\r\r" +
	"id: 4\ndata: last\n\n" +
	"data: partial tail"

// TestEverySplitForwardsInput: without a session nothing is dropped, so at
// any split into up to three chunks the client gets the input exactly.
func TestEverySplitForwardsInput(t *testing.T) {
	h := newHarness(t, nil)
	for i := 0; i <= len(mcpStream); i++ {
		for j := i; j <= len(mcpStream); j += 7 {
			res := h.run(t, request{respHeaders: sseHeaders(), chunks: split(mcpStream, i, j)})
			if string(res.body) != mcpStream {
				t.Fatalf("split %d,%d: forwarded\n%q\nwant\n%q", i, j, res.body, mcpStream)
			}
			if res.answers != 3 {
				t.Fatalf("split %d,%d: %d answers for 3 chunks", i, j, res.answers)
			}
		}
	}
}

func TestHoldsPartialEvent(t *testing.T) {
	h := newHarness(t, nil)
	chunks := []string{"id: 1\ndata: a\n\nda", "ta: b\n", "id: 2\n\n", "data: tail"}
	res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: bytesOf(chunks)})
	// The second event names no id before its end: it could be one the
	// client has, so it waits (TestForwardsDecidedPartialEvent has the
	// events that do not).
	want := []string{"id: 1\ndata: a\n\n", "", "data: b\nid: 2\n\n", "data: tail"}
	if fmt.Sprint(res.pieces) != fmt.Sprint(want) {
		t.Errorf("forwarded %q, want %q", res.pieces, want)
	}
}

// TestForwardsDecidedPartialEvent: an event cut across chunks goes on
// before its end once its fate is known, so its chunks pass unchanged.
func TestForwardsDecidedPartialEvent(t *testing.T) {
	first := "id: 1\ndata: a\n\n"
	tests := []struct {
		name    string
		resume  bool // the client resumes after "1", so "1" is a duplicate
		chunks  []string
		want    []string // forwarded for each chunk
		mutated int
	}{
		{name: "first id new", chunks: []string{first + "id: 2\nda", "ta: b\n", "\n"},
			want: []string{first + "id: 2\nda", "ta: b\n", "\n"}},
		{name: "id line split", chunks: []string{"i", "d: 2\r", "\ndata: b\r\n\r\n"},
			want: []string{"", "id: 2\r", "\ndata: b\r\n\r\n"}, mutated: 2},
		{name: "data before id", chunks: []string{"data: b\n", "id: 2\ndata: c\n", "\n"},
			want: []string{"", "data: b\nid: 2\ndata: c\n", "\n"}, mutated: 2},
		{name: "no session", chunks: []string{"data: b\n", "data: c\n", "\n"},
			want: []string{"data: b\n", "data: c\n", "\n"}},
		{name: "first id a duplicate", resume: true, chunks: []string{"id: 1\nda", "ta: a\n", "\nid: 2\n\n"},
			want: []string{"", "", "id: 2\n\n"}, mutated: 3},
		{name: "first id new, last a duplicate", resume: true, chunks: []string{"id: 5\ndata: x\n", "id: 1\n\n"},
			want: []string{"id: 5\ndata: x\n", "id: 1\n\n"}},
		{name: "the same in one chunk", resume: true, chunks: []string{"id: 5\ndata: x\nid: 1\n\n"},
			want: []string{"id: 5\ndata: x\nid: 1\n\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			req := request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: bytesOf(tt.chunks)}
			if tt.name == "no session" {
				req.reqHeaders = nil
			}
			if tt.resume {
				h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(first)})
				req.reqHeaders = append(req.reqHeaders, "last-event-id", "1")
			}
			res := h.run(t, req)
			if fmt.Sprint(res.pieces) != fmt.Sprint(tt.want) {
				t.Errorf("forwarded %q, want %q", res.pieces, tt.want)
			}
			if res.mutated != tt.mutated {
				t.Errorf("%d chunks replaced, want %d", res.mutated, tt.mutated)
			}
		})
	}
}

// bytesOf converts chunks given as strings.
func bytesOf(chunks []string) [][]byte {
	b := make([][]byte, len(chunks))
	for i, c := range chunks {
		b[i] = []byte(c)
	}
	return b
}

func TestDedupAcrossRequests(t *testing.T) {
	h := newHarness(t, nil)
	first := "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n"
	res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(first)})
	if string(res.body) != first {
		t.Fatalf("first stream changed: %q", res.body)
	}
	// The upstream replays from 2 although the client has 3.
	replay := "id: 2\ndata: b\n\n: hi\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n"
	want := ": hi\n\nid: 4\ndata: d\n\n"
	for i := 0; i <= len(replay); i++ {
		h := newHarness(t, nil)
		h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(first)})
		res := h.run(t, request{
			reqHeaders:  []string{"mcp-session-id", "S", "last-event-id", "3"},
			respHeaders: sseHeaders(),
			chunks:      split(replay, i),
		})
		if string(res.body) != want {
			t.Fatalf("split %d: forwarded %q, want %q", i, res.body, want)
		}
	}
	// Another session with the same ids is independent.
	res = h.run(t, request{reqHeaders: []string{"mcp-session-id", "T"}, respHeaders: sseHeaders(), chunks: split(first)})
	if string(res.body) != first {
		t.Errorf("session T lost events: %q", res.body)
	}
	if got := testutil.ToFloat64(h.srv.metrics.eventsDeduped); got != 0 {
		t.Errorf("deduplicated %v in the shared harness, want 0", got)
	}
}

func TestSessionFromResponseHeader(t *testing.T) {
	h := newHarness(t, nil)
	first := "id: 1\ndata: a\n\n"
	h.run(t, request{respHeaders: sseHeaders("mcp-session-id", "assigned"), chunks: split(first)})
	res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "assigned"}, respHeaders: sseHeaders(), chunks: split(first + "id: 2\ndata: b\n\n")})
	if want := "id: 2\ndata: b\n\n"; string(res.body) != want {
		t.Errorf("forwarded %q, want %q", res.body, want)
	}
}

func TestBadInputIsForwarded(t *testing.T) {
	// Each input is forwarded unchanged: nothing in it is a duplicate.
	tests := []struct {
		name  string
		input string
	}{
		{"invalid utf-8", "id: \xff\xfe\ndata: \xc3\x28\n\n"},
		{"nul bytes", "id: a\x00b\ndata: \x00\x00\n\n"},
		{"no newline at all", strings.Repeat("x", 100000)},
		{"only newlines", "\n\n\r\n\r\r\n"},
		{"binary", "\x00\x01\x02\xff\r\n\n:\n\n"},
		{"field without colon", "data\nid\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(tt.input, len(tt.input)/2)})
			if string(res.body) != tt.input {
				t.Errorf("forwarded %q, want the input", res.body)
			}
		})
	}
}

func TestSessionIDs(t *testing.T) {
	stream := "id: 1\ndata: a\n\n"
	tests := []struct {
		name    string
		id      string
		deduped bool // a second identical stream in the same session is dropped
	}{
		{"plain", "abc", true},
		{"dots and wildcards", "a.b.*.>", true},
		{"spaces and unicode", "x y ✓", true},
		{"at the cap", strings.Repeat("s", DefaultMaxSessionID), true},
		{"over the cap: no session", strings.Repeat("s", DefaultMaxSessionID+1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.run(t, request{reqHeaders: []string{"mcp-session-id", tt.id}, respHeaders: sseHeaders(), chunks: split(stream)})
			res := h.run(t, request{reqHeaders: []string{"mcp-session-id", tt.id}, respHeaders: sseHeaders(), chunks: split(stream)})
			if got := len(res.body) == 0; got != tt.deduped {
				t.Errorf("second stream forwarded %q; want deduped=%v", res.body, tt.deduped)
			}
		})
	}
}

func TestStatelessMCPVersionNotDeduplicated(t *testing.T) {
	h := newHarness(t, nil)
	stream := "id: 1\ndata: a\n\n"
	hdr := []string{"mcp-session-id", "S", "mcp-protocol-version", "2026-07-28"}
	h.run(t, request{reqHeaders: hdr, respHeaders: sseHeaders(), chunks: split(stream)})
	res := h.run(t, request{reqHeaders: hdr, respHeaders: sseHeaders(), chunks: split(stream)})
	if string(res.body) != stream {
		t.Errorf("forwarded %q, want the stream untouched", res.body)
	}
}

func TestObservabilityModeNeverMutates(t *testing.T) {
	h := newHarness(t, nil)
	stream := "id: 1\ndata: a\n\n"
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(stream)})
	// In observability mode Envoy expects no answers; the harness would
	// block on one that never comes, so a stray answer shows up on the
	// next normal request instead.
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(stream), observe: true})
	if got := testutil.ToFloat64(h.srv.metrics.eventsDeduped); got != 1 {
		t.Errorf("duplicates seen %v, want 1", got)
	}
}

func TestInjectLastEventID(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.InjectLastEventID = true })
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split("id: 7\ndata: a\n\n")})
	res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split("id: 8\ndata: b\n\n")})
	set := res.reqResp.GetResponse().GetHeaderMutation().GetSetHeaders()
	if len(set) != 1 || set[0].GetHeader().GetKey() != "last-event-id" || string(set[0].GetHeader().GetRawValue()) != "7" ||
		set[0].GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
		t.Errorf("request header mutation %v, want last-event-id: 7", set)
	}
}

// recorder is a Journal that keeps what it is given.
type recorder struct {
	mu   sync.Mutex
	recs []session.Record
	// refuse, when set, is the last id of records the journal refuses,
	// as a full queue does.
	refuse string
}

func (r *recorder) Append(rec session.Record) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse != "" && rec.LastID == r.refuse {
		return false
	}
	r.recs = append(r.recs, rec)
	return true
}

func TestJournalRecords(t *testing.T) {
	rec := &recorder{}
	h := newHarness(t, func(c *Config) { c.Recorder = rec })
	first := "id: 1\ndata: a\n\n: c\n\ndata: b\n\nid: 2\ndata: c\n\n"
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(first, 20)})
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split("id: 2\ndata: c\n\nid: 3\ndata: d\n\n")})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var data bytes.Buffer
	var ids []string
	var seqs []uint64
	ends := 0
	for _, r := range rec.recs {
		if r.Session != "S" {
			t.Errorf("record for session %q", r.Session)
		}
		if r.End {
			ends++
			continue
		}
		data.Write(r.Data)
		ids = append(ids, r.FirstID, r.LastID)
		seqs = append(seqs, r.FirstSeq, r.LastSeq)
	}
	if want := "id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid: 3\ndata: d\n\n"; data.String() != want {
		t.Errorf("journal data %q, want %q", data.String(), want)
	}
	if fmt.Sprint(ids) != "[1 1 2 2 3 3]" {
		t.Errorf("first and last ids per record %v, want [1 1 2 2 3 3]", ids)
	}
	if fmt.Sprint(seqs) != "[1 1 2 3 4 4]" {
		t.Errorf("seq ranges %v, want [1 1 2 3 4 4]", seqs)
	}
	if ends != 2 {
		t.Errorf("%d end records, want 2", ends)
	}
}

// replayer is a Journal that also replays, from what it was given.
type replayer struct {
	recorder
	err error // returned instead of a replay when set
	// reading, if set, runs as Replay starts, as the journal's work does.
	reading func(sid, stream string)
}

func (r *replayer) Replay(_ context.Context, sid, stream, after, through string) ([]byte, []string, error) {
	if r.reading != nil {
		r.reading(sid, stream)
	}
	if r.err != nil {
		return nil, nil, r.err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var data []byte
	var ids []string
	found := false
	for _, rec := range r.recs {
		if rec.Session != sid || rec.Stream != stream || rec.End {
			continue
		}
		// The test streams have one event per record.
		if found {
			data = append(data, rec.Data...)
			if rec.LastID != "" {
				ids = append(ids, rec.LastID)
			}
			if rec.LastID == through {
				return data, ids, nil
			}
		}
		found = found || rec.LastID == after
	}
	if !found {
		return nil, nil, session.ErrHistoryMissing
	}
	if through == "" {
		return data, ids, nil
	}
	return nil, nil, session.ErrHistoryIncomplete
}

func (r *replayer) StreamOf(_ context.Context, sid, id string) (string, error) {
	if r.err != nil {
		return "", r.err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.recs) - 1; i >= 0; i-- {
		if rec := r.recs[i]; rec.Session == sid && !rec.End && rec.LastID == id {
			return rec.Stream, nil
		}
	}
	return "", session.ErrHistoryMissing
}

func TestReplayMissedEvents(t *testing.T) {
	first := "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n"
	tests := []struct {
		name     string
		err      error
		resumed  string // what the upstream sends on the resume
		want     string
		wantHdr  string
		lastSeen string
	}{
		{
			name:    "upstream continues live: the gateway sends 2 and 3",
			resumed: "id: 4\ndata: d\n\n",
			want:    "id: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n",
			wantHdr: "replayed",
		},
		{
			name:    "upstream replays too: its repeats are dropped",
			resumed: "id: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n",
			want:    "id: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n",
			wantHdr: "replayed",
		},
		{
			name:    "after the stream's BOM",
			resumed: "\xef\xbb\xbfid: 4\ndata: d\n\n",
			want:    "\xef\xbb\xbfid: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n",
			wantHdr: "replayed",
		},
		{
			name:    "history incomplete: nothing replayed, the upstream decides",
			err:     session.ErrHistoryIncomplete,
			resumed: "id: 2\ndata: b\n\nid: 4\ndata: d\n\n",
			want:    "id: 2\ndata: b\n\nid: 4\ndata: d\n\n",
			wantHdr: "incomplete",
		},
		{
			name:    "history too large: nothing replayed, the upstream decides",
			err:     session.ErrHistoryTooLarge,
			resumed: "id: 2\ndata: b\n\nid: 4\ndata: d\n\n",
			want:    "id: 2\ndata: b\n\nid: 4\ndata: d\n\n",
			wantHdr: "too_large",
		},
		{
			name:    "history missing",
			err:     session.ErrHistoryMissing,
			resumed: "id: 4\ndata: d\n\n",
			want:    "id: 4\ndata: d\n\n",
			wantHdr: "missing",
		},
	}
	for _, tt := range tests {
		for cut := 0; cut <= len(tt.resumed); cut++ {
			rp := &replayer{}
			h := newHarness(t, func(c *Config) { c.Recorder, c.Replayer = rp, rp })
			// One event per chunk, so the replayer can cut by record.
			h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(first, 15, 30)})
			rp.err = tt.err
			res := h.run(t, request{
				reqHeaders:  []string{"mcp-session-id", "S", "last-event-id", "1"},
				respHeaders: sseHeaders(),
				chunks:      split(tt.resumed, cut),
			})
			if string(res.body) != tt.want {
				t.Fatalf("%s, cut %d: forwarded %q, want %q", tt.name, cut, res.body, tt.want)
			}
			if hdr := replayHeader(res); hdr != tt.wantHdr {
				t.Fatalf("%s: %s header %q, want %q", tt.name, headerReplay, hdr, tt.wantHdr)
			}
		}
	}
}

// TestReplayAcrossUntrackedEvent: an event over MaxEventSize goes to the
// client untracked and no journal holds it, so a resume from before it is
// answered "incomplete" and the upstream's copy goes through in order,
// where a replay would have sent the events after it and lost it. A resume
// from after it is replayed as usual.
func TestReplayAcrossUntrackedEvent(t *testing.T) {
	big := "id: 2\ndata: " + strings.Repeat("x", 100) + "\n\n"
	e1, e3, e4 := "id: 1\ndata: a\n\n", "id: 3\ndata: c\n\n", "id: 4\ndata: d\n\n"
	tests := []struct {
		name, first   string
		cuts          []int  // of first; every event ends in a chunk of its own
		other         string // sent on another stream of the session before the resume
		last          string
		resumed, want string
		wantHdr       string
	}{
		{
			name: "resumed from before it", first: e1 + big + e3,
			cuts: []int{len(e1), len(e1) + len(big)}, last: "1",
			resumed: big + e3 + e4, want: big + e3 + e4, wantHdr: "incomplete",
		},
		{
			name: "it arrived in pieces", first: e1 + big + e3,
			cuts: []int{len(e1), len(e1) + 40, len(e1) + 90, len(e1) + len(big)}, last: "1",
			resumed: big + e3 + e4, want: big + e3 + e4, wantHdr: "incomplete",
		},
		{
			name: "without an id", first: e1 + big[6:] + e3,
			cuts: []int{len(e1), len(e1) + len(big) - 6}, last: "1",
			resumed: big[6:] + e3 + e4, want: big[6:] + e3 + e4, wantHdr: "incomplete",
		},
		{
			name: "resumed from after it", first: e1 + big + e3 + e4,
			cuts: []int{len(e1), len(e1) + len(big), len(e1) + len(big) + len(e3)}, last: "3",
			resumed: e4, want: e4, wantHdr: "replayed",
		},
		{
			name: "an empty id after it", first: e1 + big + "id:\ndata: e\n\n",
			cuts: []int{len(e1), len(e1) + len(big)}, last: "1",
			resumed: big + e3, want: big + e3, wantHdr: "incomplete",
		},
		{
			name: "on another stream", first: e1 + e3, other: big + e4,
			cuts: []int{len(e1)}, last: "1",
			resumed: e3, want: e3, wantHdr: "replayed",
		},
		{
			// The stream's last id, 3, is before it: the client missed it
			// all the same.
			name: "last on the stream, after the client's id and another", first: e1 + e3 + big,
			cuts: []int{len(e1), len(e1) + len(e3)}, last: "1",
			resumed: e3 + big + e4, want: e3 + big + e4, wantHdr: "incomplete",
		},
		{
			name: "last on the stream: nothing tracked missed", first: e1 + big,
			cuts: []int{len(e1)}, last: "1",
			resumed: big + e3, want: big + e3, wantHdr: "",
		},
	}
	for _, tt := range tests {
		rp := &replayer{}
		h := newHarness(t, func(c *Config) { c.Recorder, c.Replayer, c.MaxEventSize = rp, rp, 64 })
		h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(tt.first, tt.cuts...)})
		if tt.other != "" {
			h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(tt.other, len(big))})
		}
		res := h.run(t, request{
			reqHeaders:  []string{"mcp-session-id", "S", "last-event-id", tt.last},
			respHeaders: sseHeaders(),
			chunks:      split(tt.resumed, len(tt.resumed)/2),
		})
		if string(res.body) != tt.want {
			t.Errorf("%s: forwarded %q, want %q", tt.name, res.body, tt.want)
		}
		if hdr := replayHeader(res); hdr != tt.wantHdr {
			t.Errorf("%s: %s header %q, want %q", tt.name, headerReplay, hdr, tt.wantHdr)
		}
	}
}

// failingLoader is a journal whose history reads fail, as a read past the
// journal timeout does.
type failingLoader struct{}

func (failingLoader) Load(context.Context, string) (*session.History, error) {
	return nil, errors.New("read history: context deadline exceeded")
}

func (failingLoader) Stale(context.Context, string, uint64) (bool, error) { return false, nil }

// TestReplayWhenHistoryDidNotLoad: the session's history did not load in
// time, so whether a resuming client missed anything is not known: the
// client is told ("error") and the upstream's events go through untouched.
// A request without Last-Event-ID gets no header.
func TestReplayWhenHistoryDidNotLoad(t *testing.T) {
	rp := &replayer{}
	h := newHarness(t, func(c *Config) {
		c.Recorder, c.Replayer = rp, rp
		c.Sessions = session.NewTable(session.Config{Window: 64, Loader: failingLoader{}})
		t.Cleanup(c.Sessions.Close)
	})
	body := "id: 4\ndata: d\n\nid: 5\ndata: e\n\n"
	for _, tc := range []struct {
		headers []string
		want    string
	}{
		{[]string{"mcp-session-id", "S", "last-event-id", "3"}, "error"},
		{[]string{"mcp-session-id", "T"}, ""},
	} {
		res := h.run(t, request{reqHeaders: tc.headers, respHeaders: sseHeaders(), chunks: split(body)})
		if got := replayHeader(res); got != tc.want {
			t.Errorf("%v: %s header %q, want %q", tc.headers, headerReplay, got, tc.want)
		}
		if string(res.body) != body {
			t.Errorf("%v: forwarded %q, want %q", tc.headers, res.body, body)
		}
	}
	// Numbered without knowing the sessions' stored numbers: the records
	// say so (session.Record.Base), so the journal adds them before it
	// stores the events.
	rp.mu.Lock()
	defer rp.mu.Unlock()
	events := 0
	for _, rec := range rp.recs {
		if rec.Count > 0 && (rec.Base == nil || rec.FirstSeq != 1) {
			t.Errorf("record of %s numbered %d..%d, base %v; want from 1, with a base", rec.Session, rec.FirstSeq, rec.LastSeq, rec.Base)
		}
		events += rec.Count
	}
	if events != 4 {
		t.Errorf("%d events recorded, want 4", events)
	}
}

// peerHistory is the journal as another replica fills it: its history of
// session S (stream "peer", events 1 to 3) gains a batch of events 4 to 6
// after the first load, as the other replica's batch reaches JetStream.
type peerHistory struct{ loads atomic.Int32 }

func (p *peerHistory) Load(context.Context, string) (*session.History, error) {
	p.loads.Add(1)
	return peerEvents(1, 3), nil
}

// LoadLast returns the batch of 4 to 6 (session.LastLoader).
func (p *peerHistory) LoadLast(context.Context, string) (*session.History, error) {
	p.loads.Add(1)
	return peerEvents(4, 6), nil
}

func peerEvents(first, last int) *session.History {
	h := &session.History{Seq: uint64(last), Streams: []session.StreamState{{Stream: "peer", LastEventID: strconv.Itoa(last)}}}
	for i := first; i <= last; i++ {
		h.Events = append(h.Events, session.EventRef{ID: strconv.Itoa(i), Stream: "peer", Seq: uint64(i)})
	}
	return h
}

func (p *peerHistory) Stale(context.Context, string, uint64) (bool, error) { return false, nil }

// TestResumeFromPeerReplica: another replica delivered events 4 to 6 of
// the session moments ago, and its batch reaches the journal just after
// this process first loads the session; the client got 4 and 5 and
// resumes here from 5. With a peer wait the session is read again, the
// resume continues the other replica's stream, and 6 is replayed; without
// it, 5 is unknown and 6 is lost with an upstream that cannot resume. A
// resume of a session this process already holds does not wait.
func TestResumeFromPeerReplica(t *testing.T) {
	for _, tc := range []struct {
		wait     time.Duration
		wantHdr  string
		wantBody string
		loads    int32
	}{
		{10 * time.Millisecond, "replayed", "id: 6\ndata: f\n\nid: 7\ndata: g\n\n", 2},
		{0, "", "id: 7\ndata: g\n\n", 1},
	} {
		loader := &peerHistory{}
		rp := &replayer{}
		for i, d := range []string{"a", "b", "c", "d", "e", "f"} {
			id := strconv.Itoa(i + 1)
			rp.recs = append(rp.recs, session.Record{Session: "S", Stream: "peer", Count: 1, LastID: id,
				Data: []byte("id: " + id + "\ndata: " + d + "\n\n")})
		}
		h := newHarness(t, func(c *Config) {
			c.Recorder, c.Replayer, c.PeerWait = rp, rp, tc.wait
			c.Sessions = session.NewTable(session.Config{Window: 64, Loader: loader})
			t.Cleanup(c.Sessions.Close)
		})
		res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "S", "last-event-id", "5"}, respHeaders: sseHeaders(),
			chunks: split("id: 7\ndata: g\n\n")})
		if got := replayHeader(res); got != tc.wantHdr || string(res.body) != tc.wantBody {
			t.Errorf("peer wait %v: %s %q, forwarded %q; want %q, %q", tc.wait, headerReplay, got, res.body, tc.wantHdr, tc.wantBody)
		}
		if n := loader.loads.Load(); n != tc.loads {
			t.Errorf("peer wait %v: %d loads, want %d", tc.wait, n, tc.loads)
		}
		// The session is held now: a resume from an id it does not know is
		// not made to wait, and the journal is not read again.
		h.run(t, request{reqHeaders: []string{"mcp-session-id", "S", "last-event-id", "bogus"}, respHeaders: sseHeaders(),
			chunks: split("id: 8\ndata: h\n\n")})
		if n := loader.loads.Load(); n != tc.loads {
			t.Errorf("peer wait %v: a resume of a held session read the journal again (%d loads)", tc.wait, n)
		}
	}
}

// TestReplayAcrossRefusedRecord: events the journal refused (a full queue)
// went to the client but are not stored, so a resume from before them is
// answered "incomplete" and the upstream decides; a resume from after them
// is replayed as usual.
func TestReplayAcrossRefusedRecord(t *testing.T) {
	first := "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n"
	for _, tt := range []struct{ last, wantHdr string }{{"1", "incomplete"}, {"3", "replayed"}} {
		rp := &replayer{}
		rp.refuse = "2"
		h := newHarness(t, func(c *Config) { c.Recorder, c.Replayer = rp, rp })
		// One event per chunk, so the replayer can cut by record.
		h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(first, 15, 30, 45)})
		res := h.run(t, request{
			reqHeaders:  []string{"mcp-session-id", "S", "last-event-id", tt.last},
			respHeaders: sseHeaders(),
			chunks:      split("id: 5\ndata: e\n\n"),
		})
		if hdr := replayHeader(res); hdr != tt.wantHdr {
			t.Errorf("resume from %s: %s header %q, want %q", tt.last, headerReplay, hdr, tt.wantHdr)
		}
	}
}

// TestReplayLossDuringRead: the journal gives up on the missed events'
// batch while the replay is read (a replay first publishes what the session
// has on its way, and a publish may fail for good): the replay read may
// still find the events around them, but it is refused, "incomplete".
func TestReplayLossDuringRead(t *testing.T) {
	rp := &replayer{}
	var table *session.Table
	h := newHarness(t, func(c *Config) { c.Recorder, c.Replayer, table = rp, rp, c.Sessions })
	rp.reading = func(sid, stream string) { table.Lost(sid, stream) }
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(),
		chunks: split("id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n", 15, 30)})
	res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "S", "last-event-id", "1"}, respHeaders: sseHeaders(),
		chunks: split("id: 4\ndata: d\n\n")})
	if got := replayHeader(res); got != "incomplete" {
		t.Errorf("%s header %q, want incomplete", headerReplay, got)
	}
	if string(res.body) != "id: 4\ndata: d\n\n" {
		t.Errorf("forwarded %q, want the upstream's event alone", res.body)
	}
}

// TestLocateFailedSaysError: a resume from an id the window no longer
// holds whose journal search does not finish (a timeout, NATS away) is told
// so: Ssetrack-Replay: error, as when the session's history did not load.
func TestLocateFailedSaysError(t *testing.T) {
	var first strings.Builder
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(&first, "id: %d\ndata: e%d\n\n", i, i)
	}
	rp := &replayer{}
	h := newHarness(t, func(c *Config) {
		c.Sessions = session.NewTable(session.Config{Window: 4})
		c.Recorder, c.Replayer = rp, rp
	})
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(first.String(), eventCuts(first.String())...)})
	rp.err = context.DeadlineExceeded
	res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "S", "last-event-id", "3"}, respHeaders: sseHeaders(),
		chunks: split("id: 11\ndata: e11\n\n")})
	if hdr := replayHeader(res); hdr != "error" {
		t.Errorf("%s header %q after a search that did not finish, want error", headerReplay, hdr)
	}
	if string(res.body) != "id: 11\ndata: e11\n\n" {
		t.Errorf("forwarded %q, want the upstream's event", res.body)
	}
}

// TestReplayAfterWindow resumes from an id the dedup window no longer holds:
// the journal names the stream that carried it, the stream is continued and
// everything it delivered after the id is replayed; the upstream's repeat of
// a replayed event is dropped. A session that never overflowed its window is
// not searched.
func TestReplayAfterWindow(t *testing.T) {
	var first, all strings.Builder
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(&first, "id: %d\ndata: e%d\n\n", i, i)
	}
	for i := 4; i <= 11; i++ {
		fmt.Fprintf(&all, "id: %d\ndata: e%d\n\n", i, i)
	}
	rp := &replayer{}
	h := newHarness(t, func(c *Config) {
		c.Sessions = session.NewTable(session.Config{Window: 4})
		c.Recorder, c.Replayer = rp, rp
	})
	// One event per chunk, so the replayer can cut by record.
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split(first.String(), eventCuts(first.String())...)})
	// Another stream of the session, so the window holds ids of two streams.
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split("id: x\ndata: other\n\n")})
	// The upstream repeats its last event, then goes on.
	resumed := "id: 10\ndata: e10\n\nid: 11\ndata: e11\n\n"
	res := h.run(t, request{
		reqHeaders:  []string{"mcp-session-id", "S", "last-event-id", "3"},
		respHeaders: sseHeaders(),
		chunks:      split(resumed, eventCuts(resumed)...),
	})
	if got, want := string(res.body), all.String(); got != want {
		t.Errorf("resume from 3 (out of the window of 4) forwarded %q, want events 4 to 11 once: %q", got, want)
	}
	if hdr := replayHeader(res); hdr != "replayed" {
		t.Errorf("%s header %q, want replayed", headerReplay, hdr)
	}
	if n := testutil.ToFloat64(h.srv.metrics.resumes.WithLabelValues("located")); n != 1 {
		t.Errorf("resumes_total{result=located} = %v, want 1", n)
	}

	// The stream forgotten behind 32 newer ones: it goes on under its id,
	// and everything stored after the client's id is replayed.
	rp3 := &replayer{}
	h3 := newHarness(t, func(c *Config) {
		c.Sessions = session.NewTable(session.Config{Window: 4})
		c.Recorder, c.Replayer = rp3, rp3
	})
	h3.run(t, request{reqHeaders: []string{"mcp-session-id", "F"}, respHeaders: sseHeaders(), chunks: split(first.String(), eventCuts(first.String())...)})
	for i := range 32 {
		h3.run(t, request{reqHeaders: []string{"mcp-session-id", "F"}, respHeaders: sseHeaders(), chunks: split(fmt.Sprintf("id: p%d\ndata: post\n\n", i))})
	}
	res = h3.run(t, request{reqHeaders: []string{"mcp-session-id", "F", "last-event-id", "3"}, respHeaders: sseHeaders(), chunks: split(resumed, eventCuts(resumed)...)})
	if got, want := string(res.body), all.String(); got != want || replayHeader(res) != "replayed" {
		t.Errorf("resume of a forgotten stream: header %q, forwarded %q; want replayed and %q", replayHeader(res), got, want)
	}

	// A session that delivered fewer ids than its window: an unknown id was
	// never delivered, and the journal is not asked.
	rp2 := &replayer{err: errors.New("journal asked")}
	h2 := newHarness(t, func(c *Config) { c.Recorder, c.Replayer = rp2, rp2 })
	h2.run(t, request{reqHeaders: []string{"mcp-session-id", "T"}, respHeaders: sseHeaders(), chunks: split("id: 1\ndata: a\n\n")})
	res = h2.run(t, request{reqHeaders: []string{"mcp-session-id", "T", "last-event-id", "nope"}, respHeaders: sseHeaders(), chunks: split("id: 2\ndata: b\n\n")})
	if hdr := replayHeader(res); hdr != "" || string(res.body) != "id: 2\ndata: b\n\n" {
		t.Errorf("unknown id in a small session: header %q, body %q; want no replay and the event", hdr, res.body)
	}
}

func TestNoReplayWhenClientIsCurrent(t *testing.T) {
	rp := &replayer{}
	h := newHarness(t, func(c *Config) { c.Recorder, c.Replayer = rp, rp })
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split("id: 1\ndata: a\n\n")})
	res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "S", "last-event-id", "1"}, respHeaders: sseHeaders(), chunks: split("id: 2\ndata: b\n\n")})
	if set := res.respResp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders(); len(set) != 0 {
		t.Errorf("headers set %v, want none", set)
	}
	if string(res.body) != "id: 2\ndata: b\n\n" {
		t.Errorf("forwarded %q", res.body)
	}
}

func TestSessionSources(t *testing.T) {
	stream := "id: 1\ndata: a\n\n"
	tests := []struct {
		name    string
		req     []string // request headers (":path" included)
		resp    []string // extra response headers of the first response
		deduped bool     // the second identical request is deduplicated
		first   []string // request headers of the first request, if not req
	}{
		{"query parameter", []string{":path", "/events?sid=abc&x=1"}, nil, true, nil},
		{"cookie", []string{"cookie", "a=b; ssetrack_sid=abc"}, nil, true, nil},
		{"cookie set by the upstream", []string{"cookie", "ssetrack_sid=fresh"}, []string{"set-cookie", "ssetrack_sid=fresh; Path=/; HttpOnly"}, true, []string{":path", "/"}},
		{"no session anywhere", []string{":path", "/events?other=1", "cookie", "x=y"}, nil, false, nil},
		{"malformed cookie header", []string{"cookie", "\x00;;="}, nil, false, nil},
		{"header wins over query", []string{"mcp-session-id", "h", ":path", "/?sid=q"}, nil, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.SessionQuery = "sid"; c.SessionCookie = "ssetrack_sid" })
			first := tt.req
			if tt.first != nil {
				first = tt.first
			}
			h.run(t, request{reqHeaders: first, respHeaders: sseHeaders(tt.resp...), chunks: split(stream)})
			res := h.run(t, request{reqHeaders: tt.req, respHeaders: sseHeaders(), chunks: split(stream)})
			if got := len(res.body) == 0; got != tt.deduped {
				t.Errorf("second request forwarded %q; want deduped=%v", res.body, tt.deduped)
			}
		})
	}
}

func TestSessionHeaderPriority(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SessionHeaders = []string{"x-primary", "x-secondary"} })
	stream := "id: 1\ndata: a\n\n"
	// The first request names the session by the primary header only.
	h.run(t, request{reqHeaders: []string{"x-primary", "P"}, respHeaders: sseHeaders(), chunks: split(stream)})
	// The second carries both, the secondary first: the primary still wins.
	res := h.run(t, request{reqHeaders: []string{"x-secondary", "S", "x-primary", "P"}, respHeaders: sseHeaders(), chunks: split(stream)})
	if len(res.body) != 0 {
		t.Errorf("forwarded %q: the session was taken from the secondary header", res.body)
	}
}

func TestReplayOnlyToOwner(t *testing.T) {
	first := "id: 1\ndata: a\n\nid: 2\ndata: b\n\n"
	tests := []struct {
		name    string
		creator string // authorization of the first request ("" none)
		resumer string
		want    string // Ssetrack-Replay
	}{
		{"owner", "Bearer alice", "Bearer alice", "replayed"},
		{"another caller", "Bearer alice", "Bearer mallory", "denied"},
		{"anonymous resume of a bound session", "Bearer alice", "", "denied"},
		{"unbound session", "", "Bearer bob", "replayed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rp := &replayer{}
			h := newHarness(t, func(c *Config) {
				c.Recorder, c.Replayer = rp, rp
				c.PrincipalHeader, c.PrincipalKey = "Authorization", []byte("0123456789abcdef")
			})
			hdr := func(auth string, kv ...string) []string {
				if auth != "" {
					kv = append(kv, "authorization", auth)
				}
				return kv
			}
			h.run(t, request{reqHeaders: hdr(tt.creator, "mcp-session-id", "S"), respHeaders: sseHeaders(), chunks: split(first, 15)})
			res := h.run(t, request{reqHeaders: hdr(tt.resumer, "mcp-session-id", "S", "last-event-id", "1"), respHeaders: sseHeaders(), chunks: split("id: 3\ndata: c\n\n")})
			var got string
			for _, o := range res.respResp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
				if o.GetHeader().GetKey() == headerReplay {
					got = string(o.GetHeader().GetRawValue())
				}
			}
			if got != tt.want {
				t.Errorf("%s = %q, want %q", headerReplay, got, tt.want)
			}
			if tt.want == "denied" && string(res.body) != "id: 3\ndata: c\n\n" {
				t.Errorf("denied replay still forwarded %q", res.body)
			}
			rp.mu.Lock()
			principals := map[string]bool{}
			for _, rec := range rp.recs {
				if strings.Contains(rec.Principal, "alice") || strings.Contains(rec.Principal, "Bearer") {
					t.Errorf("record carries the raw principal %q", rec.Principal)
				}
				if rec.Principal != "" {
					principals[rec.Principal] = true
				}
			}
			rp.mu.Unlock()
			// A caller who does not own the session has its response
			// recorded, but the records name only the owner.
			if len(principals) > 1 {
				t.Errorf("records name %d principals, want the owner's alone", len(principals))
			}
		})
	}
}

// TestMessageSecondsByKind checks that every answered message is timed
// under its own kind, and that a message in observability mode (never
// answered) is not.
func TestMessageSecondsByKind(t *testing.T) {
	h := newHarness(t, nil)
	h.run(t, request{
		reqHeaders:  []string{"mcp-session-id", "timed"},
		respHeaders: sseHeaders(),
		chunks:      [][]byte{[]byte("id: 1\ndata: a\n\n"), []byte("id: 2\ndata: b\n\n"), nil},
	})
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "watched"}, respHeaders: sseHeaders(),
		chunks: [][]byte{[]byte("id: 1\ndata: a\n\n")}, observe: true})
	for kind, want := range map[int]uint64{
		phaseRequestHeaders: 1, phaseResponseHeaders: 1, phaseResponseBody: 3, phaseResponseTrailers: 0,
	} {
		var m dto.Metric
		if err := h.srv.metrics.answer[kind].(prometheus.Histogram).Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetHistogram().GetSampleCount(); got != want {
			t.Errorf("%s: %d answers timed, want %d", phaseNames[kind], got, want)
		}
	}
}

// TestDeleteForgetsSession: an MCP client's DELETE that the server accepts
// ends the session, and ssetrack frees its memory then, not at its TTL; a
// refused DELETE leaves it.
func TestDeleteForgetsSession(t *testing.T) {
	h := newHarness(t, nil)
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "S"}, respHeaders: sseHeaders(), chunks: split("id: 1\ndata: a\n\n")})
	if n := h.srv.cfg.Sessions.Len(); n != 1 {
		t.Fatalf("%d sessions after a stream, want 1", n)
	}
	del := func(status string) {
		h.run(t, request{reqHeaders: []string{":method", "DELETE", "mcp-session-id", "S"}, respHeaders: []string{":status", status}})
	}
	del("404")
	if n := h.srv.cfg.Sessions.Len(); n != 1 {
		t.Errorf("%d sessions after a refused DELETE, want 1", n)
	}
	del("200")
	if n := h.srv.cfg.Sessions.Len(); n != 0 {
		t.Errorf("%d sessions after an accepted DELETE, want 0", n)
	}
}

// openResponse starts an SSE response of session S on srv, resuming after
// lastID when it is not empty.
func openResponse(srv *Server, lastID string) *exchange {
	x := newExchange(srv, context.Background())
	x.sseBody, x.sessionID = true, "S"
	if lastID != "" {
		x.lastEventID, x.hasLastEventID = lastID, true
	}
	x.openStream(context.Background(), false)
	return x
}

// feed answers one chunk and returns what the client gets for it.
func feed(x *exchange, chunk string, eos bool) string {
	out, _ := x.process([]byte(chunk), eos)
	return string(out)
}

// newRecordingServer is a processor with a small window whose journal is
// the recorder returned.
func newRecordingServer(t *testing.T) (*Server, *recorder) {
	table := session.NewTable(session.Config{Window: 16})
	t.Cleanup(table.Close)
	rec := &recorder{}
	srv, err := New(Config{Sessions: table, Recorder: rec, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	return srv, rec
}

// journal is the bytes of every record so far, in order.
func (r *recorder) journal() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, rec := range r.recs {
		b.Write(rec.Data)
	}
	return b.String()
}

// TestEarlyEvents: an event forwarded before its end (its first id new) is
// recorded only when it ends: never when it is cut short, and never so as
// to keep it from another stream of the session, such as the one a client
// resumed on while the first still runs. An event with several id fields
// is the client's under all of them.
func TestEarlyEvents(t *testing.T) {
	t.Run("resumed while the first stream runs", func(t *testing.T) {
		srv, rec := newRecordingServer(t)
		a := openResponse(srv, "")
		defer a.close()
		if got := feed(a, "id: 1\ndata: a\n\nid: 2\ndata: x", false); got != "id: 1\ndata: a\n\nid: 2\ndata: x" {
			t.Fatalf("first stream got %q", got)
		}
		// The client lost the first stream and resumed after 1.
		b := openResponse(srv, "1")
		defer b.close()
		if got := feed(b, "id: 2\ndata: x\n\n", false); got != "id: 2\ndata: x\n\n" {
			t.Errorf("the resumed stream got %q, want event 2", got)
		}
		// The first stream goes on with what it began.
		if got := feed(a, "\n\n", false); got != "\n\n" {
			t.Errorf("the first stream got %q, want the rest of event 2", got)
		}
		if got := feed(b, "id: 2\ndata: x\n\nid: 3\ndata: y\n\n", false); got != "id: 3\ndata: y\n\n" {
			t.Errorf("the resumed stream got %q, want event 2 dropped, event 3", got)
		}
		journal := rec.journal()
		if want := "id: 1\ndata: a\n\nid: 2\ndata: x\n\nid: 3\ndata: y\n\n"; journal != want {
			t.Errorf("journal %q, want each event once, %q", journal, want)
		}
	})
	t.Run("resumed while the first response still sends", func(t *testing.T) {
		// A half-open last mile: the client left the first response and
		// resumed after 1, while Envoy still delivers 3 on the first.
		srv, rec := newRecordingServer(t)
		a := openResponse(srv, "")
		defer a.close()
		feed(a, "id: 1\ndata: a\n\nid: 2\ndata: b\n\n", false)
		b := openResponse(srv, "1")
		defer b.close()
		if got := feed(a, "id: 3\ndata: c\n\n", false); got != "id: 3\ndata: c\n\n" {
			t.Errorf("the first response got %q, want event 3", got)
		}
		want := "id: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n"
		if got := feed(b, want, false); got != want {
			t.Errorf("the resumed response got %q, want %q", got, want)
		}
		journal := rec.journal()
		if want := "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n"; journal != want {
			t.Errorf("journal %q, want each event once, %q", journal, want)
		}
	})
	for _, tc := range []struct {
		name, body string
		eos        bool // the body ends inside the event; else the stream is closed
	}{
		{"cut short, then sent again", "id: 1\ndata: a\n\nid: 9\ndata: x", true},
		{"closed mid-event", "id: 9\ndata: x", false}, // the client or the upstream went away
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFuzzServer(t) // MaxEventSize 256
			a := openResponse(srv, "")
			got := feed(a, tc.body, false)
			if tc.eos {
				got += feed(a, "", true)
			}
			if got != tc.body {
				t.Fatalf("cut stream got %q", got)
			}
			a.close()
			if n := testutil.ToFloat64(srv.metrics.errors.WithLabelValues("partial_event_cut")); n != 1 {
				t.Errorf("partial_event_cut counted %v, want 1", n)
			}
			b := openResponse(srv, "")
			defer b.close()
			if got := feed(b, "id: 9\ndata: x\n\n", true); got != "id: 9\ndata: x\n\n" {
				t.Errorf("the next stream got %q: the client never had event 9 whole", got)
			}
		})
	}
	t.Run("over the size limit", func(t *testing.T) {
		srv := newFuzzServer(t) // MaxEventSize 256
		a := openResponse(srv, "")
		big := "id: 9\ndata: " + strings.Repeat("x", 300) + "\n\n"
		if got := feed(a, big[:20], false) + feed(a, big[20:], true); got != big {
			t.Fatalf("oversize event: got %q", got)
		}
		a.close()
		b := openResponse(srv, "")
		defer b.close()
		if got := feed(b, "id: 9\ndata: y\n\n", true); got != "id: 9\ndata: y\n\n" {
			t.Errorf("got %q: an event over the limit is passed through, never an id the client has", got)
		}
	})
	t.Run("several ids", func(t *testing.T) {
		srv := newFuzzServer(t) // MaxEventSize 256
		body := "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\nid: 1\n\n"
		a := openResponse(srv, "")
		if got := feed(a, body, true); got != body {
			t.Fatalf("first response got %q", got)
		}
		if last := a.stream.LastID(); last != "1" {
			t.Errorf("the stream's last id is %q, want the client's lastEventId, 1", last)
		}
		a.close()
		for i := range 2 {
			b := openResponse(srv, "1")
			if got := feed(b, body, true); got != "" {
				t.Errorf("repeat %d got %q, want nothing: the client has every event", i, got)
			}
			b.close()
		}
	})
}

// successor is a recorder that takes takeover notices (Successor).
type successor struct {
	recorder
	notices []string // "session Last-Event-ID"
}

func (s *successor) Takeover(sessionID, stream, lastEventID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notices = append(s.notices, sessionID+" "+lastEventID)
}

// TestTakeoverNotice: a resume of a known stream by the session's owner,
// and only that, tells the other replicas (Successor.Takeover).
func TestTakeoverNotice(t *testing.T) {
	rec := &successor{}
	h := newHarness(t, func(c *Config) {
		c.Recorder = rec
		c.PrincipalHeader, c.PrincipalKey = "authorization", []byte("0123456789abcdef")
	})
	body := "id: 1\ndata: a\n\nid: 2\ndata: b\n\n"
	for _, hdrs := range [][]string{
		{"mcp-session-id", "S", "authorization", "alice"},                          // a new stream
		{"mcp-session-id", "S", "authorization", "mallory", "last-event-id", "1"},  // not the owner
		{"mcp-session-id", "S", "authorization", "alice", "last-event-id", "nope"}, // unknown id
		{"mcp-session-id", "S", "authorization", "alice", "last-event-id", "1"},    // the owner resumes
	} {
		h.run(t, request{reqHeaders: hdrs, respHeaders: sseHeaders(), chunks: split(body)})
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if fmt.Sprint(rec.notices) != "[S 1]" {
		t.Errorf("notices %q, want one, for the owner's resume from 1", rec.notices)
	}
}

// TestAnswerLost: the events of a chunk whose answer never reached Envoy
// (the upstream reset the stream as it wrote them) are not the client's: a
// reconnect without Last-Event-ID, to which the upstream sends them again,
// gets them, and the journal keeps one copy. What earlier answers carried,
// and events of another response of the session, stay delivered.
func TestAnswerLost(t *testing.T) {
	srv, rec := newRecordingServer(t)
	other := openResponse(srv, "")
	defer other.close()
	a := openResponse(srv, "")
	feed(a, "id: 1\ndata: a\n\n", false)
	feed(a, "id: 2\ndata: b\n\nid: 3\ndata: c\n\n", false)
	if got := feed(other, "id: o1\ndata: o\n\n", false); got != "id: o1\ndata: o\n\n" {
		t.Fatalf("the other response got %q", got)
	}
	a.answerLost() // Send failed for the answer to the last chunk
	a.close()
	b := openResponse(srv, "")
	defer b.close()
	got := feed(b, "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\nid: o1\ndata: o\n\nid: 4\ndata: d\n\n", false)
	if want := "id: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n"; got != want {
		t.Errorf("the reconnect got %q, want %q", got, want)
	}
	if got := feed(b, "id: 2\ndata: b\n\n", false); got != "" {
		t.Errorf("a second repeat of an event sent again got %q, want it dropped", got)
	}
	if j, want := rec.journal(), "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\nid: o1\ndata: o\n\nid: 4\ndata: d\n\n"; j != want {
		t.Errorf("journal %q, want each event once, %q", j, want)
	}
}

// TestCountersFromTheStart: every label value of the counters alerts watch
// is exported at 0 before its first occurrence, so an alert or a rate has
// a series to match.
func TestCountersFromTheStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	table := session.NewTable(session.Config{})
	defer table.Close()
	if _, err := New(Config{Sessions: table, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"ssetrack_errors_total":    errorKinds,
		"ssetrack_replays_total":   {"replayed", "missing", "incomplete", "error", "denied", "too_large"},
		"ssetrack_resumes_total":   {"matched", "located", "unknown", "without_header"},
		"ssetrack_responses_total": {kindSSE, kindPassthrough, kindEncoded, kindError, kindBuffered, kindNotSent},
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				have[f.GetName()+"/"+l.GetValue()] = true
			}
		}
	}
	for name, values := range want {
		for _, v := range values {
			if !have[name+"/"+v] {
				t.Errorf("%s{%q} not exported before its first count", name, v)
			}
		}
	}
}

// TestAnswerLostMarks: an unsent mark lasts until its event reaches the
// client once more, by any path, covers only the lost answer's events,
// and cannot crowd out later ones.
func TestAnswerLostMarks(t *testing.T) {
	lose := func(srv *Server, chunks ...string) {
		a := openResponse(srv, "")
		for _, c := range chunks {
			feed(a, c, false)
		}
		a.answerLost()
		a.close()
	}
	t.Run("taken by a resume's repeat", func(t *testing.T) {
		srv, _ := newRecordingServer(t)
		lose(srv, "id: 1\ndata: a\n\n", "id: 2\ndata: b\n\n")
		b := openResponse(srv, "1")
		if got := feed(b, "id: 2\ndata: b\n\n", false); got != "id: 2\ndata: b\n\n" {
			t.Fatalf("the resume from 1 got %q, want 2", got)
		}
		b.close()
		c := openResponse(srv, "")
		defer c.close()
		if got := feed(c, "id: 2\ndata: b\n\n", false); got != "" {
			t.Errorf("2, which the resume delivered, went again: %q", got)
		}
	})
	t.Run("taken by a replay", func(t *testing.T) {
		table := session.NewTable(session.Config{Window: 16})
		t.Cleanup(table.Close)
		rp := &replayer{}
		srv, err := New(Config{Sessions: table, Recorder: rp, Replayer: rp, Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		lose(srv, "id: 1\ndata: a\n\n", "id: 2\ndata: b\n\n")
		b := openResponse(srv, "1")
		if r := b.readReplay(context.Background()); r != replayDone {
			t.Fatalf("replay %q, want %q", r, replayDone)
		}
		feed(b, "id: 3\ndata: c\n\n", false)
		b.close()
		c := openResponse(srv, "")
		defer c.close()
		if got := feed(c, "id: 2\ndata: b\n\n", false); got != "" {
			t.Errorf("2, which the replay delivered, went again: %q", got)
		}
	})
	t.Run("not a response that took the stream over", func(t *testing.T) {
		srv, _ := newRecordingServer(t)
		a := openResponse(srv, "")
		feed(a, "id: 4\ndata: x\n\n", false)
		feed(a, "id: 5\ndata: a\n\n", false) // its answer still on its way
		b := openResponse(srv, "4")          // the client resumes meanwhile
		feed(b, "id: 5\ndata: a\n\nid: 6\ndata: b\n\n", false)
		a.answerLost()
		a.close()
		c := openResponse(srv, "")
		defer c.close()
		if got := feed(c, "id: 5\ndata: a\n\nid: 6\ndata: b\n\n", false); got != "" {
			t.Errorf("events the newer response delivered went again: %q", got)
		}
	})
	t.Run("marks of ids gone from the window give way", func(t *testing.T) {
		srv, _ := newRecordingServer(t) // window 16
		for i := range 16 {
			lose(srv, fmt.Sprintf("id: old%d\ndata: a\n\n", i))
		}
		f := openResponse(srv, "")
		for i := range 40 {
			feed(f, fmt.Sprintf("id: fill%d\ndata: a\n\n", i), false)
		}
		f.close()
		lose(srv, "id: new\ndata: a\n\n")
		b := openResponse(srv, "")
		defer b.close()
		if got := feed(b, "id: new\ndata: a\n\n", false); got != "id: new\ndata: a\n\n" {
			t.Errorf("after 16 stale marks, the lost answer's event got %q, want it again", got)
		}
	})
}
