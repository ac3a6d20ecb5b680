package extproc

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
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
	if os.Getenv(footprintChild) == "" {
		// The heap is measured in a process of its own: this package's
		// earlier tests leave tens of MiB of gRPC connection buffers
		// reachable for a while, and their release during a measurement
		// moved it by up to 20 KiB per stream either way.
		cmd := exec.Command(os.Args[0], "-test.run=^TestOpenStreamFootprint$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), footprintChild+"=1")
		out, err := cmd.CombinedOutput()
		t.Logf("the measuring process:\n%s", out)
		if err != nil {
			t.Fatalf("the measuring process failed: %v", err)
		}
		return
	}
	const n = 2000
	table := session.NewTable(session.Config{})
	t.Cleanup(table.Close)
	srv, err := New(Config{Sessions: table, Recorder: discardJournal{}, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	// Each server keeps one connection for the whole test: a connection
	// closed after one round was, under the race detector, now and then
	// freed during the next (1 MiB of bufconn buffers, 500 B per stream).
	noopConn := dialServer(t, func(gs *grpc.Server) { procv3.RegisterExternalProcessorServer(gs, noopProcessor{}) })
	ssetConn := dialServer(t, func(gs *grpc.Server) { procv3.RegisterExternalProcessorServer(gs, srv) })
	// Each measured three times, alternating, and the last two averaged:
	// the first round of a process also pays for what gRPC sets up once.
	var noop, sset float64
	for round := range 3 {
		a := openStreamsHeap(t, noopConn, n, round)
		b := openStreamsHeap(t, ssetConn, n, round)
		t.Logf("round %d: do-nothing server %.0f B, ssetrack %.0f B", round+1, a, b)
		if round > 0 {
			noop, sset = noop+a/2, sset+b/2
		}
	}
	t.Logf("heap per open stream: do-nothing server %.0f B, ssetrack %.0f B: %.0f B above", noop, sset, sset-noop)
	if sset-noop > 1024 {
		t.Errorf("an open stream costs %.0f B above the do-nothing server, want at most 1024", sset-noop)
	}
}

// footprintChild, set in its environment, tells the test binary it is the
// process TestOpenStreamFootprint measures in.
const footprintChild = "SSETRACK_FOOTPRINT_CHILD"

// dialServer serves a gRPC server over bufconn for the test's lifetime and
// returns a client of it once its connection is ready (so the connection's
// goroutines run before a measurement counts them).
func dialServer(t *testing.T, register func(*grpc.Server)) procv3.ExternalProcessorClient {
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	register(gs)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.Connect()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for st := conn.GetState(); st != connectivity.Ready; st = conn.GetState() {
		if !conn.WaitForStateChange(ctx, st) {
			t.Fatalf("connection to the server: %v", st)
		}
	}
	return procv3.NewExternalProcessorClient(conn)
}

// openStreamsHeap opens n ext_proc streams on client, each through its
// request and response headers and one body chunk, and returns the heap
// growth per stream while they are all open; then it ends them. Each round
// uses event ids of its own. (Goroutine stacks, one per stream in both
// servers, are left out: which of them grew past their first size is noise
// here.)
func openStreamsHeap(t *testing.T, client procv3.ExternalProcessorClient, n, round int) float64 {
	// Registered first, so it runs after the streams' cancel below: their
	// goroutines exit, and free what they hold, before the next
	// measurement starts rather than during it.
	defer waitGoroutines(t, runtime.NumGoroutine())
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
	open := func(id string) procv3.ExternalProcessor_ProcessClient {
		s, err := client.Process(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exchange(s, &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{
			RequestHeaders: &procv3.HttpHeaders{Headers: headerMap(":method", "GET", ":path", "/mcp", "mcp-session-id", "S"), EndOfStream: true}}})
		exchange(s, &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{
			ResponseHeaders: &procv3.HttpHeaders{Headers: headerMap(sseHeaders()...)}}})
		exchange(s, &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{
			ResponseBody: &procv3.HttpBody{Body: fmt.Appendf(nil, "id: %s\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n", id)}}})
		return s
	}
	for i := range 50 { // warm up: connection buffers, pools
		open(fmt.Sprintf("warm-%d-%d", round, i)).CloseSend()
	}
	settleGoroutines()
	before := settledHeap()
	streams := make([]procv3.ExternalProcessor_ProcessClient, n)
	for i := range streams {
		streams[i] = open(fmt.Sprintf("%d-%d", round, i))
	}
	after := settledHeap()
	runtime.KeepAlive(streams)
	return float64(int64(after)-int64(before)) / float64(n)
}

// settledHeap collects the heap until it stops shrinking and returns its
// size in bytes (HeapAlloc). One collection is not enough: the first moves
// sync.Pool contents to the victim cache and the second frees them, and
// what an object with a finalizer holds is freed only by a collection
// after the finalizer goroutine has run.
func settledHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	last := m.HeapAlloc
	for range 20 {
		time.Sleep(10 * time.Millisecond) // the finalizer goroutine runs
		runtime.GC()
		runtime.ReadMemStats(&m)
		if m.HeapAlloc+64<<10 > last {
			return m.HeapAlloc
		}
		last = m.HeapAlloc
	}
	return last
}

// settleGoroutines waits, up to 5 s, until the number of goroutines has not
// fallen for 100 ms: what the streams measured before ran has ended.
func settleGoroutines() {
	last, quiet := runtime.NumGoroutine(), 0
	for range 500 {
		time.Sleep(10 * time.Millisecond)
		n := runtime.NumGoroutine()
		if n < last {
			last, quiet = n, 0
			continue
		}
		if quiet++; quiet == 10 {
			return
		}
	}
}

// waitGoroutines waits, up to 10 s, until no more than n goroutines run.
func waitGoroutines(t *testing.T, n int) {
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			t.Logf("%d goroutines still running, want at most %d", runtime.NumGoroutine(), n)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
