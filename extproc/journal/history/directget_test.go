package history

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestDirectGetTriesAgain: DirectGet tries a direct get again, within the
// caller's budget, when it found no responder or ran out of its share, and
// returns any other error, and a result, at once.
func TestDirectGetTriesAgain(t *testing.T) {
	for _, tc := range []struct {
		name  string
		errs  []error // what the tries return, in turn; then success
		calls int
		err   error
	}{
		{"no responder twice", []error{nats.ErrNoResponders, nats.ErrNoResponders}, 3, nil},
		{"a try timed out", []error{context.DeadlineExceeded}, 2, nil},
		{"another error", []error{errors.New("bad request")}, 1, errors.New("bad request")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			calls := 0
			v, err := DirectGet(ctx, func(tctx context.Context) (int, error) {
				calls++
				if i := calls - 1; i < len(tc.errs) {
					if errors.Is(tc.errs[i], context.DeadlineExceeded) {
						<-tctx.Done() // a try that takes its whole share
						return 0, tctx.Err()
					}
					return 0, tc.errs[i]
				}
				return 42, nil
			})
			if calls != tc.calls || (err == nil) != (tc.err == nil) || (err == nil && v != 42) {
				t.Errorf("%d calls, %v, %v: want %d calls and error %v", calls, v, err, tc.calls, tc.err)
			}
		})
	}
	// Without a deadline there is no budget to try again in.
	calls := 0
	_, err := DirectGet(context.Background(), func(context.Context) (int, error) { calls++; return 0, nats.ErrNoResponders })
	if calls != 1 || !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("without a deadline: %d calls, %v", calls, err)
	}
	// A budget that ends while no responder answers returns the error.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = DirectGet(ctx, func(context.Context) (int, error) { return 0, nats.ErrNoResponders })
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("a spent budget: %v, want nats.ErrNoResponders", err)
	}
}
