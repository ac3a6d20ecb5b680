package extproc

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// TestOpenStreamFootprint bounds the heap an open SSE stream costs ssetrack
// above the do-nothing ext_proc server, measured the same way in the same
// run: at most 1 KiB per stream. Each stream is an MCP GET stream of one
// session that has delivered an event (tracked, journaled) and waits for
// the next; the session's own state is bounded by TestFootprint in package
// session, so all streams here share one session.
func TestOpenStreamFootprint(t *testing.T) {
	const n = 2000
	table := session.NewTable(session.Config{})
	t.Cleanup(table.Close)
	srv, err := New(Config{Sessions: table, Recorder: discardJournal{}, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	// Each measured twice, alternating, and the second taken: the first
	// run of a process also pays for what gRPC sets up once.
	var noop, sset float64
	for range 2 {
		noop = openStreamsHeap(t, n, func(gs *grpc.Server) { procv3.RegisterExternalProcessorServer(gs, noopProcessor{}) })
		sset = openStreamsHeap(t, n, func(gs *grpc.Server) { procv3.RegisterExternalProcessorServer(gs, srv) })
	}
	t.Logf("heap per open stream: do-nothing server %.0f B, ssetrack %.0f B: %.0f B above", noop, sset, sset-noop)
	if sset-noop > 1024 {
		t.Errorf("an open stream costs %.0f B above the do-nothing server, want at most 1024", sset-noop)
	}
}

// openStreamsHeap opens n ext_proc streams to a server over bufconn, each
// through its request and response headers and one body chunk, and returns
// the heap growth per stream while they are all open. (Goroutine stacks,
// one per stream in both servers, are left out: which of them grew past
// their first size is noise here.)
func openStreamsHeap(t *testing.T, n int, register func(*grpc.Server)) float64 {
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	register(gs)
	go gs.Serve(lis)
	defer gs.Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := procv3.NewExternalProcessorClient(conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exchange := func(s procv3.ExternalProcessor_ProcessClient, r *procv3.ProcessingRequest) {
		if err := s.Send(r); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	open := func(i int) procv3.ExternalProcessor_ProcessClient {
		s, err := client.Process(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exchange(s, &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{
			RequestHeaders: &procv3.HttpHeaders{Headers: headerMap(":method", "GET", ":path", "/mcp", "mcp-session-id", "S"), EndOfStream: true}}})
		exchange(s, &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{
			ResponseHeaders: &procv3.HttpHeaders{Headers: headerMap(sseHeaders()...)}}})
		exchange(s, &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{
			ResponseBody: &procv3.HttpBody{Body: fmt.Appendf(nil, "id: %d\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n", i)}}})
		return s
	}
	for i := range 50 { // warm up: connection buffers, pools
		open(-1 - i).CloseSend()
	}
	// The goroutines of the server measured before are gone (what they
	// free would count against this one), and the heap is collected twice:
	// the first GC moves sync.Pool contents to the victim cache, the second
	// frees them.
	settleGoroutines()
	runtime.GC()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	streams := make([]procv3.ExternalProcessor_ProcessClient, n)
	for i := range streams {
		streams[i] = open(i)
	}
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(streams)
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
}

// settleGoroutines waits, up to a second, until the number of goroutines
// stops falling.
func settleGoroutines() {
	last := runtime.NumGoroutine()
	for range 100 {
		time.Sleep(10 * time.Millisecond)
		n := runtime.NumGoroutine()
		if n >= last {
			return
		}
		last = n
	}
}
