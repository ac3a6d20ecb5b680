package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ssetrack/ssetrack/test/harness"
)

// BenchmarkProcessor measures the ext_proc server process alone, without Envoy: this test
// process plays Envoy's part over real gRPC (TCP on loopback), PERF_STREAMS (default 64)
// concurrent ext_proc streams, each a request's headers, an SSE response's headers and then
// body chunks of 32 MCP notifications of 256 B (8 KiB), every chunk waiting for its answer.
// Each stream is a new session. The servers, each its own process:
//
//	noop                the do-nothing ext_proc server of perf_test.go
//	noop-journal        the same, which also publishes every body chunk to a JetStream
//	                    stream of its own embedded nats-server (perf_floor_test.go): the
//	                    floor of an ext_proc that persists the stream through JetStream
//	ssetrack            the built ssetrack, embedded JetStream journal on
//	ssetrack-nojournal  the same with --journal=false
//
// PERF_ROUNDS (default 1) runs every server that many times, in turn: with rounds
// alternated, what changes during a run (the page cache filling with the journals' writes,
// say) weighs on every server alike, which -count, running each server's rounds back to
// back, does not. Every stream of every round is a new session.
//
// One op is one event. server-cpu-us/ev is the server process's user + system CPU per
// event (from /proc, 10 ms ticks), read after the round and a pause for the journal to
// publish what it holds; xnoop-cpu is that over noop's in the same run, and xfloor-cpu
// over noop-journal's. peak-rss-MiB is the process's VmHWM, its whole life so far. With no Envoy, no
// upstream and no HTTP client sharing the measurement, this is the steadiest measure of
// what ssetrack costs per event; BenchmarkPerf gives the whole path.
//
//	go test -run '^$' -bench Processor -benchtime 2000000x ./test/
func BenchmarkProcessor(b *testing.B) {
	streams := perfEnvInt(b, "PERF_STREAMS", 64)
	const perChunk, evSize = 32, 256
	noopPort, noopProc := startNoopProcess(b, false)
	floorPort, floorProc := startNoopProcess(b, true)
	sse := harness.StartSsetrack(b, harness.SsetrackOptions{LogLevel: "warn"})
	sseNJ := harness.StartSsetrack(b, harness.SsetrackOptions{Name: "ssetrack-nojournal", LogLevel: "warn", Args: []string{"--journal=false"}})
	servers := []struct {
		name string
		port int
		proc *harness.Process
	}{
		{"noop", noopPort, noopProc},
		{"noop-journal", floorPort, floorProc},
		{"ssetrack", sse.GRPCPort, sse.Proc},
		{"ssetrack-nojournal", sseNJ.GRPCPort, sseNJ.Proc},
	}
	var sessions atomic.Int64 // every stream a new session, in every round
	for range perfEnvInt(b, "PERF_ROUNDS", 1) {
		var noopCPU, floorCPU float64 // this round's
		for _, srv := range servers {
			b.Run(srv.name, func(b *testing.B) {
				conn, err := grpc.NewClient(harness.Addr(srv.port), grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				client := procv3.NewExternalProcessorClient(conn)
				chunks := max(1, b.N/(streams*perChunk))
				drive := func(id string, n int) error { return driveProcessor(client, id, n, perChunk, evSize) }
				if err := drive(fmt.Sprintf("warm-%s-%d", srv.name, sessions.Add(1)), 8); err != nil {
					b.Fatal(err)
				}
				cpu0 := perfCPU(srv.proc)
				b.ResetTimer()
				var wg sync.WaitGroup
				errs := make(chan error, streams)
				for range streams {
					wg.Go(func() { errs <- drive(fmt.Sprintf("proc-%s-%d", srv.name, sessions.Add(1)), chunks) })
				}
				wg.Wait()
				b.StopTimer()
				close(errs)
				for err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
				time.Sleep(300 * time.Millisecond) // the journal publishes what it holds
				events := float64(streams * chunks * perChunk)
				cpu := float64((perfCPU(srv.proc) - cpu0).Microseconds()) / events
				b.ReportMetric(cpu, "server-cpu-us/ev")
				if rss := peakRSS(srv.proc); rss > 0 {
					b.ReportMetric(rss, "peak-rss-MiB")
				}
				switch {
				case srv.name == "noop":
					noopCPU = cpu
				case noopCPU > 0:
					b.ReportMetric(cpu/noopCPU, "xnoop-cpu")
				}
				switch {
				case srv.name == "noop-journal":
					floorCPU = cpu
				case floorCPU > 0:
					b.ReportMetric(cpu/floorCPU, "xfloor-cpu")
				}
			})
		}
	}
}

// driveProcessor plays one SSE response through an ext_proc server as Envoy sends it:
// request headers with an mcp-session-id, response headers, then n body chunks of perChunk
// events of evSize bytes, each answered before the next is sent.
func driveProcessor(client procv3.ExternalProcessorClient, session string, n, perChunk, evSize int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := client.Process(ctx)
	if err != nil {
		return err
	}
	headers := func(kv ...string) *corev3.HeaderMap {
		m := &corev3.HeaderMap{}
		for i := 0; i+1 < len(kv); i += 2 {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return m
	}
	exchange := func(r *procv3.ProcessingRequest) error {
		if err := st.Send(r); err != nil {
			return err
		}
		_, err := st.Recv()
		return err
	}
	if err := exchange(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{
		Headers: headers(":method", "GET", ":path", "/mcp", "mcp-session-id", session), EndOfStream: true}}}); err != nil {
		return err
	}
	if err := exchange(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &procv3.HttpHeaders{
		Headers: headers(":status", "200", "content-type", "text/event-stream")}}}); err != nil {
		return err
	}
	pad := strings.Repeat("x", evSize)
	for c := range n {
		var body []byte
		for e := range perChunk {
			k := c*perChunk + e
			start := len(body)
			body = fmt.Appendf(body, "id: %d\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":%d,\"message\":\"", k, k)
			body = append(body, pad[:max(0, evSize-(len(body)-start)-6)]...)
			body = append(body, "\"}}\n\n"...)
		}
		if err := exchange(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{ResponseBody: &procv3.HttpBody{
			Body: body, EndOfStream: c == n-1}}}); err != nil {
			return err
		}
	}
	return st.CloseSend()
}

// peakRSS returns p's peak resident set size (VmHWM) in MiB, from /proc (Linux); 0 where
// /proc cannot tell.
func peakRSS(p *harness.Process) float64 {
	kib, err := procStatusKiB(p.Pid(), "VmHWM")
	if err != nil {
		return 0
	}
	return float64(kib) / 1024
}
