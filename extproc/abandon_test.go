package extproc

import (
	"context"
	"testing"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// abandonedSamples returns the count and sum of ssetrack_responses_abandoned_seconds.
func abandonedSamples(t *testing.T, h *harness) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := h.srv.metrics.abandoned.(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// TestAbandonedResponses checks ssetrack_responses_abandoned_seconds: a stream Envoy ends
// while ssetrack waits for the response's headers or for more of its SSE body counts, with
// the time since ssetrack's last answer; a response that ended, one ssetrack does not
// stream, and one observed (Envoy waits for no answer) do not.
func TestAbandonedResponses(t *testing.T) {
	h := newHarness(t, nil)
	h.run(t, request{reqHeaders: []string{"mcp-session-id", "done"}, respHeaders: sseHeaders(), chunks: [][]byte{[]byte("id: 1\ndata: a\n\n")}})
	if n, _ := abandonedSamples(t, h); n != 0 {
		t.Fatalf("a response that ended counted as abandoned (%d)", n)
	}

	// end plays a stream as far as the messages given, answered one by one (none in
	// observability mode, where the last must be a body chunk with an event), waits
	// idle, then ends it as Envoy does when it gives up.
	end := func(observe bool, idle time.Duration, msgs ...*procv3.ProcessingRequest) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stream, err := h.client.Process(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen := testutil.ToFloat64(h.srv.metrics.eventsSeen)
		for _, m := range msgs {
			m.ObservabilityMode = observe
			if err := stream.Send(m); err != nil {
				t.Fatal(err)
			}
			if !observe {
				if _, err := stream.Recv(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if observe {
			// Nothing is answered: the body's event, seen, tells that the server
			// has handled every message.
			for deadline := time.Now().Add(10 * time.Second); testutil.ToFloat64(h.srv.metrics.eventsSeen) == seen; {
				if time.Now().After(deadline) {
					t.Fatal("observed stream: the server did not see its event")
				}
				time.Sleep(time.Millisecond)
			}
		}
		time.Sleep(idle)
		cancel()
	}
	reqHeaders := &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &procv3.HttpHeaders{Headers: headerMap(":method", "GET", ":path", "/mcp", "mcp-session-id", "s1"), EndOfStream: true}}}
	respHeaders := func(kv ...string) *procv3.ProcessingRequest {
		return &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{
			ResponseHeaders: &procv3.HttpHeaders{Headers: headerMap(kv...)}}}
	}
	chunk := func(s string) *procv3.ProcessingRequest {
		return &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{
			ResponseBody: &procv3.HttpBody{Body: []byte(s)}}}
	}
	// waitFor waits until the histogram holds want samples: the server sees the end of a
	// stream after the client's cancel returns.
	waitFor := func(want uint64) float64 {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			n, sum := abandonedSamples(t, h)
			if n == want {
				return sum
			}
			if n > want || time.Now().After(deadline) {
				t.Fatalf("ssetrack_responses_abandoned_seconds has %d samples, want %d", n, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	const idle = 30 * time.Millisecond
	end(false, idle, reqHeaders, respHeaders(sseHeaders()...), chunk("id: 1\ndata: a\n\n"))
	// The server notes its answer once Send returns, which may be after the client
	// has it: half the client's wait is a bound that holds.
	if sum := waitFor(1); sum < idle.Seconds()/2 {
		t.Errorf("abandoned mid-body after %v idle: observed %vs", idle, sum)
	}
	end(false, idle, reqHeaders)
	sum := waitFor(2)

	// Not counted: a response ssetrack does not stream (Envoy ends the stream after
	// its headers) and an observed one.
	end(false, 0, reqHeaders, respHeaders(":status", "200", "content-type", "application/json"))
	end(true, 0, reqHeaders, respHeaders(sseHeaders()...), chunk("id: 1\ndata: a\n\n"))
	// A counted stream after them: if either had counted, the count overshoots,
	// within moments of the last one's end.
	end(false, 0, reqHeaders, respHeaders(sseHeaders()...))
	if got := waitFor(3); got < sum {
		t.Errorf("sum went down: %v then %v", sum, got)
	}
	for range 20 {
		time.Sleep(10 * time.Millisecond)
		if n, _ := abandonedSamples(t, h); n != 3 {
			t.Fatalf("ssetrack_responses_abandoned_seconds has %d samples, want 3: a response not awaited counted", n)
		}
	}
}

// TestEndedStreamsNotAbandoned: a response ssetrack itself ends as it stops
// (Server.EndStreams, an immediate response) is not counted as abandoned by Envoy.
func TestEndedStreamsNotAbandoned(t *testing.T) {
	rep := &replayer{}
	h := newHarness(t, func(c *Config) { c.Recorder, c.Replayer = rep, rep })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.client.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exchange := func(r *procv3.ProcessingRequest) *procv3.ProcessingResponse {
		t.Helper()
		if err := stream.Send(r); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	exchange(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &procv3.HttpHeaders{Headers: headerMap(":method", "GET", ":path", "/mcp", "mcp-session-id", "E"), EndOfStream: true}}})
	exchange(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &procv3.HttpHeaders{Headers: headerMap(sseHeaders()...)}}})
	body := func(s string) *procv3.ProcessingRequest {
		return &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{ResponseBody: &procv3.HttpBody{Body: []byte(s)}}}
	}
	exchange(body("id: 1\ndata: a\n\n"))
	h.srv.EndStreams()
	if exchange(body("id: 2\ndata: b\n\n")).GetImmediateResponse() == nil {
		t.Fatal("after EndStreams, a chunk was not answered with an immediate response")
	}
	if n := testutil.ToFloat64(h.srv.metrics.streamsEnded); n != 1 {
		t.Fatalf("ssetrack_streams_ended_total = %v, want 1", n)
	}
	// Envoy ends the stream after an immediate response.
	cancel()
	for range 20 {
		time.Sleep(10 * time.Millisecond)
		if n, _ := abandonedSamples(t, h); n != 0 {
			t.Fatalf("a response ssetrack ended counted as abandoned (%d)", n)
		}
	}
}
