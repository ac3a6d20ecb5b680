package journal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func shutdownJournal(t testing.TB, j *Journal) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := j.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// TestOpenEmbedded: with no URL, Open runs the embedded server, is ready at
// once, publishes, and Shutdown stops everything.
func TestOpenEmbedded(t *testing.T) {
	reg := prometheus.NewRegistry()
	j, err := Open(context.Background(), Options{
		Server:     ServerConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir()},
		Config:     Config{Batch: BatchConfig{MaxDelay: 5 * time.Millisecond}},
		Logger:     testLog(),
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Ready(); err != nil {
		t.Fatalf("embedded journal not ready after Open: %v", err)
	}
	j.Append(record("emb", "s", 1, 3, true))
	waitFor(t, 5*time.Second, "acks", func() bool { return gatherStats(t, reg).Events == 3 })
	nc := connect(t, j.ServerURL())
	if got := len(readAll(t, jsOf(t, nc), Config{}, "emb")); got != 1 {
		t.Errorf("%d batches stored, want 1", got)
	}
	nc.Close()
	shutdownJournal(t, j)
	if err := j.Ready(); !errors.Is(err, ErrNotReady) {
		t.Errorf("ready after shutdown: %v", err)
	}
	if !errors.Is(j.Shutdown(context.Background()), ErrClosed) {
		t.Error("second shutdown did not return ErrClosed")
	}
}

// TestOpenDegraded: Open against a NATS that is not there yet returns a
// journal that queues (bounded, counting the overflow) and says why it is
// not ready; once a server appears on that address, the queued records are
// published, in order, exactly once.
func TestOpenDegraded(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	reg := prometheus.NewRegistry()
	const queue = 5
	j, err := Open(context.Background(), Options{
		Conn:       ConnConfig{URLs: []string{"nats://" + addr}, ReconnectWait: 50 * time.Millisecond},
		Config:     Config{QueueSize: queue, Batch: BatchConfig{MaxDelay: 5 * time.Millisecond}},
		Logger:     testLog(),
		Registerer: reg,
	})
	if err != nil {
		t.Fatalf("open without NATS: %v", err)
	}
	defer shutdownJournal(t, j)
	err = j.Ready()
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "NATS connection") {
		t.Fatalf("ready without NATS: %v", err)
	}
	t.Logf("readiness without NATS: %v", err)
	if _, err := j.Load(context.Background(), "deg"); !errors.Is(err, ErrNotReady) {
		t.Errorf("load without NATS: %v", err)
	}
	accepted := 0
	for i := 1; i <= 8; i++ {
		if j.Append(record("deg", "s", i, 1, false)) {
			accepted++
		}
	}
	st := gatherStats(t, reg)
	if accepted != queue || st.DroppedQueueFull != 8-queue || st.QueueDepth != queue {
		t.Fatalf("accepted %d of 8, stats %+v; want %d accepted, %d dropped", accepted, st, queue, 8-queue)
	}

	srv, err := StartServer(ServerConfig{Listen: addr, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) }) // after the journal's shutdown
	waitFor(t, 10*time.Second, "ready", func() bool { return j.Ready() == nil })
	waitFor(t, 10*time.Second, "acks", func() bool { return gatherStats(t, reg).Events == queue })
	nc := connect(t, srv.ClientURL())
	var ids []string
	for _, b := range readAll(t, jsOf(t, nc), Config{}, "deg") {
		ids = append(ids, fmt.Sprintf("%d-%d", b.FirstSeq, b.LastSeq))
	}
	if got := strings.Join(ids, " "); got != "1-5" {
		t.Errorf("stored batches %q, want the queued records 1-5 in one batch", got)
	}
	if st := gatherStats(t, reg); st.QueueDepth != 0 {
		t.Errorf("queue depth %d after the acks", st.QueueDepth)
	}
	if h, err := j.Load(context.Background(), "deg"); err != nil || h == nil || h.Seq != queue {
		t.Errorf("load once ready: %+v, %v", h, err)
	}
}

// TestOpenNeverReady: records queued while NATS never came are counted as
// lost at Shutdown, and Shutdown does not hang.
func TestOpenNeverReady(t *testing.T) {
	reg := prometheus.NewRegistry()
	j, err := Open(context.Background(), Options{
		Conn:       ConnConfig{URLs: []string{fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))}},
		Logger:     testLog(),
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	j.Append(record("never", "s", 1, 2, true))
	shutdownJournal(t, j)
	if st := gatherStats(t, reg); st.Dropped != 1 || st.QueueDepth != 0 {
		t.Errorf("stats after shutdown %+v, want 1 record dropped", st)
	}
	if j.Append(record("never", "s", 3, 1, true)) {
		t.Error("append after shutdown accepted")
	}
}

// TestOpenEmbeddedFailsFast: an embedded server that cannot start fails
// Open at once with the server's reason, not after ReadyTimeout.
func TestOpenEmbeddedFailsFast(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, sc := range map[string]ServerConfig{
		"port in use":       {Listen: busy.Addr().String(), DataDir: t.TempDir()},
		"store not a dir":   {Listen: "127.0.0.1:0", DataDir: filepath.Join(notDir, "js")},
		"listen unparsable": {Listen: "nohost", DataDir: t.TempDir()},
	} {
		t.Run(name, func(t *testing.T) {
			// A ReadyTimeout far above the deadline below: a failure that
			// is only noticed by the timeout fails the test.
			sc.ReadyTimeout = time.Minute
			done := make(chan error, 1)
			go func() {
				j, err := Open(context.Background(), Options{Server: sc, Logger: testLog()})
				if err == nil {
					shutdownJournal(t, j)
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("Open succeeded")
				}
				t.Logf("Open: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("Open did not fail before the server's ReadyTimeout")
			}
		})
	}
}

// TestOptionsValidate: every problem is reported at once, each a
// *FieldError naming its field.
func TestOptionsValidate(t *testing.T) {
	o := Options{
		Conn:   ConnConfig{URLs: []string{"nats://x"}, CredsFile: "c", NKeySeedFile: "n", TLSCertFile: "cert.pem"},
		Config: Config{Replicas: 5, QueueSize: -1, Stream: "a.b", PublishTimeout: 3 * time.Minute},
	}
	err := o.Validate()
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("validate: %v", err)
	}
	var fields []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		for _, e := range e.(interface{ Unwrap() []error }).Unwrap() {
			var fe *FieldError
			if !errors.As(e, &fe) {
				t.Fatalf("%v is not a *FieldError", e)
			}
			fields = append(fields, fe.Field)
		}
	}
	want := "Config.Replicas Config.Stream Config.QueueSize Config.PublishTimeout Conn.CredsFile Conn.TLSCertFile"
	if got := strings.Join(fields, " "); got != want {
		t.Errorf("fields %q, want %q", got, want)
	}
	flag := map[string]string{"Config.Replicas": "--replicas"}
	var fe *FieldError
	errors.As(err, &fe)
	if got := fe.Describe(func(f string) string {
		if n, ok := flag[f]; ok {
			return n
		}
		return f
	}); got != "--replicas 5: want 1..3" {
		t.Errorf("described as %q", got)
	}
	if err := (Options{}).Validate(); err == nil || !strings.Contains(err.Error(), "Server.DataDir") {
		t.Errorf("embedded without a data dir: %v", err)
	}
	if err := (Options{Server: ServerConfig{DataDir: "d"}}).Validate(); err != nil {
		t.Errorf("zero options with a data dir: %v", err)
	}
}
