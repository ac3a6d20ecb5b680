package journal

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ssetrack/ssetrack/extproc/session"
)

func TestBatching(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	evSize := len(must(events("s", 1, 1)))
	tests := []struct {
		name   string
		batch  BatchConfig
		recs   int  // one-event records
		end    bool // End on the last record
		wait   time.Duration
		counts []int
	}{
		{"count", BatchConfig{MaxEvents: 10, MaxDelay: time.Hour}, 25, true, 0, []int{10, 10, 5}},
		{"bytes", BatchConfig{MaxBytes: 3 * evSize, MaxDelay: time.Hour}, 7, true, 0, []int{3, 3, 1}},
		{"time", BatchConfig{MaxDelay: 30 * time.Millisecond}, 4, false, 0, []int{4}},
		{"end", BatchConfig{MaxDelay: time.Hour}, 3, true, 0, []int{3}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Stream: fmt.Sprintf("B%d", i), SubjectPrefix: fmt.Sprintf("b%d", i), Bucket: fmt.Sprintf("b%d", i), Batch: tc.batch}
			p := newPublisher(t, nc, cfg)
			sid := "batch-" + tc.name
			for r := 1; r <= tc.recs; r++ {
				p.Append(record(sid, "s", r, 1, tc.end && r == tc.recs))
			}
			waitFor(t, 5*time.Second, "acks", func() bool { return statsOf(t, p).Events == uint64(tc.recs) })
			bs := readAll(t, jsOf(t, nc), cfg, sid)
			if len(bs) != len(tc.counts) {
				t.Fatalf("%d batches, want %d", len(bs), len(tc.counts))
			}
			seq := uint64(1)
			for k, b := range bs {
				if b.Count != tc.counts[k] || b.FirstSeq != seq || b.LastSeq != seq+uint64(b.Count)-1 {
					t.Errorf("batch %d: count %d seq %d..%d, want count %d from %d", k, b.Count, b.FirstSeq, b.LastSeq, tc.counts[k], seq)
				}
				if b.FirstID != fmt.Sprintf("s-%d", seq) || b.LastID != fmt.Sprintf("s-%d", b.LastSeq) || b.Stream != "s" {
					t.Errorf("batch %d: ids %q..%q stream %q", k, b.FirstID, b.LastID, b.Stream)
				}
				want, _ := events("s", int(seq), b.Count)
				if string(b.Data) != string(want) {
					t.Errorf("batch %d payload %q", k, b.Data)
				}
				seq = b.LastSeq + 1
			}
		})
	}
}

// TestStreamSwitch checks that a record of another stream of the session
// closes the open batch, so batches never interleave sequence ranges.
func TestStreamSwitch(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{Batch: BatchConfig{MaxDelay: 10 * time.Millisecond}}
	p := newPublisher(t, nc, cfg)
	p.Append(record("sw", "a", 1, 2, false))
	p.Append(record("sw", "b", 3, 2, false))
	p.Append(record("sw", "a", 5, 2, false))
	waitFor(t, 5*time.Second, "acks", func() bool { return statsOf(t, p).Events == 6 })
	bs := readAll(t, jsOf(t, nc), cfg, "sw")
	var got []string
	for _, b := range bs {
		got = append(got, fmt.Sprintf("%s:%d-%d", b.Stream, b.FirstSeq, b.LastSeq))
	}
	if strings.Join(got, " ") != "a:1-2 b:3-4 a:5-6" {
		t.Errorf("batches %v", got)
	}
}

func must[T any](v T, _ ...any) T { return v }

// TestDedup publishes the same batch twice: JetStream keeps one message.
func TestDedup(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{}.withDefaults()
	js := jsOf(t, nc)
	ctx := context.Background()
	if _, _, err := setup(ctx, js, cfg, testLog()); err != nil {
		t.Fatal(err)
	}
	data, _ := events("s", 1, 3)
	b := Batch{Session: "dup", Stream: "s", FirstID: "s-1", LastID: "s-3", Count: 3, FirstSeq: 1, LastSeq: 3, Data: data}
	var acks []*jetstream.PubAck
	for range 2 {
		msg := &nats.Msg{Subject: Subject(cfg.SubjectPrefix, "dup"), Data: data, Header: header(&b, MsgID("dup", "s", "w", 1, 1))}
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, ack)
	}
	if acks[0].Duplicate || !acks[1].Duplicate || acks[0].Sequence != acks[1].Sequence {
		t.Errorf("acks %+v %+v", acks[0], acks[1])
	}
	if n := len(readAll(t, js, cfg, "dup")); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
	if MsgID("dup", "s", "w", 1, 1) == MsgID("dup", "t", "w", 1, 1) || MsgID("a", "bc", "w", 1, 1) == MsgID("ab", "c", "w", 1, 1) ||
		MsgID("dup", "s", "w1", 1, 1) == MsgID("dup", "s", "w2", 1, 1) {
		t.Error("MsgID collides")
	}
}

// TestQueueFull fills the queue while NATS is gone: Append refuses at once
// and counts the loss.
func TestQueueFull(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	p := newPublisher(t, nc, Config{QueueSize: 10, PublishTimeout: 200 * time.Millisecond})
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ok := 0
	start := time.Now()
	for i := 1; i <= 1000; i++ {
		if p.Append(record("full", "s", i, 1, false)) {
			ok++
		}
	}
	elapsed := time.Since(start)
	st := statsOf(t, p)
	if ok != 10 || st.DroppedQueueFull != 990 || st.QueueDepth != 10 {
		t.Errorf("accepted %d, stats %+v", ok, st)
	}
	t.Logf("1000 appends against a full queue took %v", elapsed)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := p.Shutdown(ctx); err == nil {
		t.Error("shutdown without NATS succeeded")
	}
	if st := statsOf(t, p); st.QueueDepth != 0 || st.Dropped != 1000 {
		t.Errorf("after shutdown %+v", st)
	}
	if p.Append(record("full", "s", 1, 1, false)) {
		t.Error("append after shutdown accepted")
	}
}

// TestQueueBytesFull: records are refused once their bytes would take the
// queue over Config.QueueBytes, while NATS is gone, and every byte held is
// released again, whether its batch was acknowledged or lost.
func TestQueueBytesFull(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	size := len(record("full", "s", 1, 3, false).Data) // the same for records 1..9 of 3 events
	p := newPublisher(t, nc, Config{QueueBytes: int64(2*size + size/2), PublishTimeout: 200 * time.Millisecond})
	// Acknowledged: nothing stays held.
	p.Append(record("acked", "s", 1, 3, true))
	waitFor(t, 10*time.Second, "ack", func() bool { return statsOf(t, p).Events == 3 })
	if n := p.heldBytes.Load(); n != 0 {
		t.Fatalf("%d bytes held after the ack", n)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ok := 0
	for i := range 3 {
		if p.Append(record("full", "s", 1+3*i, 3, false)) {
			ok++
		}
	}
	if st := statsOf(t, p); ok != 2 || st.DroppedQueueFull != 1 {
		t.Errorf("accepted %d of 3 records of %d bytes with QueueBytes %d; stats %+v", ok, size, p.cfg.QueueBytes, st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_ = p.Shutdown(ctx) // fails: NATS is gone
	if n := p.heldBytes.Load(); n != 0 {
		t.Errorf("%d bytes held after the records were lost", n)
	}
}

// TestKVCoalescing appends many small records and checks that state writes
// are coalesced and the final value is right.
func TestKVCoalescing(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{Batch: BatchConfig{MaxEvents: 16}}
	p := newPublisher(t, nc, cfg)
	const n = 2000
	for i := 1; i <= n; i++ {
		stream := "a"
		if i > n/2 {
			stream = "b"
		}
		p.Append(record("kv", stream, i, 1, false))
	}
	waitFor(t, 10*time.Second, "acks", func() bool { return statsOf(t, p).Events == n })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	st := statsOf(t, p)
	t.Logf("events %d, batches %d, kv writes %d: %.1f events per kv write", st.Events, st.Batches, st.KVWrites, float64(st.Events)/float64(st.KVWrites))
	if st.KVWrites == 0 || st.KVWrites >= st.Batches {
		t.Errorf("kv writes %d not coalesced (batches %d)", st.KVWrites, st.Batches)
	}
	kv, err := jsOf(t, nc).KeyValue(ctx, DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, SubjectToken("kv"))
	if err != nil {
		t.Fatal(err)
	}
	var v State
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		t.Fatal(err)
	}
	if v.Seq != n || v.Streams["a"] != fmt.Sprintf("a-%d", n/2) || v.Streams["b"] != fmt.Sprintf("b-%d", n) {
		t.Errorf("state %+v", v)
	}
}

// TestLoad rebuilds a session's history with a fresh publisher.
func TestLoad(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{HistoryEvents: 100, Batch: BatchConfig{MaxEvents: 7}}
	p := newPublisher(t, nc, cfg)
	const n = 1000
	for i := 1; i <= n; i++ {
		stream := "a"
		if i%3 == 0 {
			stream = "b"
		}
		p.Append(record("load", stream, i, 1, false))
		// Another session interleaved, so the subject is sparse.
		p.Append(record("other", "x", i, 1, false))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	p2 := newPublisher(t, nc, cfg)
	h, err := p2.Load(ctx, "load")
	if err != nil {
		t.Fatal(err)
	}
	if h == nil || h.Seq != n {
		t.Fatalf("history %+v", h)
	}
	if len(h.Events) != 100 {
		t.Fatalf("%d events, want 100", len(h.Events))
	}
	for k, e := range h.Events {
		seq := uint64(n - 100 + 1 + k)
		stream := "a"
		if seq%3 == 0 {
			stream = "b"
		}
		if e.Seq != seq || e.Stream != stream || e.ID != fmt.Sprintf("%s-%d", stream, seq) {
			t.Fatalf("event %d: %+v, want seq %d", k, e, seq)
		}
	}
	want := fmt.Sprintf("[{a a-%d} {b b-%d}]", n, n-1)
	if got := fmt.Sprint(h.Streams); got != want {
		t.Errorf("streams %s, want %s", got, want)
	}
	if h, err := p2.Load(ctx, "nobody"); h != nil || err != nil {
		t.Errorf("unknown session: %+v, %v", h, err)
	}
	// The seeded state keeps stream a when only b continues.
	p2.Append(record("load", "b", n+1, 1, true))
	waitFor(t, 5*time.Second, "ack", func() bool { return statsOf(t, p2).Events == 1 })
	if err := p2.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := getState(ctx, must(jsOf(t, nc).KeyValue(ctx, DefaultBucket)), "load")
	if err != nil || v.Seq != n+1 || v.Streams["a"] != fmt.Sprintf("a-%d", n) {
		t.Errorf("state after takeover %+v, %v", v, err)
	}
}

func TestPrincipalSurvivesLoad(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	p := newPublisher(t, nc, Config{})
	rec := record("owned", "a", 1, 3, true)
	rec.Principal = "5e1f"
	p.Append(rec)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := newPublisher(t, nc, Config{}).Load(ctx, "owned")
	if err != nil || h == nil {
		t.Fatalf("load: %+v, %v", h, err)
	}
	if h.Principal != "5e1f" {
		t.Errorf("principal %q after load, want 5e1f", h.Principal)
	}
}

// TestStatePrincipalKeepsStoredOwner: a publisher that has no copy of a
// session's state (another replica, or this one after its state writer
// forgot the session) and records the session with another principal
// leaves the one in the KV bucket, which was there first.
func TestStatePrincipalKeepsStoredOwner(t *testing.T) {
	s := startTestServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := Config{StateInterval: 10 * time.Millisecond}
	p1 := newPublisher(t, connect(t, s.ClientURL()), cfg)
	rec := record("owned", "a", 1, 2, true)
	rec.Principal = "owner"
	p1.Append(rec)
	if err := p1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	p2 := newPublisher(t, connect(t, s.ClientURL()), cfg)
	rec = record("owned", "b", 3, 1, true)
	rec.Principal = "other"
	p2.Append(rec)
	if err := p2.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := getState(ctx, p2.kv, "owned")
	if err != nil || st.Seq != 3 {
		t.Fatalf("state %+v, %v; want seq 3", st, err)
	}
	if st.Principal != "owner" {
		t.Errorf("stored principal %q, want owner", st.Principal)
	}
}

// TestStateWritersMergeEachOther: two publishers (replicas) recording one
// session in turn each keep the other's streams in its KV state: a write
// made after the other wrote is refused, and the value read and merged
// before it is made again.
func TestStateWritersMergeEachOther(t *testing.T) {
	s := startTestServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := Config{StateInterval: 10 * time.Millisecond}
	ps := []*Publisher{newPublisher(t, connect(t, s.ClientURL()), cfg), newPublisher(t, connect(t, s.ClientURL()), cfg)}
	streams := []string{"a", "b", "c", "d", "e"}
	for i, stream := range streams {
		ps[i%2].Append(record("S", stream, i+1, 1, true))
		waitFor(t, 10*time.Second, fmt.Sprintf("state of seq %d", i+1), func() bool {
			st, err := getState(ctx, ps[0].kv, "S")
			return err == nil && st.Seq >= uint64(i+1)
		})
	}
	for _, p := range ps {
		if err := p.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	st, err := getState(ctx, ps[0].kv, "S")
	if err != nil {
		t.Fatal(err)
	}
	for _, stream := range streams {
		if _, ok := st.Streams[stream]; !ok {
			t.Errorf("stream %s missing from the state %v", stream, st.Streams)
		}
	}
}

// TestStateAfterKeyDeleted: a session's state deleted from the bucket (an
// operator's `nats kv del`) is written again: the write expecting the
// revision before the delete is refused, the read from the stream's leader
// gives the delete marker's revision, and the next write expects it.
func TestStateAfterKeyDeleted(t *testing.T) {
	s := startTestServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := newPublisher(t, connect(t, s.ClientURL()), Config{StateInterval: 10 * time.Millisecond})
	stateSeq := func(seq uint64) func() bool {
		return func() bool {
			st, err := getState(ctx, p.kv, "S")
			return err == nil && st.Seq >= seq
		}
	}
	p.Append(record("S", "a", 1, 1, true))
	waitFor(t, 10*time.Second, "state of seq 1", stateSeq(1))
	if err := p.kv.Delete(ctx, SubjectToken("S")); err != nil {
		t.Fatal(err)
	}
	p.Append(record("S", "b", 2, 1, true))
	waitFor(t, 10*time.Second, "state of seq 2 after the delete", stateSeq(2))
}

// TestBurstStillBatches: a burst the batcher lags behind must still be
// published in full batches. (Batch deadlines once ran from each record's
// enqueue time, so a lagging batcher found them all past and published one
// record per message.)
func TestBurstStillBatches(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	p := newPublisher(t, nc, Config{QueueSize: 1 << 16})
	const sessions, n = 16, 50000
	recs := make([]session.Record, n)
	seqs := make([]int, sessions)
	for i := range recs {
		sid := i % sessions
		seqs[sid]++
		recs[i] = record(fmt.Sprintf("burst-%d", sid), "s", seqs[sid], 1, false)
	}
	for _, r := range recs {
		if !p.Append(r) {
			t.Fatal("append refused")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	st := statsOf(t, p)
	if st.Events != n {
		t.Fatalf("published %d events, want %d", st.Events, n)
	}
	// Full batches would be 16 x ceil(3125/256) = 208; allow slack for a slow
	// machine (and the race detector), but not one record per batch.
	if st.Batches > 1000 {
		t.Errorf("%d batches for %d events: batching collapsed under the burst", st.Batches, n)
	}
	t.Logf("%d events in %d batches", st.Events, st.Batches)
}

// TestTwoWritersNeverCollide: two replicas number a session's events
// independently; their batches must both be stored, and each must see the
// session as stale once the other wrote last.
func TestTwoWritersNeverCollide(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	a := newPublisher(t, nc, Config{})
	b := newPublisher(t, nc, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if stale, err := a.Stale(ctx, "shared", 0); err != nil || stale {
		t.Fatalf("unknown session: stale %v, %v", stale, err)
	}
	a.Append(record("shared", "s", 1, 5, true))
	waitFor(t, 5*time.Second, "a's batch", func() bool { return statsOf(t, a).Events == 5 })
	if stale, _ := a.Stale(ctx, "shared", 0); stale {
		t.Error("a sees its own last batch as stale")
	}
	if stale, _ := b.Stale(ctx, "shared", 0); !stale {
		t.Error("b does not see a's batch")
	}
	// A copy that has assigned sequence numbers through a's last (b loaded
	// the session after a's batch, as after a restart) has seen it.
	if stale, _ := b.Stale(ctx, "shared", 5); stale {
		t.Error("b's copy, current through seq 5, is called stale")
	}
	// b, with a stale copy, numbers from 1 again: same session, stream and
	// first sequence as a's batch, other events.
	rec := record("shared", "s", 1, 7, true)
	b.Append(rec)
	waitFor(t, 5*time.Second, "b's batch", func() bool { return statsOf(t, b).Events == 7 })
	batches := readAll(t, jsOf(t, nc), Config{}, "shared")
	if len(batches) != 2 {
		t.Fatalf("%d batches stored, want 2 (one per writer)", len(batches))
	}
	if batches[0].Writer == batches[1].Writer || batches[1].Count != 7 {
		t.Errorf("stored %+v", batches)
	}
	if stale, _ := a.Stale(ctx, "shared", 5); !stale { // b stored through seq 7
		t.Error("a does not see b's batch")
	}
}

// TestReusedSequenceIsNotLost: a session reloaded from the journal while its
// last batch was unacknowledged (evicted from memory meanwhile) hands out
// that batch's sequence numbers again. The second batch must be stored too,
// not dropped as a duplicate of the first.
func TestReusedSequenceIsNotLost(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	p := newPublisher(t, nc, Config{Batch: BatchConfig{MaxDelay: 5 * time.Millisecond}})
	p.Append(record("reused", "s", 1, 3, true))
	waitFor(t, 5*time.Second, "the first batch", func() bool { return statsOf(t, p).Events == 3 })
	p.Append(record("reused", "s", 1, 2, true)) // seq 1..2 again
	waitFor(t, 5*time.Second, "the second batch", func() bool { return statsOf(t, p).Events == 5 })
	if batches := readAll(t, jsOf(t, nc), Config{}, "reused"); len(batches) != 2 {
		t.Fatalf("%d batches stored, want 2", len(batches))
	}
}

// TestPacedRecordsWakeOncePerBatch appends records a millisecond apart, as a
// token stream does: every record is published within about the batch delay,
// while Append wakes the batcher about once per batch, not once per record.
func TestPacedRecordsWakeOncePerBatch(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{Stream: "PACED", SubjectPrefix: "paced", Bucket: "paced", Batch: BatchConfig{MaxDelay: 20 * time.Millisecond}}
	p := newPublisher(t, nc, cfg)
	const n = 200
	for r := 1; r <= n; r++ {
		p.Append(record("paced", "s", r, 1, false))
		time.Sleep(time.Millisecond)
	}
	// No End record: only the batch delay publishes the last batch.
	waitFor(t, 10*time.Second, "every record acknowledged", func() bool { return statsOf(t, p).Events == n })
	bs := readAll(t, jsOf(t, nc), cfg, "paced")
	if len(bs) < 2 {
		t.Errorf("%d batches: the delay never sealed one before the end", len(bs))
	}
	if w := p.wakes.Load(); w > n/4 {
		t.Errorf("Append woke the batcher %d times for %d records", w, n)
	}
	t.Logf("%d records, %d batches, %d wakes", n, len(bs), p.wakes.Load())
}

// TestFullBatchIsNotHeldForItsDelay appends records one by one to a
// batcher asleep on an hour's batch delay, fewer than inboxWake of them: the
// record that brings the waiting bytes to a batch's worth must wake it, so
// the full batch is published at once, not an hour later.
func TestFullBatchIsNotHeldForItsDelay(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	one := len(record("full", "s", 100, 8, false).Data) // ids of 3 digits: every record the same size
	cfg := Config{Stream: "FULL", SubjectPrefix: "full", Bucket: "full",
		Batch: BatchConfig{MaxBytes: 4 * one, MaxEvents: 1 << 20, MaxDelay: time.Hour}}
	p := newPublisher(t, nc, cfg)
	for r := range 9 {
		p.Append(record("full", "s", 100+8*r, 8, false))
		// Let the batcher take what it was woken for and sleep again (it
		// takes microseconds; if it has not, the test cannot fail wrongly).
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, 5*time.Second, "a full batch published", func() bool { return statsOf(t, p).Batches >= 1 })
	if b := readAll(t, jsOf(t, nc), cfg, "full")[0]; b.Count != 32 {
		t.Errorf("the first batch holds %d events, want 32 (4 records of 8)", b.Count)
	}
}

// TestAppendDuringTakeIsNotStranded appends a record just after the
// batcher took the inbox and before it sleeps, with no timer of its own to
// wake it (it took only the end of an empty stream): the batcher must see
// the record before it sleeps, since Append, finding it awake, does not
// wake it.
func TestAppendDuringTakeIsNotStranded(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	p := newPublisher(t, nc, Config{Stream: "STRAND", SubjectPrefix: "strand", Bucket: "strand"})
	var once sync.Once
	p.takeHook = func() { once.Do(func() { p.Append(record("strand", "s", 1, 1, false)) }) }
	// The batcher is asleep with no wake pending: the wake below is the only one.
	waitFor(t, 5*time.Second, "batcher asleep", func() bool { return p.wakeAt.Load() == batcherIdle && len(p.wake) == 0 })
	p.Append(session.Record{Session: "strand", Stream: "s", End: true}) // no events, no batch, no timer
	waitFor(t, 5*time.Second, "the record appended during the take", func() bool { return statsOf(t, p).Events == 1 })
}

// TestConcurrentAppendsNeverStall appends from many goroutines at random
// paces with a short delay: a record that came while the batcher was going
// to sleep must still be published.
func TestConcurrentAppendsNeverStall(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{Stream: "CONC", SubjectPrefix: "conc", Bucket: "conc", Batch: BatchConfig{MaxDelay: 2 * time.Millisecond}}
	p := newPublisher(t, nc, cfg)
	const writers, per = 16, 100
	done := make(chan struct{})
	for w := range writers {
		go func() {
			defer func() { done <- struct{}{} }()
			sid := fmt.Sprintf("conc-%d", w)
			for r := 1; r <= per; r++ {
				p.Append(record(sid, "s", r, 1, false))
				if r%(w+1) == 0 {
					time.Sleep(time.Duration(w*50) * time.Microsecond)
				}
			}
		}()
	}
	for range writers {
		<-done
	}
	waitFor(t, 10*time.Second, "every record acknowledged", func() bool { return statsOf(t, p).Events == writers*per })
}

// TestForeignMessagesArePassedOver puts messages that are not batches on a
// session's subject, in the middle of its history and at its end: Load
// still returns the session's recent events and Stale does not fail.
func TestForeignMessagesArePassedOver(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{HistoryEvents: 50, Batch: BatchConfig{MaxEvents: 5}}
	js := jsOf(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	subj := Subject(DefaultSubjectPrefix, "foreign")
	const n = 200
	p := newPublisher(t, nc, cfg)
	for i := 1; i <= n; i++ {
		p.Append(record("foreign", "a", i, 1, false))
		if i == n/2 {
			waitFor(t, 5*time.Second, "first half", func() bool { return statsOf(t, p).Events == n/2 })
			if _, err := js.Publish(ctx, subj, []byte("not a batch")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, subj, []byte("not a batch either")); err != nil {
		t.Fatal(err)
	}

	p2 := newPublisher(t, nc, cfg)
	h, err := p2.Load(ctx, "foreign")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if h == nil || h.Seq != n || len(h.Events) != 50 || h.Events[49].ID != fmt.Sprintf("a-%d", n) || h.Events[0].Seq != n-49 {
		t.Fatalf("history %+v", h)
	}
	if stale, err := p2.Stale(ctx, "foreign", n); stale || err != nil {
		t.Errorf("Stale: %v, %v", stale, err)
	}
}

// TestGivenUpLaneIsForgotten gives up a waiting lane's late retry when a
// slot frees: the lane, idle now, must not stay in the batcher, or Shutdown
// would wait for it until its deadline.
func TestGivenUpLaneIsForgotten(t *testing.T) {
	cfg := Config{MaxInFlight: 1}.withDefaults()
	p := &Publisher{cfg: cfg, m: newMetrics(nil), log: testLog()}
	b := &batcher{p: p, lanes: map[string]*lane{}}
	late := &pending{Batch: Batch{Session: "late", Count: 1}, at: make([]time.Time, 1), tries: 1,
		firstTx: time.Now().Add(-p.retryBudget() - time.Second)}
	busy := &pending{Batch: Batch{Session: "busy", Count: 1}, at: make([]time.Time, 1), tries: 1, firstTx: time.Now()}
	lw := &lane{session: "late", ready: []*pending{late}, waiting: true}
	lb := &lane{session: "busy", inflight: busy}
	b.lanes["late"], b.lanes["busy"] = lw, lb
	b.waitq, b.inflight = []*lane{lw}, 1
	p.held.Store(2)
	// The busy lane's publish fails for good: its slot goes to the waiting lane.
	b.done(result{lane: lb, err: nats.ErrMaxPayload})
	if len(b.lanes) != 0 {
		t.Errorf("%d lanes left after both batches were given up", len(b.lanes))
	}
	if p.held.Load() != 0 {
		t.Errorf("%d records still held", p.held.Load())
	}
}

// TestLateRetryIsGivenUp holds a failed batch back until its retry would
// come after the duplicate window (it waited for an in-flight slot during
// a long outage): it is given up and counted, never published, since a
// late retry of a batch whose first try was stored would store it twice.
func TestLateRetryIsGivenUp(t *testing.T) {
	var lost []string
	cfg := Config{Lost: func(sessionID, stream string) { lost = append(lost, sessionID+"/"+stream) }}.withDefaults()
	p := &Publisher{cfg: cfg, m: newMetrics(nil), log: testLog()}
	b := &batcher{p: p, lanes: map[string]*lane{}}
	pb := &pending{Batch: Batch{Session: "late", Count: 3}, at: make([]time.Time, 3), tries: 1,
		firstTx: time.Now().Add(-p.retryBudget() - time.Second)}
	l := &lane{session: "late", ready: []*pending{pb}}
	p.held.Store(3)
	b.trySend(l)
	if l.inflight != nil || b.inflight != 0 {
		t.Fatal("the late retry was published")
	}
	if got := testutil.ToFloat64(p.m.dropped.WithLabelValues(dropGaveUp)); got != 3 {
		t.Errorf("%v records counted lost, want 3", got)
	}
	if want := []string{"late/"}; !slices.Equal(lost, want) {
		t.Errorf("Config.Lost told of %q, want %q", lost, want)
	}
	if p.held.Load() != 0 {
		t.Errorf("%d records still held", p.held.Load())
	}
}

// TestLoadCountsUnstoredRecords loads a session whose last records are
// still on their way (an open batch): Load's Seq includes them, so a
// session reloaded meanwhile (evicted from memory, say) does not number new
// events with their numbers. Once they are stored, the stored ones count.
func TestLoadCountsUnstoredRecords(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{Batch: BatchConfig{MaxDelay: time.Hour}}
	p := newPublisher(t, nc, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.Append(record("unstored", "a", 1, 3, true)) // seq 1..3, stored
	waitFor(t, 5*time.Second, "first batch", func() bool { return statsOf(t, p).Events == 3 })
	p.Append(record("unstored", "a", 4, 2, false)) // seq 4..5, held for an hour
	h, err := p.Load(ctx, "unstored")
	if err != nil || h == nil || h.Seq != 5 {
		t.Fatalf("Load: %+v, %v; want Seq 5", h, err)
	}
	if h, err := p.Load(ctx, "fresh"); h != nil || err != nil {
		t.Errorf("a session with nothing stored or on its way: %+v, %v", h, err)
	}
	p.Append(record("new", "b", 1, 2, false)) // nothing stored yet
	if h, err := p.Load(ctx, "new"); err != nil || h == nil || h.Seq != 2 {
		t.Errorf("a session with only unstored records: %+v, %v; want Seq 2", h, err)
	}
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := p.unstoredSeq("unstored") + p.unstoredSeq("new"); n != 0 {
		t.Errorf("unstored sequence numbers left after every batch was stored: %d", n)
	}
}

// TestLongLastID: a stream whose newest id is too long for the session's KV
// state is loaded with its last id unknown (""), not with the older id it
// replaced, so that a resume replays all it stored after the client's id.
func TestLongLastID(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	p := newPublisher(t, nc, Config{Batch: BatchConfig{MaxDelay: time.Millisecond}})
	p.Append(record("long", "a", 1, 1, false))
	waitFor(t, 5*time.Second, "ack", func() bool { return statsOf(t, p).Events == 1 })
	long := "a-" + strings.Repeat("9", maxIDHeader)
	data := []byte("id: " + long + "\ndata: x\n\n")
	p.Append(session.Record{Session: "long", Stream: "a", Count: 1, Data: data, FirstID: long, LastID: long, FirstSeq: 2, LastSeq: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := newPublisher(t, nc, Config{}).Load(ctx, "long")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(h.Streams); got != "[{a }]" {
		t.Errorf("streams %s, want stream a with its last id unknown", got)
	}
}

// TestLoadLast reads a session's last batch alone: its events, its stream
// and last id, its last number; nothing for a session without a batch.
func TestLoadLast(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	p := newPublisher(t, nc, Config{})
	p.Append(record("ll", "a", 1, 3, true))
	p.Append(record("ll", "b", 4, 2, true))
	waitFor(t, 5*time.Second, "acks", func() bool { return statsOf(t, p).Events == 5 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h, err := p.LoadLast(ctx, "ll")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(h.Seq, h.Streams, h.Events); got != "5 [{b b-5}] [{b-4 b 4} {b-5 b 5}]" {
		t.Errorf("LoadLast = %s, want the batch of b-4 and b-5", got)
	}
	if h, err := p.LoadLast(ctx, "nobody"); h != nil || err != nil {
		t.Errorf("LoadLast of a session without batches: %+v, %v", h, err)
	}
}

// TestFullBatchFitsServerReadBuffer checks that a full batch of the default
// size, with a UUID session id and short event ids, reaches the NATS server
// as a message of at most 64 KiB, its read buffer's most: the server then
// parses it in place instead of copying it into a buffer of its own
// (Config.Batch.MaxBytes).
func TestFullBatchFitsServerReadBuffer(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{Batch: BatchConfig{MaxEvents: 1 << 20, MaxDelay: time.Hour}}
	sub, err := nc.SubscribeSync(DefaultSubjectPrefix + ".>")
	if err != nil {
		t.Fatal(err)
	}
	p := newPublisher(t, nc, cfg)
	const sid = "0b6c1a52-4f1e-4d52-9a8e-3c1f7a2e9d41"
	sent := 0
	for r := 1; sent < 3*DefaultBatchBytes; r += 32 {
		rec := record(sid, "s", r, 32, false)
		sent += len(rec.Data)
		p.Append(rec)
	}
	const serverReadBuffer = 64 << 10 // nats-server's maxBufSize
	for range 2 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Data) < DefaultBatchBytes-2<<10 {
			t.Errorf("a batch of %d bytes: not full", len(m.Data))
		}
		hdr := m.Size() - len(m.Subject) - len(m.Reply) - len(m.Data)
		line := fmt.Sprintf("HPUB %s %s %d %d\r\n", m.Subject, m.Reply, hdr, hdr+len(m.Data))
		if wire := len(line) + hdr + len(m.Data) + 2; wire > serverReadBuffer {
			t.Errorf("a full batch is %d bytes on the wire (%d of them data), over the server's %d-byte read buffer",
				wire, len(m.Data), serverReadBuffer)
		}
	}
}

// TestLoadCountsProvisional: a Load of a session whose records with
// provisional numbers are still held (a copy of the session that numbered
// them was evicted, say) resolves their base and reports the session's last
// number after them, so the new copy numbers after them too, whether the
// batcher or the Load read the stored number first.
func TestLoadCountsProvisional(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{}
	p := newPublisher(t, nc, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const sid = "held"
	p.Append(record(sid, "s", 1, 10, true))
	if err := p.Flush(ctx, sid); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{3, 2} { // two copies' runs, one after the other
		rec := record(sid, "t", 1, n, true)
		rec.Base = new(session.SeqBase)
		if !p.Append(rec) {
			t.Fatal("append refused")
		}
	}
	h, err := p.Load(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	if h.Seq != 15 {
		t.Errorf("Load reports %d as the last number, want 15 (10 stored, then 3 and 2 held)", h.Seq)
	}
	var got []string
	waitFor(t, 10*time.Second, "the held records stored", func() bool {
		got = got[:0]
		for _, b := range readAll(t, jsOf(t, nc), cfg, sid) {
			got = append(got, fmt.Sprintf("%d-%d", b.FirstSeq, b.LastSeq))
		}
		return len(got) == 3
	})
	if want := "[1-10 11-13 14-15]"; fmt.Sprint(got) != want {
		t.Errorf("stored batches numbered %v, want %s", got, want)
	}
}

// TestProvisionalTooLarge: a record with provisional numbers whose event is
// too large to store is given up without stranding what waits on the
// session: its numbers become a gap (a loss), the events after it are
// stored, a Flush ends once they are, and nothing of the session stays
// held.
func TestProvisionalTooLarge(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{}
	p := newPublisher(t, nc, cfg)
	p.maxRecord = 4096 // before any Append: the batcher reads it as it adds
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const sid = "big"
	p.Append(record(sid, "s", 1, 3, false))
	if err := p.Flush(ctx, sid); err != nil {
		t.Fatal(err)
	}
	base := new(session.SeqBase)
	big := session.Record{Session: sid, Stream: "s", Count: 1, FirstSeq: 1, LastSeq: 1, FirstID: "huge", LastID: "huge",
		Data: []byte("id: huge\ndata: " + strings.Repeat("x", 8<<10) + "\n\n"), Base: base}
	small := record(sid, "s", 2, 2, true)
	small.Base = base
	p.Append(big)
	p.Append(small)
	h, err := p.Load(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	if h.Seq != 6 {
		t.Errorf("Load reports %d, want 6 (3 stored, 3 held)", h.Seq)
	}
	var got []string
	waitFor(t, 10*time.Second, "the held records stored", func() bool {
		got = got[:0]
		for _, b := range readAll(t, jsOf(t, nc), cfg, sid) {
			got = append(got, fmt.Sprintf("%s-%s:%d-%d", b.FirstID, b.LastID, b.FirstSeq, b.LastSeq))
		}
		return len(got) == 2
	})
	if want := "[s-1-s-3:1-3 s-2-s-3:5-6]"; fmt.Sprint(got) != want {
		t.Errorf("stored %v, want %s (4, the event too large, is a gap)", got, want)
	}
	if err := p.Flush(ctx, sid); err != nil {
		t.Errorf("Flush after everything was stored or given up: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.provisional) != 0 || len(p.unstored) != 0 {
		t.Errorf("still held: provisional %v, unstored %v", p.provisional, p.unstored)
	}
}

// TestCountersFromTheStart: the journal's loss and takeover counters are
// exported at 0 for every label value before their first count.
func TestCountersFromTheStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	newMetrics(reg)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				have[f.GetName()+"/"+l.GetValue()] = true
			}
		}
	}
	for _, want := range []string{
		"ssetrack_journal_records_dropped_total/" + dropQueueFull, "ssetrack_journal_records_dropped_total/" + dropGaveUp,
		"ssetrack_journal_records_dropped_total/" + dropTooLarge, "ssetrack_journal_records_dropped_total/" + dropShutdown,
		"ssetrack_journal_records_dropped_total/" + dropClosed, "ssetrack_journal_takeover_notices_total/sent",
		"ssetrack_journal_takeover_notices_total/superseded",
	} {
		if !have[want] {
			t.Errorf("%s not exported before its first count", want)
		}
	}
}

// TestShutdownBoundedWithoutNATS: with NATS gone, Shutdown returns within
// its context's bound even while the state writer's cycle waits for NATS
// (for up to twice PublishTimeout), instead of waiting it out.
func TestShutdownBoundedWithoutNATS(t *testing.T) {
	s := startTestServer(t)
	p := newPublisher(t, connect(t, s.ClientURL()), Config{StateInterval: 300 * time.Millisecond, PublishTimeout: 5 * time.Second})
	p.Append(record("S", "a", 1, 1, true))
	waitFor(t, 10*time.Second, "the ack", func() bool { return statsOf(t, p).Events == 1 })
	// NATS goes before the state writer's next cycle, which then waits.
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan struct{})
	go func() { p.Shutdown(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second): // the cycle's own bound is 10 s
		t.Fatal("Shutdown with a 300 ms context still running after 5 s")
	}
}

// TestSetupLeavesAnotherStream: a stream of the configured name whose
// subjects are not ssetrack's is another application's: setup fails
// saying so and leaves it as it is. One that is ssetrack's but with other
// settings gets the flags' settings back, and the change is logged.
func TestSetupLeavesAnotherStream(t *testing.T) {
	s := startTestServer(t)
	js := jsOf(t, connect(t, s.ClientURL()))
	ctx := context.Background()
	cfg := Config{Stream: "ORDERS", SubjectPrefix: "sse", Bucket: "orders-sessions"}.withDefaults()
	theirs := jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}, MaxAge: 0}
	if _, err := js.CreateStream(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	if _, _, err := setup(ctx, js, cfg, testLog()); err == nil || !strings.Contains(err.Error(), "orders.>") {
		t.Errorf("setup over another application's stream: %v; want an error naming its subjects", err)
	}
	info, err := must(js.Stream(ctx, "ORDERS")).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Config.Subjects; !slices.Equal(got, theirs.Subjects) {
		t.Errorf("the other stream's subjects are now %q", got)
	}

	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	mine := Config{Stream: "MINE", MaxAge: time.Hour}.withDefaults()
	edited := mine.streamConfig()
	edited.MaxAge = 72 * time.Hour // an operator's edit
	if _, err := js.CreateStream(ctx, edited); err != nil {
		t.Fatal(err)
	}
	if _, _, err := setup(ctx, js, mine, log); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "max_age: 72h0m0s -> 1h0m0s") {
		t.Errorf("the change of max_age was not logged: %q", logged.String())
	}
}
