package extproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// noopProcessor answers every message without looking at it: the baseline
// for the cost ssetrack adds on top of the ext_proc round trip itself.
type noopProcessor struct {
	procv3.UnimplementedExternalProcessorServer
}

func (noopProcessor) Process(s procv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		var resp *procv3.ProcessingResponse
		switch req.Request.(type) {
		case *procv3.ProcessingRequest_RequestHeaders:
			resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestHeaders{RequestHeaders: &procv3.HeadersResponse{}}}
		case *procv3.ProcessingRequest_ResponseHeaders:
			resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &procv3.HeadersResponse{}}}
		default:
			resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseBody{ResponseBody: &procv3.BodyResponse{}}}
		}
		if err := s.Send(resp); err != nil {
			return err
		}
	}
}

func dialBuf(b *testing.B, register func(*grpc.Server)) procv3.ExternalProcessorClient {
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	register(gs)
	go gs.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(); gs.Stop() })
	return procv3.NewExternalProcessorClient(conn)
}

// mcpChunks returns n response chunks of an MCP-style stream: one
// JSON-RPC notification with an id per chunk, and a keep-alive now and then.
func mcpChunks(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		s := fmt.Sprintf("id: %d\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"tok-42\",\"progress\":%d,\"total\":100000,\"message\":\"%s\"}}\n\n",
			i, i, strings.Repeat("working ", 8))
		if i%50 == 0 {
			s += ": keep-alive\n\n"
		}
		out[i] = []byte(s)
	}
	return out
}

// cutChunks returns an MCP-style stream (mcpChunks' events, each id new) cut
// into n chunks of size bytes each, as Envoy hands a busy upstream's
// response over: events split at any byte.
func cutChunks(size, n int) [][]byte {
	var all []byte
	for _, c := range mcpChunks(size*n/150 + 1) { // events are over 150 B
		all = append(all, c...)
	}
	out := make([][]byte, n)
	for i := range out {
		out[i] = all[i*size : (i+1)*size]
	}
	return out
}

// benchChunks sends b.N response chunks through client over the given number
// of concurrent ext_proc streams, each chunk waiting for its answer as Envoy
// does, and reports CPU per chunk (cpu-us/chunk: user + system time of this
// whole process, client and server, from getrusage) and the round-trip
// latency of a chunk (p50-us, p99-us). Each ext_proc stream is one HTTP
// response of len(chunks) chunks in its own session; a worker opens the next
// when one ends.
func benchChunks(b *testing.B, client procv3.ExternalProcessorClient, chunks [][]byte, streams int) {
	b.SetBytes(int64(len(chunks[0])))
	b.ReportAllocs()
	ctx := context.Background()
	var sid atomic.Int64
	lats := make([][]time.Duration, streams)
	errs := make([]error, streams)
	cpu0 := processCPU()
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range streams {
		n := b.N / streams
		if w < b.N%streams {
			n++
		}
		lats[w] = make([]time.Duration, 0, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n > 0 {
				k := min(n, len(chunks))
				if errs[w] = chunkStream(ctx, client, fmt.Sprint("bench-", sid.Add(1)), chunks[:k], &lats[w]); errs[w] != nil {
					return
				}
				n -= k
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu := processCPU() - cpu0
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	all := slices.Concat(lats...)
	slices.Sort(all)
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/chunk")
	b.ReportMetric(float64(all[(len(all)-1)*50/100].Nanoseconds())/1e3, "p50-us")
	b.ReportMetric(float64(all[(len(all)-1)*99/100].Nanoseconds())/1e3, "p99-us")
}

// chunkStream plays one SSE response through a new ext_proc stream: request
// headers, response headers, then chunks, each sent after the previous one
// was answered. It appends each chunk's round trip to lats.
func chunkStream(ctx context.Context, client procv3.ExternalProcessorClient, sid string, chunks [][]byte, lats *[]time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Process(ctx)
	if err != nil {
		return err
	}
	roundTrip := func(r *procv3.ProcessingRequest) error {
		if err := stream.Send(r); err != nil {
			return err
		}
		_, err := stream.Recv()
		return err
	}
	if err := roundTrip(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &procv3.HttpHeaders{Headers: headerMap(":method", "GET", "mcp-session-id", sid), EndOfStream: true}}}); err != nil {
		return err
	}
	if err := roundTrip(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &procv3.HttpHeaders{Headers: headerMap(sseHeaders()...)}}}); err != nil {
		return err
	}
	for i, c := range chunks {
		start := time.Now()
		if err := roundTrip(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{
			ResponseBody: &procv3.HttpBody{Body: c, EndOfStream: i == len(chunks)-1}}}); err != nil {
			return fmt.Errorf("chunk %d of %s: %w", i, sid, err)
		}
		*lats = append(*lats, time.Since(start))
	}
	return stream.CloseSend()
}

// processCPU returns the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkChunkRoundTrip compares response chunks through ssetrack (a
// session per response, records built for a journal that drops them) with the
// same chunks through the do-nothing ext_proc server, both over real gRPC on
// an in-memory listener (bufconn), for 512 B and 16 KiB chunks over 1, 16 and
// 256 concurrent ext_proc streams. Compare cpu-us/chunk and p99-us of the
// ssetrack and noop rows of one run.
func BenchmarkChunkRoundTrip(b *testing.B) {
	for _, size := range []int{512, 16 << 10} {
		chunks := cutChunks(size, 256)
		for _, streams := range []int{1, 16, 256} {
			name := fmt.Sprintf("chunk=%dB/streams=%d", size, streams)
			if size >= 1<<10 {
				name = fmt.Sprintf("chunk=%dKiB/streams=%d", size>>10, streams)
			}
			b.Run(name+"/noop", func(b *testing.B) {
				client := dialBuf(b, func(s *grpc.Server) { procv3.RegisterExternalProcessorServer(s, noopProcessor{}) })
				benchChunks(b, client, chunks, streams)
			})
			b.Run(name+"/ssetrack", func(b *testing.B) {
				h := newHarness(b, func(c *Config) { c.Recorder = discardJournal{} })
				benchChunks(b, h.client, chunks, streams)
			})
		}
	}
}

// BenchmarkProcess measures the per-chunk work alone, without gRPC: parse,
// dedup, forward.
func BenchmarkProcess(b *testing.B) {
	for _, tc := range []struct {
		name    string
		session bool
		journal Recorder
	}{{"no-session", false, nil}, {"session", true, nil}, {"session+journal", true, discardJournal{}}} {
		b.Run(tc.name, func(b *testing.B) {
			h := newHarness(b, func(c *Config) { c.Recorder = tc.journal })
			chunks := mcpChunks(4096)
			var total int
			for _, c := range chunks {
				total += len(c)
			}
			b.SetBytes(int64(total / len(chunks)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; {
				x := newExchange(h.srv, context.Background())
				x.sseBody = true
				if tc.session {
					x.sessionID = fmt.Sprint("s", i)
					x.openStream(context.Background(), false)
				}
				for _, c := range chunks {
					if i == b.N {
						break
					}
					x.process(c, false)
					i++
				}
				x.close()
			}
		})
	}
}

// discardJournal takes records and drops them: the cost of building them,
// without NATS.
type discardJournal struct{}

func (discardJournal) Append(session.Record) bool { return true }
