package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"runtime/trace"
	"testing"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// answerAll is an ext_proc server that answers every message, changing nothing, and
// sends on returned as each stream's handler returns.
type answerAll struct {
	procv3.UnimplementedExternalProcessorServer
	returned chan<- struct{}
}

func (a answerAll) Process(s procv3.ExternalProcessor_ProcessServer) error {
	defer func() { a.returned <- struct{}{} }()
	for {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		resp := &procv3.ProcessingResponse{}
		switch req.Request.(type) {
		case *procv3.ProcessingRequest_RequestHeaders:
			resp.Response = &procv3.ProcessingResponse_RequestHeaders{RequestHeaders: &procv3.HeadersResponse{}}
		case *procv3.ProcessingRequest_ResponseHeaders:
			resp.Response = &procv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &procv3.HeadersResponse{}}
		}
		if err := s.Send(resp); err != nil {
			return err
		}
	}
}

// TestTransportWaits traces real gRPC ext_proc exchanges in this process. On stream A the
// client holds its second message back and then sends it; on stream B it holds it back and
// cancels, as Envoy does on a message timeout (an RST_STREAM), and meanwhile, late in B's
// hold, stream C makes a quick exchange, so the connection's reader reads and blocks on its
// empty socket again during B's wait. The trace must show one reader, one writer and the
// three handlers, the reader blocked on its socket, A's long wait as a late message, and B
// as the one stream reset after a long wait, measured from the reader's block after C's
// exchange, not from the start of B's wait.
func TestTransportWaits(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.WaitForHandlers(true))
	returned := make(chan struct{}, 3)
	procv3.RegisterExternalProcessorServer(srv, answerAll{returned: returned})
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	const hold = 600 * time.Millisecond
	headers := &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{}}}
	respHeaders := &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &procv3.HttpHeaders{}}}
	// exchange sends the request headers; then, after hold, the response headers or, if
	// reset, nothing: it cancels the stream. during, if not nil, runs at 5/6 of the hold.
	exchange := func(hold time.Duration, reset bool, during func() error) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stream, err := procv3.NewExternalProcessorClient(conn).Process(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(headers); err != nil {
			return err
		}
		if _, err := stream.Recv(); err != nil {
			return err
		}
		if during != nil {
			time.Sleep(hold * 5 / 6)
			if err := during(); err != nil {
				return err
			}
			time.Sleep(hold / 6)
		} else {
			time.Sleep(hold)
		}
		if reset {
			cancel()
			if _, err := stream.Recv(); err == nil {
				return errors.New("a cancelled stream went on")
			}
			return nil
		}
		if err := stream.Send(respHeaders); err != nil {
			return err
		}
		if _, err := stream.Recv(); err != nil {
			return err
		}
		if err := stream.CloseSend(); err != nil {
			return err
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	}

	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Fatal(err)
	}
	errA := exchange(hold, false, nil)
	errB := exchange(hold, true, func() error { return exchange(0, false, nil) })
	for range 3 { // B's handler returns once the server has read its reset
		select {
		case <-returned:
		case <-time.After(30 * time.Second):
			t.Fatal("a handler did not return")
		}
	}
	srv.Stop() // waits for the handlers' goroutines to end (WaitForHandlers)
	trace.Stop()
	if err := errors.Join(errA, errB); err != nil {
		t.Fatal(err)
	}

	w, err := readTransportWaits(&buf)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", w)
	if w.Readers != 1 || w.Writers != 1 || w.Handlers != 3 {
		t.Errorf("%d readers, %d writers, %d handlers: want 1, 1 and 3", w.Readers, w.Writers, w.Handlers)
	}
	if w.ReaderIdleTime <= 0 || w.ReaderIdleTime > w.ReaderTime {
		t.Errorf("the reader was blocked on its socket %v of %v", w.ReaderIdleTime, w.ReaderTime)
	}
	if w.HandlerIdleMax < hold/2 {
		t.Errorf("the handlers' longest wait for a message is %v; the client held one back %v", w.HandlerIdleMax, hold)
	}
	if w.LateMessages != 1 || w.LateEnds != 0 {
		t.Errorf("%d late messages and %d late ends, want 1 (A's) and 0", w.LateMessages, w.LateEnds)
	}
	if w.Abandoned != 1 {
		t.Errorf("%d streams reset after a long wait, want 1 (B)", w.Abandoned)
	}
	// The reader last blocked after C's exchange, late in B's wait: the gap is the end of
	// the wait, not all of it (ordered by the test's sleeps: 5/6 of the hold before C).
	if w.AbandonedGapMax <= 0 || w.AbandonedGapMax >= hold/2 {
		t.Errorf("reset gap %v: want the time from the reader's block after C's exchange (about %v), not B's whole wait (%v)", w.AbandonedGapMax, hold/6, hold)
	}
}

// TestMessageTimeoutMatchesEnvoyConfig checks messageTimeout against the shipped
// envoy/envoy.yaml, which BenchmarkPerf runs.
func TestMessageTimeoutMatchesEnvoyConfig(t *testing.T) {
	cfg, err := os.ReadFile("../../envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*message_timeout:\s*(\S+)`).FindSubmatch(cfg)
	if m == nil {
		t.Fatal("envoy/envoy.yaml sets no message_timeout")
	}
	d, err := time.ParseDuration(string(m[1]))
	if err != nil || d != messageTimeout {
		t.Errorf("envoy/envoy.yaml's message_timeout is %s, messageTimeout %v", m[1], messageTimeout)
	}
}
