package history

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// minAttempt is the shortest try DirectGet gives one direct get. A healthy
// replica answers in under a millisecond on loopback, a loaded one in a few.
const minAttempt = 10 * time.Millisecond

// noResponderPause is how long DirectGet waits before it tries again a
// direct get that found no responder.
const noResponderPause = 5 * time.Millisecond

// DirectGet runs get, one direct get (which any replica of a stream with
// AllowDirect answers), with a quarter of ctx's remaining budget, at least
// minAttempt, and runs it again while ctx has time left when a try ran out
// of its share or found no responder. A replica that stopped without
// closing its connections (a frozen process, a partition) still takes its
// share of direct gets and answers none until the cluster drops it,
// minutes later; a new try most likely reaches another replica. Against a
// 3-node nats-server 2.15 cluster with one node stopped by SIGSTOP, 20 to
// 60% of single tries timed out. No responder (nats.ErrNoResponders) means
// no replica's direct-get subscription has reached the server the client
// is on yet: just after the stream is created, it soon does (seen once in
// CI, on a node of a new R3 stream); DirectGet waits noResponderPause and
// tries again. Without a deadline on ctx, get runs once. It returns get's
// last result.
func DirectGet[T any](ctx context.Context, get func(context.Context) (T, error)) (T, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return get(ctx)
	}
	for {
		tctx, cancel := context.WithTimeout(ctx, tryShare(deadline))
		v, err := get(tctx)
		tried := tctx.Err() != nil
		cancel()
		switch {
		case err == nil || ctx.Err() != nil:
			return v, err
		case errors.Is(err, nats.ErrNoResponders):
			if pause(ctx, noResponderPause) != nil {
				return v, err
			}
		case tried && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)):
			// The try ran out of its share: another goes on.
		default:
			return v, err
		}
	}
}

// tryShare is one try's share of a budget ending at deadline: a quarter of
// what is left, at least minAttempt.
func tryShare(deadline time.Time) time.Duration {
	return max(time.Until(deadline)/4, minAttempt)
}

// pause waits d, or less when ctx ends first: then it returns ctx's error.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// GetMsg returns the first message of stream on subject subj at or after
// stream sequence seq (jetstream.ErrMsgNotFound past the last one): one
// direct get, tried again within ctx (DirectGet).
func GetMsg(ctx context.Context, stream jetstream.Stream, seq uint64, subj string) (*jetstream.RawStreamMsg, error) {
	return DirectGet(ctx, func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
	})
}
