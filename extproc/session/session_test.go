package session

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// mix spreads small test keys over all 64 bits, as the keyed hash does:
// the window keys on the top 56.
func mix(k uint64) uint64 { return k * 0x9e3779b97f4a7c15 }

// TestWindowMatchesModel checks the ring + index against a plain model: an
// id is in the window when it is among the last n records. Sizes up to 127
// use one-byte index cells, larger ones two.
func TestWindowMatchesModel(t *testing.T) {
	for _, size := range []int{1, 2, 3, 7, 64, 100, 127, 128, 300} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			w := newWindow(size)
			if w.wide() != (size > 127) {
				t.Fatalf("wide index = %v for size %d", w.wide(), size)
			}
			var records []uint64
			rng := rand.New(rand.NewPCG(1, uint64(size)))
			for step := 0; step < 20000; step++ {
				// Small key space so ids repeat and collide in the index.
				h := mix(rng.Uint64N(uint64(3 * size)))
				if rng.IntN(4) == 0 {
					h ^= 1 << 60 // another id, same index home
				}
				inModel := false
				for _, r := range records[max(0, len(records)-size):] {
					inModel = inModel || r == h
				}
				if found := w.find(h) >= 0; found != inModel {
					t.Fatalf("step %d: find(%x)=%v, model has it: %v", step, h, found, inModel)
				}
				if rng.IntN(2) == 0 {
					w.add(h, 1)
					records = append(records, h)
				}
			}
		})
	}
}

func TestWindowEvictsOldest(t *testing.T) {
	w := newWindow(4)
	for k := uint64(1); k <= 6; k++ {
		w.add(mix(k), 1)
	}
	for k := uint64(1); k <= 6; k++ {
		want := k >= 3
		if got := w.find(mix(k)) >= 0; got != want {
			t.Errorf("find(%d) = %v, want %v", k, got, want)
		}
	}
	if s := w.find(mix(6)); w.position(s) != 5 {
		t.Errorf("position of newest = %d, want 5", w.position(s))
	}
}

func TestStreamTags(t *testing.T) {
	// The last 32 stream numbers, wherever they fall, have distinct tags.
	for first := uint32(1); first < 2000; first += 37 {
		seen := map[uint64]bool{}
		for n := first; n < first+maxStreams; n++ {
			tag := tagOf(n)
			if tag == 0 || seen[tag] {
				t.Fatalf("streams %d..%d: tag %d repeats or is 0", first, first+maxStreams-1, tag)
			}
			seen[tag] = true
		}
	}
}

func newTestTable(t *testing.T, cfg Config) *Table {
	t.Helper()
	tb := NewTable(cfg)
	t.Cleanup(tb.Close)
	return tb
}

func acquire(t *testing.T, tb *Table, id string) *Session {
	t.Helper()
	s, err := tb.AcquireNew(id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// deliver runs ids through a stream and returns which were delivered.
func deliver(st *Stream, ids ...string) []string {
	d := st.Begin()
	defer d.End()
	var out []string
	for _, id := range ids {
		if _, dup := d.Deliver([]byte(id), id != ""); !dup {
			out = append(out, id)
		}
	}
	return out
}

func TestDedupSemantics(t *testing.T) {
	tests := []struct {
		name   string
		first  []string // delivered on the first stream
		resume Resume
		second []string // what the upstream sends on the second request
		want   []string
	}{
		{
			name:   "resume with header, upstream overlaps",
			first:  []string{"1", "2", "3", "4"},
			resume: Resume{LastEventID: "4", HasLastEventID: true},
			second: []string{"3", "4", "5", "6"},
			want:   []string{"5", "6"},
		},
		{
			name:   "resume with header before the last delivered: the client lost 3 and 4",
			first:  []string{"1", "2", "3", "4"},
			resume: Resume{LastEventID: "2", HasLastEventID: true},
			second: []string{"2", "3", "4", "5"},
			want:   []string{"3", "4", "5"},
		},
		{
			name:   "resume without header drops everything delivered",
			first:  []string{"1", "2", "3"},
			second: []string{"1", "2", "3", "4"},
			want:   []string{"4"},
		},
		{
			// The client's id is one the session cannot match (sent back
			// changed, or never tracked): the upstream resumes after it,
			// so the client lacks the upstream's first event and what
			// followed it on that stream.
			name:   "unknown Last-Event-ID: the upstream's first id places the client",
			first:  []string{"1", "2", "3"},
			resume: Resume{LastEventID: "2 ", HasLastEventID: true},
			second: []string{"3", "4"},
			want:   []string{"3", "4"},
		},
		{
			name:   "unknown Last-Event-ID: what came before the first id is dropped",
			first:  []string{"1", "2", "3"},
			resume: Resume{LastEventID: "nope", HasLastEventID: true},
			second: []string{"2", "3", "1", "2", "4"},
			want:   []string{"2", "3", "4"},
		},
		{
			name:   "unknown Last-Event-ID, a new first id: dedup against the session",
			first:  []string{"1", "2"},
			resume: Resume{LastEventID: "nope", HasLastEventID: true},
			second: []string{"9", "1", "2", "3"},
			want:   []string{"9", "3"},
		},
		{
			name:   "events without ids are never dropped",
			first:  []string{"", "", "1"},
			second: []string{"", "1", ""},
			want:   []string{"", ""},
		},
		{
			name:   "duplicates inside one stream",
			second: []string{"a", "a", "b", "a"},
			want:   []string{"a", "b"},
		},
		{
			name:   "redelivered events are not delivered twice in the resumed stream",
			first:  []string{"1", "2", "3"},
			resume: Resume{LastEventID: "1", HasLastEventID: true},
			second: []string{"2", "2", "3", "3"},
			want:   []string{"2", "3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := newTestTable(t, Config{Window: 64})
			s := acquire(t, tb, "sess")
			st1 := s.OpenStream(Resume{})
			deliver(st1, tt.first...)
			st2 := s.OpenStream(tt.resume)
			got := deliver(st2, tt.second...)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("delivered %q, want %q", got, tt.want)
			}
		})
	}
}

// TestAnchoredResumeContinuesStream: a resume from an id the session does
// not know, placed by the upstream's first id, continues the stream that
// delivered it, so that a later resume from an event it sent again finds
// that stream and what it delivered after the event.
func TestAnchoredResumeContinuesStream(t *testing.T) {
	tb := newTestTable(t, Config{Window: 64})
	s := acquire(t, tb, "sess")
	a := s.OpenStream(Resume{})
	deliver(a, "1", "x ", "3", "4")
	deliver(s.OpenStream(Resume{}), "p1")
	b := s.OpenStream(Resume{LastEventID: "x", HasLastEventID: true})
	if got := deliver(b, "3", "4", "5"); fmt.Sprint(got) != "[3 4 5]" {
		t.Fatalf("anchored resume delivered %q, want [3 4 5]", got)
	}
	if b.ID() != a.ID() || !b.Resumed() {
		t.Errorf("anchored resume is stream %q (resumed %v), want %q", b.ID(), b.Resumed(), a.ID())
	}
	c := s.OpenStream(Resume{LastEventID: "3", HasLastEventID: true})
	if c.ID() != a.ID() {
		t.Errorf("resume from 3 is stream %q, want %q", c.ID(), a.ID())
	}
	if after, through, ok := c.Missed(); !ok || after != "3" || through != "5" {
		t.Errorf("Missed() = %q, %q, %v; want 3 through 5", after, through, ok)
	}
	if got := deliver(c, "4", "5", "6"); fmt.Sprint(got) != "[4 5 6]" {
		t.Errorf("resume from 3 delivered %q, want [4 5 6]", got)
	}
}

// TestSupersededResponse: the client resumed a stream while its first
// response still runs (a half-open last mile: Envoy has not noticed the
// client left). What the first response still sends is forwarded and not
// recorded, so the resumed response delivers it, numbered and stored once.
func TestSupersededResponse(t *testing.T) {
	tb := newTestTable(t, Config{Window: 64})
	s := acquire(t, tb, "sess")
	a := s.OpenStream(Resume{})
	deliver(a, "1", "2")
	b := s.OpenStream(Resume{LastEventID: "2", HasLastEventID: true})
	if b.ID() != a.ID() {
		t.Fatalf("resume is stream %q, want %q", b.ID(), a.ID())
	}
	var seqs []uint64
	d := a.Begin()
	for _, id := range []string{"3", "4", "5"} {
		seq, dup := d.Deliver([]byte(id), true)
		if dup {
			t.Errorf("the superseded response dropped %s", id)
		}
		seqs = append(seqs, seq)
	}
	d.End()
	if fmt.Sprint(seqs) != "[0 0 0]" {
		t.Errorf("the superseded response numbered its events %v, want none", seqs)
	}
	d = b.Begin()
	seqs = seqs[:0]
	for _, id := range []string{"3", "4", "5", "6", "5"} {
		seq, dup := d.Deliver([]byte(id), true)
		if !dup {
			seqs = append(seqs, seq)
		}
	}
	d.End()
	if fmt.Sprint(seqs) != "[3 4 5 6]" {
		t.Errorf("the resumed response numbered %v, want [3 4 5 6] and the repeat of 5 dropped", seqs)
	}
	if got := b.LastID(); got != "6" {
		t.Errorf("the stream's last id is %q, want 6", got)
	}
}

// TestTakenOverElsewhere: the client left a response half open and resumed
// its stream on another replica (Table.TakenOver). The response here is
// superseded if it delivered the client's Last-Event-ID; a notice about an
// id that an earlier response of the stream delivered (the client has
// resumed here since), an unknown id, or another stream leaves it alone.
func TestTakenOverElsewhere(t *testing.T) {
	tb := newTestTable(t, Config{Window: 64})
	s := acquire(t, tb, "sess")
	a := s.OpenStream(Resume{})
	other := s.OpenStream(Resume{})
	deliver(a, "1", "2")
	deliver(other, "x1")
	numbered := func(st *Stream, id string) bool {
		d := st.Begin()
		defer d.End()
		seq, _ := d.Deliver([]byte(id), true)
		return seq != 0
	}
	for _, n := range []struct{ stream, id string }{{other.ID(), "2"}, {a.ID(), "nope"}, {a.ID(), ""}, {a.ID(), "x1"}} {
		if tb.TakenOver("sess", n.stream, n.id) {
			t.Errorf("a notice for stream %q from %q superseded a response", n.stream, n.id)
		}
	}
	if tb.TakenOver("no such session", a.ID(), "2") {
		t.Error("a notice for a session the table does not hold superseded a response")
	}
	if !numbered(a, "3") {
		t.Fatal("the response was superseded by a notice that does not concern it")
	}
	if !tb.TakenOver("sess", a.ID(), "2") {
		t.Fatal("the response that delivered the client's Last-Event-ID was not superseded")
	}
	if numbered(a, "4") {
		t.Error("the superseded response numbered an event")
	}
	if !numbered(other, "x2") {
		t.Error("the session's other stream was superseded")
	}
	// The client comes back here from 3: a late notice about its resume
	// from 2 elsewhere concerns the response it left, not this one.
	b := s.OpenStream(Resume{LastEventID: "3", HasLastEventID: true})
	if tb.TakenOver("sess", a.ID(), "2") {
		t.Error("a late notice superseded the newer response")
	}
	if !numbered(b, "5") {
		t.Error("the newer response was superseded by a late notice")
	}
}

// TestResumesWithNothingBetween: a client resumes twice from the same id
// with no event delivered between the two: the first resume's response is
// superseded all the same (nextSince).
func TestResumesWithNothingBetween(t *testing.T) {
	tb := newTestTable(t, Config{Window: 64})
	s := acquire(t, tb, "sess")
	a := s.OpenStream(Resume{})
	deliver(a, "1")
	b := s.OpenStream(Resume{LastEventID: "1", HasLastEventID: true})
	c := s.OpenStream(Resume{LastEventID: "1", HasLastEventID: true})
	for _, st := range []*Stream{a, b} {
		d := st.Begin()
		if seq, _ := d.Deliver([]byte("2"), true); seq != 0 {
			t.Errorf("a superseded response numbered an event %d", seq)
		}
		d.End()
	}
	d := c.Begin()
	if seq, _ := d.Deliver([]byte("2"), true); seq == 0 {
		t.Error("the last resume's response did not number its event")
	}
	d.End()
}

// TestAnchorTakesOverMovedStream: the stream an anchored resume takes over
// was moved in the session's list after the response's own new stream (a
// resume from a known id touched it): the takeover still names it, and the
// response resumed from the known id is superseded.
func TestAnchorTakesOverMovedStream(t *testing.T) {
	tb := newTestTable(t, Config{Window: 64})
	s := acquire(t, tb, "sess")
	a := s.OpenStream(Resume{})
	deliver(a, "1", "2", "3")
	b := s.OpenStream(Resume{LastEventID: "nope", HasLastEventID: true})
	c := s.OpenStream(Resume{LastEventID: "1", HasLastEventID: true})
	if got := deliver(b, "2", "3", "4"); fmt.Sprint(got) != "[2 3 4]" {
		t.Errorf("anchored resume delivered %q, want [2 3 4]", got)
	}
	if b.ID() != a.ID() {
		t.Errorf("anchored resume is stream %q, want %q", b.ID(), a.ID())
	}
	d := c.Begin()
	if seq, _ := d.Deliver([]byte("5"), true); seq != 0 {
		t.Errorf("the response the anchored one superseded numbered an event %d", seq)
	}
	d.End()
}

// TestAnchorAfterHalfOpen: the client left a response half open and
// resumed from an id the session does not know; the old response delivered
// 3 and 4 before the upstream's first id placed the resume. The resume
// delivers them: the client left before they went out.
func TestAnchorAfterHalfOpen(t *testing.T) {
	tb := newTestTable(t, Config{Window: 64})
	s := acquire(t, tb, "sess")
	a := s.OpenStream(Resume{})
	deliver(a, "1", "2")
	b := s.OpenStream(Resume{LastEventID: "2 ", HasLastEventID: true})
	deliver(a, "3", "4")
	if got := deliver(b, "3", "4", "5"); fmt.Sprint(got) != "[3 4 5]" {
		t.Errorf("anchored resume delivered %q, want [3 4 5]", got)
	}
}

func TestResumeContinuesStream(t *testing.T) {
	tb := newTestTable(t, Config{})
	s := acquire(t, tb, "sess")
	a := s.OpenStream(Resume{})
	b := s.OpenStream(Resume{})
	deliver(a, "a1", "a2")
	deliver(b, "b1")
	r := s.OpenStream(Resume{LastEventID: "a2", HasLastEventID: true})
	if r.ID() != a.ID() || !r.Resumed() {
		t.Errorf("resume after a2 got stream %q (resumed %v), want %q", r.ID(), r.Resumed(), a.ID())
	}
	if got := r.LastID(); got != "a2" {
		t.Errorf("last id = %q, want a2", got)
	}
	n := s.OpenStream(Resume{LastEventID: "zz", HasLastEventID: true})
	if n.ID() == a.ID() || n.ID() == b.ID() || n.Resumed() {
		t.Errorf("unknown id resumed stream %q", n.ID())
	}
}

func TestSessionsIndependent(t *testing.T) {
	tb := newTestTable(t, Config{})
	a := acquire(t, tb, "A").OpenStream(Resume{})
	b := acquire(t, tb, "B").OpenStream(Resume{})
	deliver(a, "1", "2")
	if got := deliver(b, "1", "2"); len(got) != 2 {
		t.Errorf("session B delivered %q, want both", got)
	}
}

func TestSequenceNumbers(t *testing.T) {
	tb := newTestTable(t, Config{})
	s := acquire(t, tb, "S")
	a, b := s.OpenStream(Resume{}), s.OpenStream(Resume{})
	var seqs []uint64
	for _, step := range []struct {
		st *Stream
		id string
	}{{a, "1"}, {b, "x"}, {a, "1"}, {a, ""}, {b, "y"}} {
		d := step.st.Begin()
		seq, dup := d.Deliver([]byte(step.id), step.id != "")
		d.End()
		if !dup {
			seqs = append(seqs, seq)
		}
	}
	if fmt.Sprint(seqs) != "[1 2 3 4]" {
		t.Errorf("seqs %v, want [1 2 3 4]", seqs)
	}
}

func TestEvictionByCapPrefersIdle(t *testing.T) {
	tb := newTestTable(t, Config{MaxSessions: 2 * shardCount}) // two per shard
	busy := acquire(t, tb, "busy")
	deliver(busy.OpenStream(Resume{}), "1")
	// Fill busy's shard with idle sessions; busy must survive.
	sh := tb.shard("busy")
	for i := 0; i < 100; i++ {
		id := "idle" + strconv.Itoa(i)
		if tb.shard(id) != sh {
			continue
		}
		tb.Release(acquire(t, tb, id))
	}
	sh.mu.Lock()
	_, ok := sh.m["busy"]
	n := len(sh.m)
	sh.mu.Unlock()
	if !ok {
		t.Error("busy session evicted while idle ones were there")
	}
	if n > tb.perShard {
		t.Errorf("shard holds %d sessions, cap %d", n, tb.perShard)
	}
}

func TestEvictionByTTL(t *testing.T) {
	tb := newTestTable(t, Config{TTL: time.Hour})
	idle := acquire(t, tb, "idle")
	tb.Release(idle)
	open := acquire(t, tb, "open")
	_ = open
	if n := tb.evictIdle(now() + int64(2*time.Hour)); n != 1 {
		t.Errorf("evicted %d, want 1", n)
	}
	if tb.Len() != 1 {
		t.Errorf("len %d, want 1 (the session with an open stream)", tb.Len())
	}
	// A new request for the evicted session starts it fresh.
	s := acquire(t, tb, "idle")
	if got := deliver(s.OpenStream(Resume{}), "1"); len(got) != 1 {
		t.Errorf("fresh session dropped %q", got)
	}
}

type fakeHistory struct{ h *History }

func (f fakeHistory) Stale(context.Context, string, uint64) (bool, error) { return false, nil }
func (f fakeHistory) Load(ctx context.Context, id string) (*History, error) {
	return f.h, nil
}

func TestRestoreFromHistory(t *testing.T) {
	h := &History{
		Seq:     10,
		Streams: []StreamState{{Stream: "s-1", LastEventID: "9"}},
		Events:  []EventRef{{ID: "8", Stream: "s-1", Seq: 9}, {ID: "9", Stream: "s-1", Seq: 10}},
	}
	tb := newTestTable(t, Config{Loader: fakeHistory{h}})
	s, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	st := s.OpenStream(Resume{LastEventID: "9", HasLastEventID: true})
	if st.ID() != "s-1" {
		t.Errorf("stream %q, want s-1", st.ID())
	}
	if got := deliver(st, "8", "9", "10"); fmt.Sprint(got) != "[10]" {
		t.Errorf("delivered %q, want [10]", got)
	}
	d := st.Begin()
	seq, _ := d.Deliver([]byte("11"), true)
	d.End()
	if seq != 12 {
		t.Errorf("seq %d, want 12 (history ended at 10)", seq)
	}
}

func TestConcurrentStreams(t *testing.T) {
	tb := newTestTable(t, Config{Window: 4096})
	s := acquire(t, tb, "S")
	var wg sync.WaitGroup
	var mu sync.Mutex
	delivered := map[string]int{}
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := s.OpenStream(Resume{})
			for i := 0; i < 500; i++ {
				got := deliver(st, strconv.Itoa(i))
				mu.Lock()
				for _, id := range got {
					delivered[id]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for id, n := range delivered {
		if n != 1 {
			t.Fatalf("id %s delivered %d times", id, n)
		}
	}
	if len(delivered) != 500 {
		t.Fatalf("delivered %d distinct ids, want 500", len(delivered))
	}
}

// TestFootprint bounds the heap an idle session takes, with a 16-byte id, one
// stream and its window full of delivered ids: at window 64 at most 1 KiB, so
// a million idle sessions fit in 1 GiB, and at the default window 1024 at most
// 16 KiB.
func TestFootprint(t *testing.T) {
	for _, tc := range []struct{ window, limit int }{{64, 1 << 10}, {1024, 16 << 10}} {
		const n = 4000
		tb := newTestTable(t, Config{Window: tc.window, MaxSessions: 10 * n})
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := 0; i < n; i++ {
			s := acquire(t, tb, fmt.Sprintf("session-%08d", i))
			st := s.OpenStream(Resume{})
			d := st.Begin()
			for e := 0; e < tc.window; e++ {
				d.Deliver([]byte(strconv.Itoa(e)), true)
			}
			d.End()
			tb.Release(s)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		per := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
		t.Logf("window %d: %.0f bytes per idle session (heap), %d by footprint()", tc.window, per, acquire(t, tb, "session-00000000").footprint())
		if per > float64(tc.limit) {
			t.Errorf("window %d: %.0f bytes per idle session, want at most %d", tc.window, per, tc.limit)
		}
		runtime.KeepAlive(tb)
	}
}

// staleJournal reports every session stale and has history for "S".
type staleJournal struct{ h *History }

func (j staleJournal) Load(context.Context, string) (*History, error) {
	return j.h, nil
}
func (j staleJournal) Stale(context.Context, string, uint64) (bool, error) { return true, nil }

func TestStaleCopyIsReloaded(t *testing.T) {
	// Another replica delivered 1..3 on stream r-1; this one cached the
	// session before that.
	h := &History{Seq: 3, Streams: []StreamState{{Stream: "r-1", LastEventID: "3"}},
		Events: []EventRef{{ID: "1", Stream: "r-1", Seq: 1}, {ID: "2", Stream: "r-1", Seq: 2}, {ID: "3", Stream: "r-1", Seq: 3}}}
	tb := newTestTable(t, Config{Loader: staleJournal{h}})
	old := acquire(t, tb, "S") // cached, history not read
	tb.Release(old)
	s, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	if s == old {
		t.Fatal("the stale copy was kept")
	}
	st := s.OpenStream(Resume{LastEventID: "3", HasLastEventID: true})
	if st.ID() != "r-1" {
		t.Errorf("resume continued stream %q, want r-1", st.ID())
	}
	if got := deliver(st, "2", "3", "4"); fmt.Sprint(got) != "[4]" {
		t.Errorf("delivered %v, want [4]", got)
	}
	// A copy in use is not dropped.
	busy, _ := tb.Acquire(context.Background(), "S")
	if busy != s {
		t.Error("a copy with an open stream was replaced")
	}
}

// uncheckableJournal holds h; it cannot tell whether a cached copy is
// current, and loads only while up is set.
type uncheckableJournal struct {
	h  atomic.Pointer[History]
	up atomic.Bool
}

func (j *uncheckableJournal) Load(context.Context, string) (*History, error) {
	if !j.up.Load() {
		return nil, context.DeadlineExceeded
	}
	return j.h.Load(), nil
}
func (j *uncheckableJournal) Stale(context.Context, string, uint64) (bool, error) {
	return false, context.DeadlineExceeded
}

// history1 is a session that delivered ids 1..n on stream r-1.
func history1(n int) *History {
	h := &History{Seq: uint64(n), Streams: []StreamState{{Stream: "r-1", LastEventID: fmt.Sprint(n)}}}
	for i := 1; i <= n; i++ {
		h.Events = append(h.Events, EventRef{ID: fmt.Sprint(i), Stream: "r-1", Seq: uint64(i)})
	}
	return h
}

// TestUncheckedCopy: a cached copy whose freshness the journal could not
// confirm is kept, loaded but unchecked (a resume from an id it does not
// hold is told error, see extproc's readReplay); the next request that
// finds the journal back loads it again and takes the last ids of what
// another writer delivered meanwhile.
func TestUncheckedCopy(t *testing.T) {
	j := &uncheckableJournal{}
	j.h.Store(history1(5))
	j.up.Store(true)
	tb := newTestTable(t, Config{Loader: j})
	s, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	tb.Release(s)
	// Another replica delivers 6..8; then the journal cannot be read.
	j.h.Store(history1(8))
	j.up.Store(false)
	again, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	if again != s || !s.Unchecked() || s.Unloaded() {
		t.Fatalf("after a failed check: same copy %v, Unchecked %v, Unloaded %v; want the copy kept, unchecked, loaded",
			again == s, s.Unchecked(), s.Unloaded())
	}
	if s.Holds("6") || !s.Holds("5") {
		t.Error("the unchecked copy should hold 5, not 6")
	}
	tb.Release(s)
	j.up.Store(true)
	s, err = tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	if s.Unchecked() || s.Unloaded() {
		t.Error("still unchecked once the journal answers")
	}
	st := s.OpenStream(Resume{LastEventID: "6", HasLastEventID: true})
	if after, through, ok := st.Missed(); !ok || after != "6" || through != "8" {
		t.Errorf("a resume from 6 missed (%q, %q, %v) after the reload, want (6, 8)", after, through, ok)
	}
}

// TestLocateInCopyHeldHere: this replica holds the session's standalone GET
// open (its copy in use, never reloaded) while another replica serves its
// stream p. A small session asks the journal for an id it lacks only when
// shared (another response of it open here); the resume, located on p,
// which this copy never saw, misses whatever the journal holds of p after
// the client's id.
func TestLocateInCopyHeldHere(t *testing.T) {
	tb := newTestTable(t, Config{Window: 64})
	s := acquire(t, tb, "S")
	if tb.Shared(s) {
		t.Error("Shared with one response open: want false")
	}
	get := s.OpenStream(Resume{})
	deliver(get, "g1")
	again := acquire(t, tb, "S") // the resume's request
	if again != s || !tb.Shared(s) {
		t.Fatal("Shared with two responses open: want true")
	}
	if s.NeedsLocate("5", false) {
		t.Error("NeedsLocate(5, not shared) in a session holding all it delivered: want false")
	}
	if !s.NeedsLocate("5", true) {
		t.Error("NeedsLocate(5, shared): want true")
	}
	if s.NeedsLocate("g1", true) || s.NeedsLocate("", true) {
		t.Error("NeedsLocate of an id held, or of none: want false")
	}
	s.NotStored("zz")
	if s.NeedsLocate("zz", true) {
		t.Error("NeedsLocate of an id found not stored: want false")
	}

	st := s.OpenStream(Resume{LastEventID: "5", HasLastEventID: true, Stream: "p"})
	if st.ID() != "p" || !st.Located() {
		t.Fatalf("resume continued stream %q (located %v), want p", st.ID(), st.Located())
	}
	if after, through, ok := st.Missed(); !ok || after != "5" || through != "" {
		t.Errorf("Missed() = %q, %q, %v; want after 5, through the end", after, through, ok)
	}
	d := st.Begin()
	d.Replayed([]string{"6"})
	d.End()
	if got := deliver(st, "6", "7"); fmt.Sprint(got) != "[7]" {
		t.Errorf("delivered %v, want [7]", got)
	}
	if got := deliver(get, "g1", "g2"); fmt.Sprint(got) != "[g2]" || get.LastID() != "g2" {
		t.Errorf("the GET stream delivered %v, last id %q; want [g2], g2", got, get.LastID())
	}
	tb.Release(again)
	if tb.Shared(s) {
		t.Error("Shared after the resume's release: want false")
	}
}

// TestStaleReloadKeepsSequence: a copy dropped as stale may have assigned
// sequence numbers the journal has not stored yet; the reloaded session
// goes on after them, so no two events of the session share a number.
func TestStaleReloadKeepsSequence(t *testing.T) {
	h := &History{Seq: 3, Streams: []StreamState{{Stream: "r-1", LastEventID: "3"}}}
	tb := newTestTable(t, Config{Loader: staleJournal{h}})
	old := acquire(t, tb, "S")
	deliver(old.OpenStream(Resume{}), "a", "b", "c", "d", "e") // seq 1..5, not stored yet
	tb.Release(old)
	s, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	if s == old {
		t.Fatal("the stale copy was kept")
	}
	d := s.OpenStream(Resume{}).Begin()
	seq, _ := d.Deliver([]byte("f"), true)
	d.End()
	if seq != 6 {
		t.Errorf("seq %d after reload, want 6 (the dropped copy assigned 1..5; the journal holds 1..3)", seq)
	}
}

// flakyHistory fails its first Load, then gives h.
type flakyHistory struct {
	h     *History
	loads atomic.Int32
}

func (f *flakyHistory) Load(ctx context.Context, id string) (*History, error) {
	if f.loads.Add(1) == 1 {
		return nil, context.DeadlineExceeded
	}
	return f.h, nil
}

func (f *flakyHistory) Stale(context.Context, string, uint64) (bool, error) { return false, nil }

// TestFailedLoadIsRetried: a session whose history did not load (a timeout
// under load) is not trusted for its lifetime: the next request that finds
// it idle loads it again, and dedup then knows what was stored.
func TestFailedLoadIsRetried(t *testing.T) {
	h := &History{Seq: 2, Streams: []StreamState{{Stream: "r-1", LastEventID: "2"}},
		Events: []EventRef{{ID: "1", Stream: "r-1", Seq: 1}, {ID: "2", Stream: "r-1", Seq: 2}}}
	tb := newTestTable(t, Config{Loader: &flakyHistory{h: h}})
	first, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	tb.Release(first)
	s, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	st := s.OpenStream(Resume{LastEventID: "2", HasLastEventID: true})
	if got := deliver(st, "1", "2", "3"); fmt.Sprint(got) != "[3]" {
		t.Errorf("delivered %v after the retried load, want [3]", got)
	}
}

// TestStoredPrincipalAfterFailedLoad: a session whose load failed is bound
// to its first caller, whoever that is; when a later load succeeds, the
// principal the journal stored is the owner again, and the first caller is
// not.
func TestStoredPrincipalAfterFailedLoad(t *testing.T) {
	h := &History{Seq: 2, Principal: "owner", Streams: []StreamState{{Stream: "r-1", LastEventID: "2"}},
		Events: []EventRef{{ID: "1", Stream: "r-1", Seq: 1}, {ID: "2", Stream: "r-1", Seq: 2}}}
	tb := newTestTable(t, Config{Loader: &flakyHistory{h: h}})
	first, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	if !first.Unloaded() || !first.Bind("other") {
		t.Fatalf("the first caller of an unloaded session: Unloaded %v; want it bound to the caller", first.Unloaded())
	}
	tb.Release(first)
	s, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	if s.Unloaded() {
		t.Fatal("still unloaded after the second load")
	}
	if owner, other := s.Bind("owner"), s.Bind("other"); !owner || other {
		t.Errorf("after the load: the stored owner owns %v, the first caller %v; want true, false", owner, other)
	}
}

// partialHistory is a journal whose loads fail after reading the last
// sequence number.
type partialHistory struct{ seq uint64 }

func (p partialHistory) Load(context.Context, string) (*History, error) {
	return &History{Seq: p.seq}, context.DeadlineExceeded
}

func (p partialHistory) Stale(context.Context, string, uint64) (bool, error) { return false, nil }

// TestFailedLoadKeepsNumbering: a load that failed after it learnt the
// session's last sequence number leaves the session numbering after it, so
// no two events of the session share a number in the journal.
func TestFailedLoadKeepsNumbering(t *testing.T) {
	tb := newTestTable(t, Config{Loader: partialHistory{seq: 41}})
	s, err := tb.Acquire(context.Background(), "S")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Unloaded() {
		t.Error("Unloaded() = false after a failed load")
	}
	d := s.OpenStream(Resume{}).Begin()
	seq, _ := d.Deliver([]byte("x"), true)
	d.End()
	if seq != 42 {
		t.Errorf("first event numbered %d after a failed load that read 41, want 42", seq)
	}
}

// TestProvisionalNumbering: a session whose first load failed before it
// learnt the session's last number numbers from 1 against a base not yet
// known, which its records carry; the next load resolves the base, and
// numbering goes on after the base plus what was numbered meanwhile. When
// the journal resolves the base first (storing those records), the next
// delivery goes on from it.
func TestProvisionalNumbering(t *testing.T) {
	deliverSeqs := func(s *Session, ids ...string) (seqs []uint64, base *SeqBase) {
		d := s.OpenStream(Resume{}).Begin()
		defer d.End()
		base = d.SeqBase()
		for _, id := range ids {
			seq, _ := d.Deliver([]byte(id), true)
			seqs = append(seqs, seq)
		}
		return seqs, base
	}
	loadS := func(t *testing.T, tb *Table) *Session {
		t.Helper()
		s, err := tb.Acquire(context.Background(), "S")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	t.Run("the next load resolves", func(t *testing.T) {
		tb := newTestTable(t, Config{Loader: &flakyHistory{h: &History{Seq: 100}}})
		s := loadS(t, tb)
		seqs, base := deliverSeqs(s, "a", "b")
		if base == nil || fmt.Sprint(seqs) != "[1 2]" {
			t.Fatalf("after a failed load: seqs %v, base %v; want [1 2] counted from a base", seqs, base)
		}
		if _, ok := base.Value(); ok {
			t.Fatal("base resolved before anything read the journal")
		}
		tb.Release(s)
		s = loadS(t, tb) // loads again
		if v, ok := base.Value(); !ok || v != 100 {
			t.Errorf("base after the second load = %d, %v; want 100", v, ok)
		}
		seqs, base = deliverSeqs(s, "c")
		if base != nil || fmt.Sprint(seqs) != "[103]" {
			t.Errorf("after the load: seqs %v, base %v; want [103] and final numbers", seqs, base)
		}
	})

	t.Run("the journal resolves", func(t *testing.T) {
		tb := newTestTable(t, Config{Loader: &flakyHistory{h: &History{Seq: 100}}})
		s := loadS(t, tb)
		_, base := deliverSeqs(s, "a", "b")
		if got := base.Resolve(40); got != 40 {
			t.Fatalf("Resolve(40) = %d", got)
		}
		if got := base.Resolve(7); got != 40 {
			t.Errorf("a second Resolve changed the base to %d", got)
		}
		seqs, base := deliverSeqs(s, "c")
		if base != nil || fmt.Sprint(seqs) != "[43]" {
			t.Errorf("seqs %v, base %v; want [43] and final numbers", seqs, base)
		}
		tb.Release(s)
		s = loadS(t, tb) // the retried load knows 100
		if seqs, _ := deliverSeqs(s, "d"); fmt.Sprint(seqs) != "[101]" {
			t.Errorf("after the load: seqs %v, want [101]", seqs)
		}
	})

	t.Run("a load that learnt the number is final", func(t *testing.T) {
		tb := newTestTable(t, Config{Loader: partialHistory{seq: 41}})
		s := loadS(t, tb)
		if seqs, base := deliverSeqs(s, "a"); base != nil || fmt.Sprint(seqs) != "[42]" {
			t.Errorf("seqs %v, base %v; want [42] and final numbers", seqs, base)
		}
	})
}

// TestLostEventsAgainNotRenumbered: events a resuming client says it lost go
// to it again, but keep the number they were stored with: they are neither
// numbered nor stored again, and a second repeat in the response is dropped.
func TestLostEventsAgainNotRenumbered(t *testing.T) {
	tb := newTestTable(t, Config{})
	s := acquire(t, tb, "S")
	deliver(s.OpenStream(Resume{}), "1", "2", "3") // seq 1..3
	d := s.OpenStream(Resume{LastEventID: "1", HasLastEventID: true}).Begin()
	defer d.End()
	var got []string
	for _, id := range []string{"2", "3", "3", "4"} {
		seq, dup := d.Deliver([]byte(id), true)
		got = append(got, fmt.Sprintf("%s:%d/%t", id, seq, dup))
	}
	if want := "[2:0/false 3:0/false 3:0/true 4:4/false]"; fmt.Sprint(got) != want {
		t.Errorf("deliveries %v, want %s", got, want)
	}
}

func TestForget(t *testing.T) {
	tbl := NewTable(Config{Window: 8})
	defer tbl.Close()
	s, err := tbl.Acquire(context.Background(), "f")
	if err != nil {
		t.Fatal(err)
	}
	if !tbl.Forget("f") || tbl.Len() != 1 {
		t.Errorf("Forget with a response open: %d sessions, want it kept until the response ends", tbl.Len())
	}
	tbl.Release(s)
	if tbl.Len() != 0 {
		t.Errorf("%d sessions after the last response of a forgotten session ended, want 0", tbl.Len())
	}
	if tbl.Forget("f") || tbl.Forget("never") {
		t.Error("Forget reported a session the table does not hold")
	}
	idle, err := tbl.Acquire(context.Background(), "g")
	if err != nil {
		t.Fatal(err)
	}
	tbl.Release(idle)
	if !tbl.Forget("g") || tbl.Len() != 0 {
		t.Errorf("Forget of an idle session: %d sessions left, want 0", tbl.Len())
	}
}

// TestLocatedResume covers a resume from an id the session no longer holds,
// whose stream the journal named (Resume.Stream): in a session restored
// from history, after the stream was forgotten behind 32 newer ones, and
// for an id the journal does not hold.
func TestLocatedResume(t *testing.T) {
	t.Run("restored session", func(t *testing.T) {
		// 100 events stored; the window of 4 restores only the last 4.
		h := &History{Seq: 100, Streams: []StreamState{{Stream: "get", LastEventID: "100"}}}
		for i := 97; i <= 100; i++ {
			h.Events = append(h.Events, EventRef{ID: strconv.Itoa(i), Stream: "get", Seq: uint64(i)})
		}
		tb := newTestTable(t, Config{Window: 4, Loader: fakeHistory{h}})
		s, err := tb.Acquire(context.Background(), "R")
		if err != nil {
			t.Fatal(err)
		}
		if !s.NeedsLocate("3", false) {
			t.Fatal("NeedsLocate(3) = false in a session restored from 100 events with a window of 4")
		}
		if s.NeedsLocate("99", false) || s.NeedsLocate("100", false) {
			t.Error("NeedsLocate of an id the window holds")
		}
		st := s.OpenStream(Resume{LastEventID: "3", HasLastEventID: true, Stream: "get"})
		if !st.Located() || !st.Resumed() || st.ID() != "get" {
			t.Errorf("located %v, resumed %v, stream %q; want the located stream get", st.Located(), st.Resumed(), st.ID())
		}
		if after, through, ok := st.Missed(); !ok || after != "3" || through != "100" {
			t.Errorf("Missed() = %q, %q, %v; want 3 through 100", after, through, ok)
		}
		// The window's ids of that stream are all after 3: they may go to
		// the client again (the replay failed, say).
		if got := deliver(st, "99", "100", "101"); fmt.Sprint(got) != "[99 100 101]" {
			t.Errorf("delivered %q, want [99 100 101]", got)
		}
	})
	// replayFrom2 delivers 1..10 on a stream of a new session with the
	// given window, and resumes it from 2 with 3..10 replayed (the resume
	// located, 2 having left the window).
	replayFrom2 := func(t *testing.T, window int) (s *Session, st *Stream, missed []string) {
		tb := newTestTable(t, Config{Window: window})
		s = acquire(t, tb, "L")
		get := s.OpenStream(Resume{})
		for i := 1; i <= 10; i++ {
			deliver(get, strconv.Itoa(i))
			if i > 2 {
				missed = append(missed, strconv.Itoa(i))
			}
		}
		st = s.OpenStream(Resume{LastEventID: "2", HasLastEventID: true, Stream: get.ID()})
		if _, _, ok := st.Missed(); !ok {
			t.Fatal("Missed() = false")
		}
		d := st.Begin()
		d.Replayed(missed)
		d.End()
		return s, st, missed
	}
	t.Run("replay longer than the window", func(t *testing.T) {
		// The upstream, resuming from 2 too, sends 3..10 again. With a
		// window of 4 the replay's first ids have left it, and each repeat
		// forwarded would push out the next: all of them are duplicates.
		s, st, missed := replayFrom2(t, 4)
		d := st.Begin()
		if !d.Dup([]byte("3")) || d.Dup([]byte("11")) {
			t.Error("Dup(3), Dup(11) after the replay: want true, false")
		}
		d.End()
		if got := deliver(st, append(missed, "11", "12")...); fmt.Sprint(got) != "[11 12]" {
			t.Errorf("the upstream's repeats of a replay of 8 with a window of 4: delivered %q, want [11 12]", got)
		}
		// Another response of the session is not the replay's.
		if got := deliver(s.OpenStream(Resume{}), "3"); fmt.Sprint(got) != "[3]" {
			t.Errorf("a new stream delivered %q, want [3] (3 has left the window)", got)
		}
	})
	t.Run("replay, then another stream delivers", func(t *testing.T) {
		// A replay that fits the window exactly; another stream of the
		// session pushes the replay's first id out before the upstream's
		// repeats come. Without the replay's own record of its ids, each
		// repeat forwarded would push out the next.
		s, st, missed := replayFrom2(t, 8)
		deliver(s.OpenStream(Resume{}), "p1")
		if got := deliver(st, append(missed, "11")...); fmt.Sprint(got) != "[11]" {
			t.Errorf("the upstream's repeats of the replay: delivered %q, want [11]", got)
		}
		// Past the replay, the window decides again.
		if got := deliver(st, "10", "12"); fmt.Sprint(got) != "[12]" {
			t.Errorf("delivered %q, want [12]", got)
		}
	})
	t.Run("upstream resending from before the client's id", func(t *testing.T) {
		// An id before the repeats (the client's own, 2, left the window
		// of 4) does not end the replay's record of its ids.
		_, st, missed := replayFrom2(t, 4)
		if got := deliver(st, append([]string{"2"}, append(missed, "11")...)...); fmt.Sprint(got) != "[2 11]" {
			t.Errorf("delivered %q, want [2 11]", got)
		}
	})
	t.Run("upstream sending no repeats", func(t *testing.T) {
		// More than a window's worth of new ids: the record is dropped
		// (it would otherwise last as long as the response), and the
		// window decides: 3 has left it.
		_, st, _ := replayFrom2(t, 4)
		if got := deliver(st, "11", "12", "13", "14", "15", "3"); fmt.Sprint(got) != "[11 12 13 14 15 3]" {
			t.Errorf("delivered %q, want [11 12 13 14 15 3]", got)
		}
	})
	t.Run("forgotten stream", func(t *testing.T) {
		tb := newTestTable(t, Config{Window: 4})
		s := acquire(t, tb, "F")
		get := s.OpenStream(Resume{})
		deliver(get, "g1", "g2", "g3", "g4", "g5", "g6")
		for i := range 32 {
			deliver(s.OpenStream(Resume{}), fmt.Sprint("p", i))
		}
		if !s.NeedsLocate("g2", false) {
			t.Fatal("NeedsLocate(g2) = false")
		}
		st := s.OpenStream(Resume{LastEventID: "g2", HasLastEventID: true, Stream: get.ID()})
		if !st.Located() || st.ID() != get.ID() {
			t.Errorf("located %v, stream %q; want %q", st.Located(), st.ID(), get.ID())
		}
		// Its last id is not known here: everything stored after g2.
		if after, through, ok := st.Missed(); !ok || after != "g2" || through != "" {
			t.Errorf("Missed() = %q, %q, %v; want g2 through the end", after, through, ok)
		}
	})
	t.Run("resumed stream kept over newer ones", func(t *testing.T) {
		tb := newTestTable(t, Config{Window: 64})
		s := acquire(t, tb, "K")
		get := s.OpenStream(Resume{})
		deliver(get, "g1")
		for i := range 20 {
			deliver(s.OpenStream(Resume{}), fmt.Sprint("p", i))
		}
		deliver(s.OpenStream(Resume{LastEventID: "g1", HasLastEventID: true}), "g2")
		for i := range 20 {
			deliver(s.OpenStream(Resume{}), fmt.Sprint("q", i))
		}
		if st := s.OpenStream(Resume{LastEventID: "g2", HasLastEventID: true}); st.ID() != get.ID() {
			t.Errorf("resume of the GET stream after 41 newer streams opened a new stream")
		}
	})
	t.Run("evicted by places without a number", func(t *testing.T) {
		// Two events numbered, the window of 4 full: an event sent again
		// and a mark took places too, and 1 has left the window.
		tb := newTestTable(t, Config{Window: 4})
		s := acquire(t, tb, "E")
		deliver(s.OpenStream(Resume{}), "1", "2")
		r := s.OpenStream(Resume{LastEventID: "1", HasLastEventID: true})
		deliver(r, "2")
		d := r.Begin()
		d.Untracked()
		d.Untracked()
		d.End()
		if !s.NeedsLocate("1", false) {
			t.Error("NeedsLocate(1) = false for an id evicted from the window")
		}
	})
	t.Run("not stored", func(t *testing.T) {
		tb := newTestTable(t, Config{Window: 4})
		s := acquire(t, tb, "N")
		deliver(s.OpenStream(Resume{}), "1", "2", "3", "4", "5", "6")
		if !s.NeedsLocate("bogus", false) {
			t.Fatal("NeedsLocate(bogus) = false before the journal was asked")
		}
		s.NotStored("bogus")
		if s.NeedsLocate("bogus", false) {
			t.Error("NeedsLocate(bogus) = true after the journal said it is not stored")
		}
	})
}

// TestResumeWithUnknownLastID: a stream loaded without its last id (the
// journal could not keep one that long) still sends a resuming client
// what it stored after the client's id.
func TestResumeWithUnknownLastID(t *testing.T) {
	long := strings.Repeat("x", 2000)
	h := &History{
		Seq:     3,
		Streams: []StreamState{{Stream: "s-1", LastEventID: ""}},
		Events:  []EventRef{{ID: "1", Stream: "s-1", Seq: 1}, {ID: "2", Stream: "s-1", Seq: 2}, {ID: long, Stream: "s-1", Seq: 3}},
	}
	tb := newTestTable(t, Config{Loader: fakeHistory{h}})
	s, err := tb.Acquire(context.Background(), "U")
	if err != nil {
		t.Fatal(err)
	}
	st := s.OpenStream(Resume{LastEventID: "1", HasLastEventID: true})
	if after, through, ok := st.Missed(); !ok || after != "1" || through != "" {
		t.Errorf("Missed() = %q, %q, %v; want everything stored after 1", after, through, ok)
	}
}

// TestMissedUnheld checks which resumes are told that the events they
// missed include one the journal does not hold: one delivered untracked
// (it counts once an event with an id follows it on its stream) or lost by
// the journal (Delivery.Lost, or Table.Lost for a loss found later).
func TestMissedUnheld(t *testing.T) {
	untracked := func(st *Stream) { d := st.Begin(); d.Untracked(); d.End() }
	lost := func(st *Stream) { d := st.Begin(); d.Lost(); d.End() }
	tests := []struct {
		name   string
		window int
		run    func(s *Session, a, b *Stream)
		last   string // the resuming client's Last-Event-ID
		// located: the journal named stream a as the one that carried
		// last, which the session no longer holds (Resume.Stream)
		located bool
		want    bool
	}{
		{"untracked after the client's id", 16, func(s *Session, a, b *Stream) {
			deliver(a, "1")
			untracked(a)
			deliver(a, "3")
		}, "1", false, true},
		{"untracked before the client's id", 16, func(s *Session, a, b *Stream) {
			deliver(a, "1")
			untracked(a)
			deliver(a, "3", "4")
		}, "3", false, false},
		// The stream's last id (2) is before the untracked event, which the
		// client, resuming from 1, missed as well.
		{"untracked last: after the stream's last id", 16, func(s *Session, a, b *Stream) {
			deliver(a, "1", "2")
			untracked(a)
		}, "1", false, true},
		{"untracked, then an empty id", 16, func(s *Session, a, b *Stream) {
			deliver(a, "1")
			untracked(a)
			d := a.Begin()
			d.Deliver(nil, true)
			d.End()
		}, "1", false, true},
		{"untracked on another stream", 16, func(s *Session, a, b *Stream) {
			deliver(a, "1")
			untracked(b)
			deliver(b, "b1")
			deliver(a, "3")
		}, "1", false, false},
		{"lost after the client's id", 16, func(s *Session, a, b *Stream) {
			deliver(a, "1", "2")
			lost(a)
			deliver(a, "3")
		}, "1", false, true},
		{"lost, told by the journal later", 16, func(s *Session, a, b *Stream) {
			deliver(a, "1", "2", "3")
			s.table.Lost(s.ID(), a.ID())
		}, "1", false, true},
		{"lost before the client's id", 16, func(s *Session, a, b *Stream) {
			deliver(a, "1")
			lost(a)
			deliver(a, "2", "3")
		}, "2", false, false},
		{"lost on another stream", 16, func(s *Session, a, b *Stream) {
			deliver(a, "1", "2")
			s.table.Lost(s.ID(), b.ID())
		}, "1", false, false},
		{"located, the mark in the window", 4, func(s *Session, a, b *Stream) {
			deliver(a, "1", "2", "3", "4", "5")
			lost(a)
			deliver(a, "6")
		}, "1", true, true},
		{"located, a loss older than the window", 4, func(s *Session, a, b *Stream) {
			deliver(a, "1")
			lost(a)
			deliver(a, "2", "3", "4", "5", "6")
		}, "1", true, true},
		{"located, an untracked event's place has left the window", 4, func(s *Session, a, b *Stream) {
			deliver(a, "1")
			untracked(a)
			deliver(a, "2", "3", "4", "5", "6")
		}, "1", true, false},
		{"losses do not take places in the window", 4, func(s *Session, a, b *Stream) {
			for _, id := range []string{"1", "2", "3", "4"} {
				deliver(a, id)
				lost(a)
			}
			// All four ids are still held: a resume from 1 matches.
		}, "1", false, true},
	}
	for _, tt := range tests {
		tb := newTestTable(t, Config{Window: tt.window})
		s := acquire(t, tb, "S")
		a, b := s.OpenStream(Resume{}), s.OpenStream(Resume{})
		tt.run(s, a, b)
		resume := Resume{LastEventID: tt.last, HasLastEventID: true}
		if tt.located {
			resume.Stream = a.ID()
		}
		r := s.OpenStream(resume)
		if r.Located() != tt.located {
			t.Fatalf("%s: located %v", tt.name, r.Located())
		}
		if _, _, missed := r.Missed(); tt.want && !missed {
			t.Fatalf("%s: the resume from %s missed nothing", tt.name, tt.last)
		}
		if got := r.MissedUnheld(); got != tt.want {
			t.Errorf("%s: MissedUnheld() = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestUnsentBounded: a session keeps at most a window's worth of unsent
// marks, however many answers are lost.
func TestUnsentBounded(t *testing.T) {
	tb := newTestTable(t, Config{Window: 4})
	s := acquire(t, tb, "S")
	st := s.OpenStream(Resume{})
	for i := range 20 {
		d := st.Begin()
		from := d.Position()
		d.Deliver(fmt.Appendf(nil, "e%d", i), true)
		to := d.Position()
		d.End()
		st.Unsent(from, to)
	}
	s.mu.Lock()
	n := len(s.marks.unsent)
	s.mu.Unlock()
	if n > 4 {
		t.Errorf("%d unsent marks with a window of 4", n)
	}
}

// TestRememberedStreamsHaveDistinctTags: a stream kept remembered by
// resumes (an MCP client's GET stream, resumed now and then while hundreds
// of POST responses come and go) never shares its window tag with another
// remembered stream.
func TestRememberedStreamsHaveDistinctTags(t *testing.T) {
	tb := newTestTable(t, Config{Window: 1024}) // g1 stays in the window
	s := acquire(t, tb, "S")
	get := s.OpenStream(Resume{})
	deliver(get, "g1")
	for i := range 600 {
		deliver(s.OpenStream(Resume{}), fmt.Sprintf("p%d", i))
		if i%10 == 0 {
			if get = s.OpenStream(Resume{LastEventID: "g1", HasLastEventID: true}); !get.Resumed() {
				t.Fatal("the GET stream was not resumed")
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[uint64]uint32{}
	for _, info := range s.streams {
		if other, dup := seen[tagOf(info.num)]; dup {
			t.Errorf("streams %d and %d share tag %d", other, info.num, tagOf(info.num))
		}
		seen[tagOf(info.num)] = info.num
	}
}
