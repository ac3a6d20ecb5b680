package journal

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// TestReplay: a stream's missed events come back whole, from its own
// batches only, or not at all.
func TestReplay(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	p := newPublisher(t, nc, Config{Batch: BatchConfig{MaxEvents: 3, MaxDelay: 5 * time.Millisecond}})
	seq := 0
	add := func(stream string, first, n int) {
		r := record("rp", stream, first, n, false)
		r.FirstSeq, r.LastSeq = uint64(seq+1), uint64(seq+n)
		seq += n
		p.Append(r)
	}
	add("a", 1, 4)
	add("b", 1, 2)
	add("a", 5, 5)
	waitFor(t, 5*time.Second, "acks", func() bool { return statsOf(t, p).Events == 11 })

	tests := []struct {
		name, after, through string
		ids                  string
		err                  error
	}{
		{"within stream", "a-2", "a-7", "[a-3 a-4 a-5 a-6 a-7]", nil},
		{"to the end", "a-8", "a-9", "[a-9]", nil},
		{"after unknown", "a-0", "a-9", "", session.ErrHistoryMissing},
		{"after in another stream", "b-1", "a-9", "", session.ErrHistoryMissing},
		{"through not stored", "a-8", "a-10", "", session.ErrHistoryIncomplete},
		{"through unknown: all stored after", "a-6", "", "[a-7 a-8 a-9]", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			data, ids, err := p.Replay(ctx, "rp", "a", tc.after, tc.through)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if tc.err != nil {
				if data != nil || ids != nil {
					t.Errorf("partial replay: %q %v", data, ids)
				}
				return
			}
			if fmt.Sprint(ids) != tc.ids {
				t.Errorf("ids %v, want %s", ids, tc.ids)
			}
			var want []byte
			for _, id := range ids {
				var k int
				fmt.Sscanf(id, "a-%d", &k)
				ev, _ := events("a", k, 1)
				want = append(want, ev...)
			}
			if string(data) != string(want) {
				t.Errorf("data %q\nwant %q", data, want)
			}
		})
	}
}

// TestReplayTwoWriters: two replicas stored some events of a stream both
// (a response half open on one, the client resumed on the other, a takeover
// notice too late), interleaved, each numbering on its own. A replay gives
// each event once, in the order first stored.
func TestReplayTwoWriters(t *testing.T) {
	s := startTestServer(t)
	cfg := Config{Batch: BatchConfig{MaxDelay: time.Millisecond}}
	a := newPublisher(t, connect(t, s.ClientURL()), cfg)
	b := newPublisher(t, connect(t, s.ClientURL()), cfg)
	stored := 0
	// store stores events s-first.. of session sid, numbered from seq.
	store := func(p *Publisher, sid string, first, n, seq int) {
		r := record(sid, "s", first, n, false)
		r.FirstSeq, r.LastSeq = uint64(seq), uint64(seq+n-1)
		p.Append(r)
		stored += n
		waitFor(t, 5*time.Second, "acks", func() bool { return statsOf(t, a).Events+statsOf(t, b).Events == uint64(stored) })
	}
	store(a, "tw", 1, 3, 1) // s-1..s-3
	store(b, "tw", 3, 3, 3) // s-3..s-5
	store(a, "tw", 4, 1, 4) // s-4 again
	store(b, "tw", 6, 1, 6)
	// Each writer counts the session's other streams too: the later copy
	// may carry the higher number.
	store(a, "hi", 1, 3, 1)
	store(b, "hi", 4, 1, 4)
	store(a, "hi", 4, 1, 6) // a numbered 4-5 on another stream
	store(b, "hi", 5, 1, 5)
	for _, tc := range []struct{ sid, after, want string }{
		{"tw", "s-2", "[s-3 s-4 s-5 s-6]"},
		{"tw", "s-3", "[s-4 s-5 s-6]"}, // after b's copy of s-3, the later one
		{"hi", "s-3", "[s-4 s-5]"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		data, ids, err := a.Replay(ctx, tc.sid, "s", tc.after, "")
		cancel()
		if err != nil {
			t.Fatalf("replay after %s: %v", tc.after, err)
		}
		if fmt.Sprint(ids) != tc.want {
			t.Errorf("replay after %s: ids %v, want %s", tc.after, ids, tc.want)
		}
		if n := strings.Count(string(data), "id: "); n != len(ids) {
			t.Errorf("replay after %s: %d events in the data, %d ids", tc.after, n, len(ids))
		}
	}
}

// TestReplayRightAfterDelivery: a client that resumes at once missed
// events the journal took but has not published yet (a batch waits up to
// Batch.MaxDelay, here an hour): the replay publishes them first and
// replays them, instead of answering that the client's id is not stored.
func TestReplayRightAfterDelivery(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	p := newPublisher(t, nc, Config{Batch: BatchConfig{MaxDelay: time.Hour}})
	p.Append(record("now", "a", 1, 3, false))
	p.Append(record("now", "a", 4, 2, false))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, ids, err := p.Replay(ctx, "now", "a", "a-2", "a-5")
	if err != nil || fmt.Sprint(ids) != "[a-3 a-4 a-5]" {
		t.Fatalf("replay right after delivery: %v, %v; want [a-3 a-4 a-5]", ids, err)
	}
	// Nothing on its way: no wait.
	if err := p.Flush(ctx, "now"); err != nil {
		t.Errorf("flush with nothing on its way: %v", err)
	}
	if err := p.Flush(ctx, "never seen"); err != nil {
		t.Errorf("flush of an unknown session: %v", err)
	}
}

// TestReplayTooLarge: a replay over MaxReplayBytes is refused whole.
func TestReplayTooLarge(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	ev, _ := events("a", 1, 1)
	p := newPublisher(t, nc, Config{MaxReplayBytes: 3 * len(ev), Batch: BatchConfig{MaxEvents: 3, MaxDelay: 5 * time.Millisecond}})
	r := record("big", "a", 1, 9, false)
	r.FirstSeq, r.LastSeq = 1, 9
	p.Append(r)
	waitFor(t, 5*time.Second, "acks", func() bool { return statsOf(t, p).Events == 9 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, ids, err := p.Replay(ctx, "big", "a", "a-6", "a-9"); err != nil || len(ids) != 3 {
		t.Errorf("3 events within the bound: ids %v, err %v", ids, err)
	}
	if data, ids, err := p.Replay(ctx, "big", "a", "a-5", "a-9"); !errors.Is(err, session.ErrHistoryTooLarge) || data != nil || ids != nil {
		t.Errorf("4 events over the bound: %d bytes, ids %v, err %v; want ErrHistoryTooLarge and nothing", len(data), ids, err)
	}
}
