package journal

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// TestEmbeddedServerTakesLargestEvent: an event as large as ssetrack parses
// by default (1 MiB) plus its headers fits in one message of the embedded
// server, whose own default (1 MB) would refuse it.
func TestEmbeddedServerTakesLargestEvent(t *testing.T) {
	srv := startTestServer(t)
	nc := connect(t, srv.ClientURL())
	p := newPublisher(t, nc, Config{})
	data := append(append([]byte("id: big\ndata: "), bytes.Repeat([]byte("x"), 1<<20-20)...), "\n\n"...)
	p.Append(session.Record{Session: "S", Stream: "s1", FirstID: "big", LastID: "big", Count: 1,
		FirstSeq: 1, LastSeq: 1, Data: data, End: true})
	waitFor(t, 10*time.Second, "the large batch", func() bool { return len(readAll(t, jsOf(t, nc), Config{}, "S")) == 1 })
	if got := readAll(t, jsOf(t, nc), Config{}, "S")[0].Data; !bytes.Equal(got, data) {
		t.Errorf("stored %d bytes, want %d", len(got), len(data))
	}
}

// TestEmbeddedServerSetsBlockProfileRate checks ServerConfig.ProfBlockRate: the
// embedded server sets the process's block profile rate as it starts, so a
// rate set before it (as --pprof-sync did at first) is lost unless passed
// through. A blocking event after the start is recorded with a rate and not
// without one.
func TestEmbeddedServerSetsBlockProfileRate(t *testing.T) {
	t.Cleanup(func() { runtime.SetBlockProfileRate(0) })
	recorded := func(rate int) bool {
		runtime.SetBlockProfileRate(1) // what the server's start must override
		s, err := StartServer(ServerConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir(), ProfBlockRate: rate})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Shutdown(context.Background())
		before := blockOnceCount()
		blockOnce()
		return blockOnceCount() > before
	}
	if recorded(0) {
		t.Error("with ProfBlockRate 0 a blocking event was recorded: the server did not set the rate")
	}
	if !recorded(1) {
		t.Error("with ProfBlockRate 1 a blocking event was not recorded")
	}
}

// blockOnce blocks on a channel receive.
//
//go:noinline
func blockOnce() {
	c := make(chan struct{})
	go func() { time.Sleep(time.Millisecond); close(c) }()
	<-c
}

// blockOnceCount returns how many blocking events of blockOnce the block
// profile holds.
func blockOnceCount() int64 {
	n, _ := runtime.BlockProfile(nil)
	recs := make([]runtime.BlockProfileRecord, n+64)
	n, ok := runtime.BlockProfile(recs)
	if !ok {
		return blockOnceCount() // grew meanwhile
	}
	var count int64
	for _, r := range recs[:n] {
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if strings.HasSuffix(f.Function, ".blockOnce") {
				count += r.Count
				break
			}
			if !more {
				break
			}
		}
	}
	return count
}
