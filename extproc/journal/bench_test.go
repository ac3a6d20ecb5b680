package journal

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// BenchmarkPersist compares, in one run against one embedded server, the
// batching Publisher with a raw async publish per event (jetstream
// PublishMsgAsync) of the same events, each way flat out. It reports both
// rates (batched-events/s, raw-events/s) and the time from handing an event
// over to its ack (Append to the batch's ack; PublishMsgAsync to its
// future's ack, seen by a goroutine that waits on the futures in order) at
// the 50th and 99th percentile, and the ratios.
func BenchmarkPersist(b *testing.B) {
	s := startTestServer(b)
	nc := connect(b, s.ClientURL())
	const sessions, perRound = 16, 100000
	round := 0
	// run persists perRound events both ways and returns the two durations.
	var bLats, rLats []time.Duration
	run := func() (batched, raw time.Duration) {
		round++
		// Batched: one event per record, as the processor hands them over.
		cfg := Config{Stream: fmt.Sprintf("BB%d", round), SubjectPrefix: fmt.Sprintf("bb%d", round), Bucket: fmt.Sprintf("bb%d", round), QueueSize: 2 * perRound}
		p := newPublisher(b, nc, cfg)
		lats := make([]time.Duration, 0, perRound)
		p.ackHook = func(d time.Duration) { lats = append(lats, d) } // batcher goroutine only
		// The same records for both ways, made before either is timed.
		recs := make([]int, sessions)
		records := make([]session.Record, perRound)
		for i := range records {
			sid := i % sessions
			recs[sid]++
			records[i] = record(fmt.Sprintf("bench-%d", sid), "s", recs[sid], 1, false)
		}
		start := time.Now()
		for _, r := range records {
			if !p.Append(r) {
				b.Fatal("append refused")
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			b.Fatal(err)
		}
		batched = time.Since(start)
		bLats = append(bLats, lats...)

		// Raw: the same events, one async publish each, same stream setup.
		rcfg := Config{Stream: fmt.Sprintf("BR%d", round), SubjectPrefix: fmt.Sprintf("br%d", round), Bucket: fmt.Sprintf("br%d", round)}.withDefaults()
		js := jsOf(b, nc)
		if _, _, err := setup(context.Background(), js, rcfg, testLog()); err != nil {
			b.Fatal(err)
		}
		type pending struct {
			f  jetstream.PubAckFuture
			at time.Time
		}
		acks := make(chan pending, perRound)
		acked := make(chan error, 1)
		go func() {
			var err error
			for a := range acks {
				select {
				case <-a.f.Ok():
				case e := <-a.f.Err():
					err = cmp.Or(err, e)
				}
				rLats = append(rLats, time.Since(a.at))
			}
			acked <- err
		}()
		start = time.Now()
		for _, r := range records {
			bt := Batch{Session: r.Session, Stream: r.Stream, FirstID: r.FirstID, LastID: r.LastID, Count: 1, FirstSeq: r.FirstSeq, LastSeq: r.LastSeq}
			msg := &nats.Msg{Subject: Subject(rcfg.SubjectPrefix, r.Session), Data: r.Data, Header: header(&bt, MsgID(r.Session, r.Stream, "bench", r.FirstSeq, 1))}
			at := time.Now()
			f, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(10*time.Second))
			if err != nil {
				b.Fatal(err)
			}
			acks <- pending{f, at}
		}
		close(acks)
		select {
		case err := <-acked:
			if err != nil {
				b.Fatal(err)
			}
		case <-time.After(60 * time.Second):
			b.Fatal("raw publishes not acked")
		}
		return batched, time.Since(start)
	}
	run() // warm-up, not counted: first-use costs of the server and client
	bLats, rLats = bLats[:0], rLats[:0]
	var batched, raw time.Duration
	events := 0
	b.ReportAllocs()
	for b.Loop() {
		bd, rd := run()
		batched += bd
		raw += rd
		events += perRound
	}
	bRate := float64(events) / batched.Seconds()
	rRate := float64(events) / raw.Seconds()
	b.ReportMetric(bRate, "batched-events/s")
	b.ReportMetric(rRate, "raw-events/s")
	b.ReportMetric(bRate/rRate, "batched/raw")
	q := func(l []time.Duration, f float64) float64 {
		slices.Sort(l)
		return float64(l[int(f*float64(len(l)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(q(bLats, 0.50), "batched-p50-ms")
	b.ReportMetric(q(bLats, 0.99), "batched-p99-ms")
	b.ReportMetric(q(rLats, 0.50), "raw-p50-ms")
	b.ReportMetric(q(rLats, 0.99), "raw-p99-ms")
}

// BenchmarkLatency20k paces ~20k events/s (one event per record over 50
// sessions) for 2 s and reports enqueue-to-ack latency percentiles and the
// coalescing ratio. It reports, never asserts.
func BenchmarkLatency20k(b *testing.B) {
	s := startTestServer(b)
	nc := connect(b, s.ClientURL())
	const rate, dur, sessions = 20000, 2 * time.Second, 50
	var lats []time.Duration
	var st stats
	round := 0
	for b.Loop() {
		round++
		cfg := Config{Stream: fmt.Sprintf("L%d", round), SubjectPrefix: fmt.Sprintf("l%d", round), Bucket: fmt.Sprintf("l%d", round)}
		p := newPublisher(b, nc, cfg)
		var got []time.Duration
		p.ackHook = func(d time.Duration) { got = append(got, d) } // batcher goroutine only
		seq := make([]int, sessions)
		total := int(rate * dur.Seconds())
		tick := time.Millisecond
		perTick := rate / 1000
		start := time.Now()
		sent := 0
		for sent < total {
			for range perTick {
				sid := sent % sessions
				seq[sid]++
				p.Append(record(fmt.Sprintf("lat-%d", sid), "s", seq[sid], 1, false))
				sent++
			}
			// Pace against the wall clock, not the sleep granularity.
			if ahead := time.Duration(sent)*time.Second/rate - time.Since(start); ahead > 0 {
				time.Sleep(min(ahead, tick))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := p.Shutdown(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		b.Logf("offered %d events in %v (%.0f/s)", sent, time.Since(start), float64(sent)/time.Since(start).Seconds())
		lats = append(lats, got...)
		st = statsOf(b, p)
	}
	slices.Sort(lats)
	q := func(f float64) float64 { return float64(lats[int(f*float64(len(lats)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
	b.ReportMetric(float64(st.Events)/float64(max(st.KVWrites, 1)), "events/kv-write")
	b.ReportMetric(float64(st.Events)/float64(max(st.Batches, 1)), "events/batch")
}

// BenchmarkReplay measures a resume's replay (the last 5, 200 or 5,000
// events of a stream) against a session with 100, 10,000 and 1,000,000
// stored events. 5,000 events are 79 batches: the search for the resume's
// id reads ranges longer than its direct gets take one by one (maxGets).
// The store is filled before timing by publishing pre-built batch messages
// of 64 events straight to JetStream, as the batcher would have written
// them. It reports, never asserts: the replay's cost should not grow with
// the stored history.
func BenchmarkReplay(b *testing.B) {
	s := startTestServer(b)
	nc := connect(b, s.ClientURL())
	for _, stored := range []int{100, 10_000, 1_000_000} {
		b.Run(fmt.Sprintf("stored=%d", stored), func(b *testing.B) {
			name := fmt.Sprintf("R%d", stored)
			cfg := Config{Stream: name, SubjectPrefix: "r" + name, Bucket: name}
			p := newPublisher(b, nc, cfg)
			fillSession(b, nc, cfg, stored, false)
			for _, missed := range []int{5, 200, 5000} {
				if missed >= stored {
					continue
				}
				b.Run(fmt.Sprintf("missed=%d", missed), func(b *testing.B) {
					benchReplay(b, p, fmt.Sprintf("s-%d", stored-missed), fmt.Sprintf("s-%d", stored), missed)
				})
			}
		})
	}
}

// benchReplay times the replay of the missed events after after.
func benchReplay(b *testing.B, p *Publisher, after, through string, missed int) {
	replay := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		_, ids, err := p.Replay(ctx, "bench", "s", after, through)
		if err != nil {
			b.Fatal(err)
		}
		if len(ids) != missed || ids[missed-1] != through {
			b.Fatalf("replayed %d events", len(ids))
		}
	}
	replay() // warm-up: first-use costs of the server and client
	b.ReportAllocs()
	for b.Loop() {
		replay()
	}
}

// BenchmarkLoad times Publisher.Load, the read a session's first request
// waits for (on Envoy's response-headers message), of a session with 50
// (one batch), 100, 2,000 and 100,000 stored events: Load reads the ids of
// the last Config.HistoryEvents (1,024) of them. The store is filled as in
// BenchmarkReplay. It reports, never asserts.
func BenchmarkLoad(b *testing.B) {
	s := startTestServer(b)
	nc := connect(b, s.ClientURL())
	for _, stored := range []int{50, 100, 2_000, 100_000} {
		b.Run(fmt.Sprintf("stored=%d", stored), func(b *testing.B) {
			name := fmt.Sprintf("L%d", stored)
			cfg := Config{Stream: name, SubjectPrefix: "l" + name, Bucket: name}
			p := newPublisher(b, nc, cfg)
			fillSession(b, nc, cfg, stored, true)
			want := min(stored, DefaultHistoryEvents)
			load := func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				h, err := p.Load(ctx, "bench")
				if err != nil {
					b.Fatal(err)
				}
				if len(h.Events) != want || h.Seq != uint64(stored) {
					b.Fatalf("loaded %d events, seq %d; want %d, %d", len(h.Events), h.Seq, want, stored)
				}
			}
			load() // warm-up
			b.ReportAllocs()
			for b.Loop() {
				load()
			}
		})
	}
}

// fillSession stores stored events of session "bench" (stream "s", ids
// s-1..s-<stored>) on cfg's stream in batches of 64, published straight to
// JetStream as the batcher would have written them, with, if busy,
// another session's message after each, as on a busy stream.
func fillSession(b *testing.B, nc *nats.Conn, cfg Config, stored int, busy bool) {
	b.Helper()
	const perBatch = 64
	js := jsOf(b, nc)
	subj := Subject(cfg.SubjectPrefix, "bench")
	for first := 1; first <= stored; first += perBatch {
		n := min(perBatch, stored-first+1)
		data, ids := events("s", first, n)
		bt := Batch{Session: "bench", Stream: "s", FirstID: ids[0], LastID: ids[n-1], Count: n, FirstSeq: uint64(first), LastSeq: uint64(first + n - 1), Writer: "bench"}
		msg := &nats.Msg{Subject: subj, Data: data, Header: header(&bt, MsgID("bench", "s", "bench", bt.FirstSeq, 1))}
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
		if busy {
			if _, err := js.PublishAsync(Subject(cfg.SubjectPrefix, fmt.Sprintf("other-%d", first%7)), data); err != nil {
				b.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.Fatal("fill not acked")
	}
}
