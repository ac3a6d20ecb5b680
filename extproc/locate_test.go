package extproc

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// slowReplayer's StreamOf takes a while and counts its calls and the most
// running at once.
type slowReplayer struct {
	replayer
	calls, running, most atomic.Int32
}

func (r *slowReplayer) StreamOf(ctx context.Context, sid, id string) (string, error) {
	r.calls.Add(1)
	n := r.running.Add(1)
	defer r.running.Add(-1)
	for {
		m := r.most.Load()
		if n <= m || r.most.CompareAndSwap(m, n) {
			break
		}
	}
	select {
	case <-time.After(50 * time.Millisecond):
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return "", session.ErrHistoryMissing
}

// TestLocatorSharesAndBounds: concurrent resumes from one id share one
// journal search, and searches for distinct ids run at most maxLocates at
// once.
func TestLocatorSharesAndBounds(t *testing.T) {
	run := func(ids func(i int) string) *slowReplayer {
		r := &slowReplayer{}
		l := &locator{slots: make(chan struct{}, maxLocates)}
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				l.streamOf(ctx, r, "S", ids(i))
			})
		}
		wg.Wait()
		return r
	}
	if r := run(func(int) string { return "bogus" }); r.calls.Load() != 1 {
		t.Errorf("40 concurrent resumes from one id made %d searches, want 1", r.calls.Load())
	}
	if r := run(func(i int) string { return fmt.Sprint("bogus-", i) }); r.calls.Load() != 40 || r.most.Load() > maxLocates {
		t.Errorf("40 distinct ids: %d searches, at most %d at once; want 40, at most %d", r.calls.Load(), r.most.Load(), maxLocates)
	}
}

// gatedReplayer's StreamOf answers "s1" when gate closes, or the ctx's error.
type gatedReplayer struct {
	replayer
	gate    chan struct{}
	started chan struct{}
	once    sync.Once
}

func (r *gatedReplayer) StreamOf(ctx context.Context, sid, id string) (string, error) {
	r.once.Do(func() { close(r.started) })
	select {
	case <-r.gate:
		return "s1", nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// TestLocatorOutlivesFirstCaller: a resume that joined a shared search
// gets its answer though the resume that started it went away.
func TestLocatorOutlivesFirstCaller(t *testing.T) {
	r := &gatedReplayer{gate: make(chan struct{}), started: make(chan struct{})}
	l := &locator{slots: make(chan struct{}, maxLocates)}
	first, leave := context.WithTimeout(context.Background(), 30*time.Second)
	defer leave()
	firstErr := make(chan error, 1)
	go func() {
		_, err := l.streamOf(first, r, "S", "e5")
		firstErr <- err
	}()
	<-r.started
	type answer struct {
		stream string
		err    error
	}
	joined := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := l.streamOf(ctx, r, "S", "e5")
		joined <- answer{s, err}
	}()
	// The second caller joins the search (singleflight), which cannot end
	// before the gate opens; the group does not tell when it has joined, so
	// give it a moment before the first leaves.
	time.Sleep(50 * time.Millisecond)
	leave()
	if err := <-firstErr; err == nil {
		t.Errorf("first caller: no error after its ctx ended")
	}
	close(r.gate)
	if a := <-joined; a.err != nil || a.stream != "s1" {
		t.Errorf("joined caller got (%q, %v), want (\"s1\", nil)", a.stream, a.err)
	}
}
