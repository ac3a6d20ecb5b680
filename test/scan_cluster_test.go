package e2e

import (
	"context"
	"fmt"
	"strings"
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
// cluster 100 times through each node, each read with a 1 s budget, as a history load or a
// replay reads them (history.Scan up to the last batch). A pull sent before the consumer's
// interest has reached the client's server finds no responder; a consumer iterator then
// waits seconds for a missed heartbeat, which stalled 3 to 4 reads in 100 here. Each read
// must end with every batch, in order.
func TestScanOnReplicatedStream(t *testing.T) {
	if !journalEnabled() {
		t.Skip("E2E_SSETRACK_ARGS has --journal=false: this test checks JetStream")
	}
	cl := harness.StartNATSCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	nc, err := nats.Connect(cl.URLs())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cfg := journal.Config{Stream: "SCAN", SubjectPrefix: "scan.events", Bucket: "scan-sessions", Replicas: 3,
		Batch: journal.BatchConfig{MaxEvents: 4, MaxDelay: time.Hour}}
	p, err := journal.New(ctx, nc, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	const sid, batches = "scan-session", 12
	for i := range batches {
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
		for range 100 {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			var got []uint64
			err := history.Scan(rctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}}, last.Sequence,
				func(b history.Batch) error { got = append(got, b.FirstSeq); return nil })
			rcancel()
			if err != nil || len(got) != batches {
				if stalled++; stalled <= 3 {
					t.Errorf("%s: a read ended with %v after %d of %d batches", node.Name, err, len(got), batches)
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
			t.Errorf("%s: %d of 100 reads did not end with every batch within 1 s", node.Name, stalled)
		}
	}
}
