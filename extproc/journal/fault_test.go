package journal

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
	"github.com/ssetrack/ssetrack/extproc/session"
)

// buildNATSServer builds the nats-server binary from the module cache.
func buildNATSServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nats-server")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("SKIPPING fault test: cannot build nats-server: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// natsProc is a nats-server child process.
type natsProc struct {
	cmd *exec.Cmd
}

func startNATS(t *testing.T, bin string, port int, dir string) *natsProc {
	t.Helper()
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatal("nats-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &natsProc{cmd: cmd}
}

func (n *natsProc) stop() {
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Kill()
		<-done
	}
}

// TestServerRestart stops a separate nats-server for a few seconds while
// records are appended, restarts it on the same port and store, and checks
// every appended event is stored exactly once.
func TestServerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test builds and restarts a nats-server process")
	}
	bin := buildNATSServer(t)
	port, dir := freePort(t), t.TempDir()
	srv := startNATS(t, bin, port, dir)
	defer func() { srv.stop() }()

	nc := connect(t, fmt.Sprintf("nats://127.0.0.1:%d", port))
	cfg := Config{PublishTimeout: time.Second, MaxInFlight: 64}
	p := newPublisher(t, nc, cfg)

	const sessions, perSession = 8, 1500
	next := make([]int, sessions)
	appendRound := func() {
		for s := range sessions {
			n := 3
			if next[s]+n > perSession {
				n = perSession - next[s]
			}
			if n <= 0 {
				continue
			}
			if !p.Append(record(fmt.Sprintf("fault-%d", s), "s", next[s]+1, n, false)) {
				t.Fatal("append refused")
			}
			next[s] += n
		}
	}
	done := func() bool { return next[sessions-1] >= perSession }
	rounds := 0
	stopped := false
	for !done() {
		appendRound()
		rounds++
		switch rounds {
		case 100:
			srv.stop()
			stopped = true
			t.Logf("server stopped after %d events/session", next[0])
		case 300:
			srv = startNATS(t, bin, port, dir)
			stopped = false
			t.Logf("server restarted after %d events/session", next[0])
		}
		time.Sleep(10 * time.Millisecond) // ~3 s of downtime
	}
	if stopped {
		srv = startNATS(t, bin, port, dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	st := statsOf(t, p)
	t.Logf("stats %+v", st)
	if st.Dropped != 0 || st.Events != sessions*perSession {
		t.Errorf("dropped %d, published %d events, want %d", st.Dropped, st.Events, sessions*perSession)
	}
	js := jsOf(t, nc)
	for s := range sessions {
		sid := fmt.Sprintf("fault-%d", s)
		seen := map[string]int{}
		for ev, err := range reader(t, js, cfg).Events(ctx, sid, history.ReadOptions{}) {
			if err != nil {
				t.Fatal(err)
			}
			seen[ev.ID]++
		}
		for i := 1; i <= perSession; i++ {
			if c := seen[fmt.Sprintf("s-%d", i)]; c != 1 {
				t.Fatalf("%s: event s-%d stored %d times", sid, i, c)
			}
		}
		if len(seen) != perSession {
			t.Errorf("%s: %d distinct events stored, want %d", sid, len(seen), perSession)
		}
	}
}

// TestNumbersAfterOutage: a session first named while NATS is away cannot
// read its last stored number, so it numbers its events provisionally
// (session.SeqBase). Once NATS is back, the journal reads the number
// before it stores them: they follow the events stored before the outage,
// with no number used twice and none skipped, and the session numbers on
// from there.
func TestNumbersAfterOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test builds and restarts a nats-server process")
	}
	bin := buildNATSServer(t)
	port, dir := freePort(t), t.TempDir()
	srv := startNATS(t, bin, port, dir)
	defer func() { srv.stop() }()
	nc := connect(t, fmt.Sprintf("nats://127.0.0.1:%d", port))
	cfg := Config{PublishTimeout: 500 * time.Millisecond}
	p := newPublisher(t, nc, cfg)
	const sid = "outage"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !p.Append(record(sid, "s", 1, 10, true)) {
		t.Fatal("append refused")
	}
	if err := p.Flush(ctx, sid); err != nil {
		t.Fatal(err)
	}

	srv.stop()
	tb := session.NewTable(session.Config{Loader: p})
	defer tb.Close()
	lctx, lcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	s, err := tb.Acquire(lctx, sid)
	lcancel()
	if err != nil {
		t.Fatal(err)
	}
	if !s.Unloaded() {
		t.Fatal("the session's history loaded with NATS away")
	}
	st := s.OpenStream(session.Resume{})
	deliver := func(first, n int) session.Record {
		rec := record(sid, "t", first, n, false)
		d := st.Begin()
		defer d.End()
		rec.Base = d.SeqBase()
		_, ids := events("t", first, n)
		for i, id := range ids {
			seq, dup := d.Deliver([]byte(id), true)
			if dup {
				t.Fatalf("%s taken for a duplicate", id)
			}
			if i == 0 {
				rec.FirstSeq = seq
			}
			rec.LastSeq = seq
		}
		return rec
	}
	rec := deliver(1, 3)
	if rec.Base == nil || rec.FirstSeq != 1 || rec.LastSeq != 3 {
		t.Fatalf("record numbered %d..%d, base %v; want 1..3 counted from a base", rec.FirstSeq, rec.LastSeq, rec.Base)
	}
	if !p.Append(rec) {
		t.Fatal("append refused")
	}

	srv = startNATS(t, bin, port, dir)
	var batches []history.Batch
	waitFor(t, 20*time.Second, "the outage's events stored", func() bool {
		batches = batches[:0]
		for b, err := range reader(t, jsOf(t, nc), cfg).Batches(ctx, sid, history.ReadOptions{}) {
			if err != nil {
				return false
			}
			batches = append(batches, b)
		}
		return len(batches) == 2
	})
	if b := batches[1]; b.FirstSeq != 11 || b.LastSeq != 13 || b.FirstID != "t-1" {
		t.Errorf("the outage's batch holds %s..%s numbered %d..%d, want t-1..t-3 numbered 11..13",
			b.FirstID, b.LastID, b.FirstSeq, b.LastSeq)
	}
	if v, ok := rec.Base.Value(); !ok || v != 10 {
		t.Errorf("base %d (resolved %v), want 10", v, ok)
	}
	if next := deliver(4, 1); next.Base != nil || next.FirstSeq != 14 {
		t.Errorf("the next event numbered %d (base %v), want 14, final", next.FirstSeq, next.Base)
	}
}

// TestProvisionalGivenUp: records numbered against a base the journal
// cannot read within the publish retry budget (NATS stays away) are given
// up and counted as lost, as a batch that cannot be published is: stored
// under numbers made up, they could share numbers with stored events.
func TestProvisionalGivenUp(t *testing.T) {
	srv := startTestServer(t)
	nc := connect(t, srv.ClientURL())
	p := newPublisher(t, nc, Config{PublishTimeout: 200 * time.Millisecond, DuplicateWindow: time.Second})
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec := record("away", "s", 1, 2, true)
	rec.Base = new(session.SeqBase)
	if !p.Append(rec) {
		t.Fatal("append refused")
	}
	waitFor(t, 20*time.Second, "the record given up", func() bool { return statsOf(t, p).Dropped == 1 })
	if st := statsOf(t, p); st.QueueDepth != 0 || st.Batches != 0 || st.PublishErrors != 0 || st.PublishRetries != 0 {
		t.Errorf("after giving up: %+v; want nothing published, nothing tried", st)
	}
	if _, ok := rec.Base.Value(); ok {
		t.Error("base resolved with NATS away")
	}
}
