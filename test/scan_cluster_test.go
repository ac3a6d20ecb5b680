package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal"
	"github.com/ssetrack/ssetrack/extproc/journal/history"
	"github.com/ssetrack/ssetrack/extproc/session"
	"github.com/ssetrack/ssetrack/test/harness"
)

// TestScanOnReplicatedStream reads a session's batches from an R3 stream of a real 3-node
// cluster 100 times through each node, each read with a 1 s budget, with an ordered
// consumer (history.Scan up to the last batch) and with batched direct gets
// (history.ReadRange, as a history load and a long replay read them). A pull sent before
// the consumer's interest has reached the client's server finds no responder; a consumer
// iterator then waits seconds for a missed heartbeat, which stalled 3 to 4 reads in 100
// here. Each read must end with every batch, in order.
func TestScanOnReplicatedStream(t *testing.T) {
	if !journalEnabled() {
		t.Skip("E2E_SSETRACK_ARGS has --journal=false: this test checks JetStream")
	}
	cl := harness.StartNATSCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cfg, sid := writeScanSession(t, ctx, cl.URLs())
	subj := journal.Subject(cfg.SubjectPrefix, sid)
	for _, node := range cl.Nodes {
		js := harness.JetStream(t, node.URL())
		stream, err := js.Stream(ctx, cfg.Stream)
		if err != nil {
			t.Fatal(err)
		}
		last, err := history.LastMessage(ctx, stream, subj)
		if err != nil || last == nil {
			t.Fatalf("%s: last batch: %v, %v", node.Name, last, err)
		}
		stalled := 0
		for i := range 200 {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			var got []uint64
			collect := func(b history.Batch) error { got = append(got, b.FirstSeq); return nil }
			if i%2 == 0 {
				err = history.Scan(rctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}}, last.Sequence, collect)
			} else {
				err = history.ReadRange(rctx, js, stream, subj, 1, last.Sequence, collect)
			}
			rcancel()
			if err != nil || len(got) != scanBatches {
				if stalled++; stalled <= 3 {
					t.Errorf("%s: a read ended with %v after %d of %d batches", node.Name, err, len(got), scanBatches)
				}
				continue
			}
			for i, s := range got {
				if s != uint64(4*i+1) {
					t.Fatalf("%s: batches out of order: %v", node.Name, got)
				}
			}
		}
		if stalled > 0 {
			t.Errorf("%s: %d of 200 reads did not end with every batch within 1 s", node.Name, stalled)
		}
	}
}

// scanBatches is how many batches writeScanSession stores: 4 events each.
const scanBatches = 12

// writeScanSession stores scanBatches batches of one session on an R3 stream of the
// cluster at urls, through the journal's Publisher, and returns the journal's
// configuration and the session id.
func writeScanSession(t *testing.T, ctx context.Context, urls string) (journal.Config, string) {
	t.Helper()
	nc, err := nats.Connect(urls)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cfg := journal.Config{Stream: "SCAN", SubjectPrefix: "scan.events", Bucket: "scan-sessions", Replicas: 3,
		Batch: journal.BatchConfig{MaxEvents: 4, MaxDelay: time.Hour}}
	const sid = "scan-session"
	// In its first second a new cluster may lose a JetStream API reply while its routes
	// settle, and the request then waits out its context: each try gets 5 s.
	var p *journal.Publisher
	harness.WaitUntil(t, 50*time.Second, func() error {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		defer acancel()
		p, err = journal.New(actx, nc, cfg, nil, nil)
		return err
	})
	for i := range scanBatches {
		var data strings.Builder
		for e := 4 * i; e < 4*i+4; e++ {
			fmt.Fprintf(&data, "id: e%d\ndata: %d\n\n", e, e)
		}
		p.Append(session.Record{Session: sid, Stream: "s", Count: 4, Data: []byte(data.String()),
			FirstSeq: uint64(4*i + 1), LastSeq: uint64(4*i + 4), FirstID: fmt.Sprintf("e%d", 4*i), LastID: fmt.Sprintf("e%d", 4*i+3)})
	}
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	return cfg, sid
}

// TestDirectGetsPastFrozenReplica stops the stream leader's node of a 3-node cluster with
// SIGSTOP, as a frozen process or a partition would, and reads a session's last batch, its
// first, and all of its batches with batched direct gets (as a history load and a replay
// do) 60 times each through another node, each read with a 500 ms budget, from the first
// read that succeeds on. Single tries then still go unanswered, 11 to 24 in 30 here; every
// read must succeed anyway (history.DirectGet and history.ReadRange try again with what is
// left of the budget).
func TestDirectGetsPastFrozenReplica(t *testing.T) {
	if !journalEnabled() {
		t.Skip("E2E_SSETRACK_ARGS has --journal=false: this test checks JetStream")
	}
	cl := harness.StartNATSCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg, sid := writeScanSession(t, ctx, cl.URLs())
	subj := journal.Subject(cfg.SubjectPrefix, sid)

	// With this idle stream, freezing a follower cost direct gets through the other nodes
	// nothing, freezing the leader 11 to 24 of 30 single tries: the leader is frozen.
	leader := harness.WaitStreamHealthy(t, harness.JetStream(t, cl.URLs()), cfg.Stream, 3, time.Minute)
	frozen := cl.Node(leader)
	via := cl.Nodes[0]
	if via == frozen {
		via = cl.Nodes[1]
	}
	viaJS := harness.JetStream(t, via.URL())
	stream, err := viaJS.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	lastBatch, err := history.LastMessage(ctx, stream, subj)
	if err != nil {
		t.Fatal(err)
	}
	lastSeq := lastBatch.Sequence
	if err := frozen.Proc().Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = frozen.Proc().Signal(syscall.SIGCONT) })

	// Just after the freeze, an ordered consumer's read (history.Scan: tail --follow, reads
	// from a time, servers before 2.11) may fail, but returns within its budget:
	// nats.go creates the consumer in the fetch with timeouts and retries of its own, which
	// held a read here until the test's 10-minute timeout.
	for range 10 {
		returned := make(chan error, 1)
		go func() {
			rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer rcancel()
			returned <- history.Scan(rctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}}, lastSeq,
				func(history.Batch) error { return errors.New("stop") })
		}()
		select {
		case <-returned:
		case <-time.After(5 * time.Second):
			t.Fatalf("a Scan with a 500 ms budget had not returned after 5 s, with %s frozen", frozen.Name)
		}
	}

	// For a second or two after the freeze every direct get through the other nodes goes
	// unanswered, tried again or not; the reads count from the first that succeeds.
	harness.WaitUntil(t, 30*time.Second, func() error {
		rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer rcancel()
		_, err := history.LastMessage(rctx, stream, subj)
		return err
	})
	failed := 0
	for i := range 60 {
		rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		last, err := history.LastMessage(rctx, stream, subj)
		if err == nil && last == nil {
			err = fmt.Errorf("no last batch")
		}
		var first *jetstream.RawStreamMsg
		if err == nil {
			first, err = history.GetMsg(rctx, stream, 1, subj)
		}
		n := 0
		if err == nil {
			err = history.ReadRange(rctx, viaJS, stream, subj, 1, last.Sequence, func(history.Batch) error { n++; return nil })
		}
		if err == nil && n != scanBatches {
			err = fmt.Errorf("read %d of %d batches", n, scanBatches)
		}
		rcancel()
		if err != nil {
			if failed++; failed <= 3 {
				t.Errorf("read %d through %s with %s frozen: %v", i, via.Name, frozen.Name, err)
			}
			continue
		}
		if first.Sequence >= last.Sequence {
			t.Fatalf("first batch at %d, last at %d", first.Sequence, last.Sequence)
		}
	}
	if failed > 0 {
		t.Errorf("%d of 60 reads failed with %s frozen", failed, frozen.Name)
	}

}
