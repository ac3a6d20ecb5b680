package e2e

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal"
)

// perfNoopJournalEnv, set with perfNoopEnv, names a directory: the do-nothing server then
// also persists every response body chunk through JetStream (noopJournal). It is the floor
// of any ext_proc that keeps an SSE stream in JetStream, what ssetrack's journal is
// measured against: the bytes go to an embedded nats-server's file store as they come,
// with none of ssetrack's parsing, batching, ids, headers or session state.
const perfNoopJournalEnv = "SSETRACK_PERF_NOOP_JOURNAL_DIR"

// noopJournal publishes response body chunks, as received, to a JetStream stream of an
// embedded nats-server, the way ssetrack's embedded journal reaches its server: the same
// server (journal.StartServer), an in-process connection (journal.Server.InProcess) and
// asynchronous publishes. It adds nothing of its own: one message per chunk (Envoy's
// chunks of a flat-out stream are tens of KiB, much like ssetrack's batches), one subject
// per HTTP stream, no message id (so no duplicate tracking), no headers, and nothing waits
// for an ack: only failures are counted.
type noopJournal struct {
	srv    *journal.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	next   atomic.Uint64 // names the next HTTP stream's subject
	failed atomic.Int64  // publishes refused or not acknowledged

	once sync.Once
}

// startNoopJournal starts the server with its store in dir and creates the stream.
func startNoopJournal(dir string) (*noopJournal, error) {
	srv, err := journal.StartServer(journal.ServerConfig{Listen: "127.0.0.1:0", DataDir: dir, Name: "noop-journal"})
	if err != nil {
		return nil, err
	}
	stop := func() { _ = srv.Shutdown(context.Background()) }
	nc, err := nats.Connect("", srv.InProcess())
	if err != nil {
		stop()
		return nil, err
	}
	// ssetrack's journal never holds up an answer: it queues records and publishes them
	// on a goroutine of its own. So that this one does not either, publishes may wait for
	// their acks without bound (PublishMsgAsync would otherwise stall the stream's
	// goroutine, and drop the chunk, once its limit of unacknowledged ones is reached).
	j := &noopJournal{srv: srv, nc: nc}
	j.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(math.MaxInt32),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) { j.fail(err) }))
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = j.js.CreateStream(ctx, jetstream.StreamConfig{
			Name: "FLOOR", Subjects: []string{"floor.>"}, Storage: jetstream.FileStorage,
			MaxBytes: -1, MaxMsgs: -1, AllowDirect: true,
		})
		cancel()
	}
	if err != nil {
		nc.Close()
		stop()
		return nil, err
	}
	return j, nil
}

// subject returns a new HTTP stream's subject.
func (j *noopJournal) subject() string {
	return "floor." + strconv.FormatUint(j.next.Add(1), 10)
}

// publish persists one chunk asynchronously. A failure, refused here or reported later by
// the JetStream context's error handler, is counted and the first one printed to stderr
// (the benchmark's output shows it), never returned: the stream goes on.
func (j *noopJournal) publish(subject string, body []byte) {
	if len(body) == 0 {
		return
	}
	if _, err := j.js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: body}); err != nil {
		j.fail(err)
	}
}

func (j *noopJournal) fail(err error) {
	j.failed.Add(1)
	j.once.Do(func() { fmt.Fprintf(os.Stderr, "noop journal: publish: %v\n", err) })
}

// close waits (a while) for the acks of the publishes in flight, then closes the
// connection and stops the server.
func (j *noopJournal) close() {
	select {
	case <-j.js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		fmt.Fprintf(os.Stderr, "noop journal: %d publishes not acknowledged at exit\n", j.js.PublishAsyncPending())
	}
	j.nc.Close()
	_ = j.srv.Shutdown(context.Background())
	if n := j.failed.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "noop journal: %d publishes failed\n", n)
	}
}
