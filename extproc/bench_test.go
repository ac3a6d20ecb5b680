package extproc

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"

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

// benchChunks streams chunks through one ext_proc stream per b.N batch and
// reports the time per chunk round trip.
func benchChunks(b *testing.B, client procv3.ExternalProcessorClient, chunks [][]byte) {
	ctx := context.Background()
	var bytesPer int
	for _, c := range chunks {
		bytesPer += len(c)
	}
	b.SetBytes(int64(bytesPer / len(chunks)))
	b.ReportAllocs()
	b.ResetTimer()
	sent := 0
	for sent < b.N {
		stream, err := client.Process(ctx)
		if err != nil {
			b.Fatal(err)
		}
		stream.Send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{
			RequestHeaders: &procv3.HttpHeaders{Headers: headerMap(":method", "GET", "mcp-session-id", fmt.Sprint("bench-", sent)), EndOfStream: true}}})
		stream.Recv()
		stream.Send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{
			ResponseHeaders: &procv3.HttpHeaders{Headers: headerMap(sseHeaders()...)}}})
		stream.Recv()
		for i := 0; i < len(chunks) && sent < b.N; i++ {
			if err := stream.Send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{
				ResponseBody: &procv3.HttpBody{Body: chunks[i]}}}); err != nil {
				b.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				b.Fatal(err)
			}
			sent++
		}
		stream.CloseSend()
		stream.Recv()
	}
}

// BenchmarkChunkRoundTrip compares one response chunk through ssetrack
// against the same chunk through a do-nothing ext_proc server, both over
// real gRPC on an in-memory listener; report the ratio of the two.
func BenchmarkChunkRoundTrip(b *testing.B) {
	chunks := mcpChunks(1000)
	b.Run("noop", func(b *testing.B) {
		client := dialBuf(b, func(s *grpc.Server) { procv3.RegisterExternalProcessorServer(s, noopProcessor{}) })
		benchChunks(b, client, chunks)
	})
	b.Run("ssetrack", func(b *testing.B) {
		h := newHarness(b, nil)
		benchChunks(b, h.client, chunks)
	})
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
