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
