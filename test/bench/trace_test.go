package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime/trace"
	"testing"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// answerAll is an ext_proc server that answers every message, changing nothing.
type answerAll struct {
	procv3.UnimplementedExternalProcessorServer
}

func (answerAll) Process(s procv3.ExternalProcessor_ProcessServer) error {
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

// TestTransportWaits traces real gRPC ext_proc exchanges in this process: on one stream
// the client holds its second message back and then sends it; on another it holds it back
// and then cancels, as Envoy does on a message timeout (an RST_STREAM). The trace must show
// the connection's reader and writer and both streams' handlers, the reader blocked on its
// empty socket, a handler waiting at least about the hold, and one stream, the second,
// reset after such a wait.
func TestTransportWaits(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	procv3.RegisterExternalProcessorServer(srv, answerAll{})
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	const hold = 300 * time.Millisecond
	// exchange sends the request headers, then after hold the response headers or, if
	// reset, nothing: it cancels the stream.
	exchange := func(reset bool) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stream, err := procv3.NewExternalProcessorClient(conn).Process(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{}}}); err != nil {
			return err
		}
		if _, err := stream.Recv(); err != nil {
			return err
		}
		time.Sleep(hold)
		if reset {
			cancel()
			if _, err := stream.Recv(); err == nil {
				return errors.New("a cancelled stream went on")
			}
			return nil
		}
		if err := stream.Send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &procv3.HttpHeaders{}}}); err != nil {
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
	err = errors.Join(exchange(false), exchange(true))
	time.Sleep(50 * time.Millisecond) // the server's handler of the reset stream returns
	trace.Stop()
	if err != nil {
		t.Fatal(err)
	}

	w, err := readTransportWaits(&buf)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", w)
	if w.Readers != 1 || w.Writers != 1 || w.Handlers != 2 {
		t.Errorf("%d readers, %d writers, %d handlers: want 1, 1 and 2", w.Readers, w.Writers, w.Handlers)
	}
	if w.ReaderIdleTime <= 0 || w.ReaderIdleTime > w.ReaderTime {
		t.Errorf("the reader was blocked on its socket %v of %v", w.ReaderIdleTime, w.ReaderTime)
	}
	if w.HandlerIdleMax < hold/2 {
		t.Errorf("the handlers' longest wait for a message is %v; the client held one back %v", w.HandlerIdleMax, hold)
	}
	if w.Abandoned != 1 {
		t.Errorf("%d streams reset after a long wait, want 1 (the second)", w.Abandoned)
	}
	if w.AbandonedGapMax <= 0 || w.AbandonedGapMax > w.HandlerIdleMax {
		t.Errorf("reset gap %v: want within the handler's wait (%v)", w.AbandonedGapMax, w.HandlerIdleMax)
	}
}
