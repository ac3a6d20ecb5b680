package history

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reader reads sessions' stored events from one JetStream stream. It needs
// read access only: direct gets (the stream has AllowDirect) and ordered
// consumers. A Reader has no state of its own; any goroutine may use it.
type Reader struct {
	stream jetstream.Stream
	prefix string
	js     jetstream.JetStream // for batched direct gets; nil: none
}

// NewReader returns a Reader of the batches in stream, on subjects starting
// with subjectPrefix ("" means DefaultSubjectPrefix).
func NewReader(stream jetstream.Stream, subjectPrefix string, opts ...ReaderOption) *Reader {
	if subjectPrefix == "" {
		subjectPrefix = DefaultSubjectPrefix
	}
	r := &Reader{stream: stream, prefix: subjectPrefix}
	for _, o := range opts {
		o(r)
	}
	return r
}

// ReaderOption configures a Reader.
type ReaderOption func(*Reader)

// WithDirectBatches makes the Reader read a range of stored batches (a
// session's history, or what follows an id found far back) with batched
// direct gets through js, the JetStream context stream was opened with,
// instead of an ordered consumer (ReadRange): any replica answers, and no
// consumer is created. Reads that follow new batches, or start at a time,
// still use a consumer.
func WithDirectBatches(js jetstream.JetStream) ReaderOption {
	return func(r *Reader) { r.js = js }
}

// ReadOptions selects what a Reader delivers. FromID and Since exclude each
// other; with neither, reading starts at the session's oldest stored event.
type ReadOptions struct {
	// FromID starts after the most recent stored event with this id. When
	// no stored event has it (never stored, or purged) the read fails with
	// ErrEventNotFound rather than delivering part of the history. The id
	// is found by a search backwards from the session's last batch, so the
	// cost follows what was stored after it, not the session's history.
	FromID string
	// Since starts with the first batch stored at or after this time. When
	// it lies before the session's oldest stored event and older events
	// were purged, the read fails with ErrPurged.
	Since time.Time
	// Stream, when set, delivers only the events of that stream of the
	// session, and FromID is looked for among them only.
	Stream string
	// Follow keeps waiting for new batches until ctx ends. Without it the
	// read stops at the session's last batch as of the call.
	Follow bool
}

// Batches iterates over the session's batches in stored order. With FromID,
// the batch that holds that id comes trimmed to the events after it (and is
// left out when none follow). A message without batch headers is skipped.
// The iteration ends after the last batch (without Follow), or with one
// error: ErrEventNotFound, ErrPurged, ErrConflictingOptions, ctx's error,
// or a wrapped JetStream error. A Batch's Data is valid only until the next
// iteration.
func (r *Reader) Batches(ctx context.Context, sessionID string, opts ReadOptions) iter.Seq2[Batch, error] {
	return func(yield func(Batch, error) bool) {
		err := r.read(ctx, sessionID, opts, func(b Batch) bool { return yield(b, nil) })
		if err != nil && err != errStop {
			yield(Batch{}, err)
		}
	}
}

// Events is Batches one event at a time, with the same errors. An Event's
// Data is valid only until the next iteration.
func (r *Reader) Events(ctx context.Context, sessionID string, opts ReadOptions) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		for b, err := range r.Batches(ctx, sessionID, opts) {
			if err != nil {
				yield(Event{}, err)
				return
			}
			for ev := range b.Events() {
				if !yield(ev, nil) {
					return
				}
			}
		}
	}
}

// StreamOf returns the stream (Batch.Stream) of the session that carried
// the most recent stored event with id, found by the same backward search
// as ReadOptions.FromID, so its cost follows what was stored after it. It
// fails with ErrEventNotFound when no stored event has the id (never
// stored, or purged), ctx's error, or a wrapped JetStream error.
func (r *Reader) StreamOf(ctx context.Context, sessionID, id string) (string, error) {
	subj := Subject(r.prefix, sessionID)
	last, err := LastMessage(ctx, r.stream, subj)
	switch {
	case err != nil:
		return "", err
	case last == nil:
		return "", ErrEventNotFound
	}
	at, err := r.locate(ctx, subj, last, id, "", false)
	if err != nil {
		return "", err
	}
	return at.stream, nil
}

// LastMessage returns the last message of stream on subject subj, nil when
// there is none: one direct get, which any replica of a stream with
// AllowDirect answers (tried again within ctx, see DirectGet). The message
// may not be a batch (see Decode).
func LastMessage(ctx context.Context, stream jetstream.Stream, subj string) (*jetstream.RawStreamMsg, error) {
	last, err := DirectGet(ctx, func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return stream.GetLastMsgForSubject(ctx, subj)
	})
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("get last batch: %w", err)
	}
	return last, nil
}

// errStop ends a read when the caller stops iterating.
var errStop = errors.New("history: stop")

// read calls fn with each batch to deliver.
func (r *Reader) read(ctx context.Context, sid string, opts ReadOptions, fn func(Batch) bool) error {
	if opts.FromID != "" && !opts.Since.IsZero() {
		return ErrConflictingOptions
	}
	subj := Subject(r.prefix, sid)
	last, err := LastMessage(ctx, r.stream, subj)
	if err != nil {
		return err
	}
	deliver := func(b Batch) error {
		if opts.Stream != "" && b.Stream != opts.Stream {
			return nil
		}
		if !fn(b) {
			return errStop
		}
		return nil
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}}
	var end uint64 // the last stream sequence to read without Follow
	switch {
	case opts.FromID != "":
		if last == nil {
			return ErrEventNotFound
		}
		at, err := r.locate(ctx, subj, last, opts.FromID, opts.Stream, true)
		if err != nil {
			return err
		}
		if at.batches != nil {
			for _, b := range at.batches {
				if err := deliver(b); err != nil {
					return err
				}
			}
			if !opts.Follow {
				return nil
			}
			occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, last.Sequence+1
			return r.scan(ctx, occ, 0, deliver)
		}
		// Too much to have kept while searching: read it again, trimming
		// the first batch.
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, at.start
		first := true
		deliver0 := deliver
		deliver = func(b Batch) error {
			if first {
				first = false
				rest, ok := b.after(opts.FromID)
				if !ok {
					return fmt.Errorf("%w: batch %d changed under the read", ErrEventNotFound, b.Sequence)
				}
				if rest.Count == 0 {
					return nil
				}
				b = rest
			}
			return deliver0(b)
		}
		end = last.Sequence
	case !opts.Since.IsZero():
		if last != nil {
			if err := r.checkSince(ctx, subj, opts.Since); err != nil {
				return err
			}
		}
		t := opts.Since
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
		if last != nil {
			if last.Time.Before(t) && !opts.Follow {
				return nil
			}
			end = last.Sequence
		}
	default:
		if last != nil {
			end = last.Sequence
		}
	}
	if opts.Follow {
		end = 0
	} else if end == 0 {
		return nil
	}
	if end > 0 && occ.OptStartTime == nil {
		return ReadRange(ctx, r.js, r.stream, subj, occ.OptStartSeq, end, deliver)
	}
	return r.scan(ctx, occ, end, deliver)
}

// checkSince fails with ErrPurged when since lies before the session's
// oldest stored batch and that batch does not start at per-session
// sequence 1: events older than it were stored and are gone, and some of
// them may be newer than since.
func (r *Reader) checkSince(ctx context.Context, subj string, since time.Time) error {
	m, err := GetMsg(ctx, r.stream, 1, subj)
	if err != nil {
		return fmt.Errorf("get first batch: %w", err)
	}
	b, err := decodeRaw(m)
	if err == nil && since.Before(b.Time) && b.FirstSeq > 1 {
		return fmt.Errorf("%w: oldest stored event of the session is number %d, stored %s", ErrPurged, b.FirstSeq, b.Time.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// scan is Scan on the Reader's stream.
func (r *Reader) scan(ctx context.Context, occ jetstream.OrderedConsumerConfig, end uint64, fn func(Batch) error) error {
	return Scan(ctx, r.stream, occ, end, fn)
}

// consumerIdle is how long an ordered consumer of Scan lives on the server
// when the delete that ends Scan does not arrive (nats.go's default is 5
// minutes).
const consumerIdle = 10 * time.Second

// scanBatch is the most messages one pull of Scan asks for.
const scanBatch = 256

// scanRetry is how long Scan waits before it pulls again after a pull that
// reached no consumer or found nothing yet, doubled for each such pull in a
// row up to scanRetryMax: each pull of an ordered consumer after the first
// creates a consumer on the server.
const (
	scanRetry    = time.Millisecond
	scanRetryMax = 16 * time.Millisecond
)

// hand gives fn the batch b a read decoded, with the decoding's err: a
// message that is not a batch (ErrBadBatch) is passed over, any other
// error ends the read. It reports done once b is the message at stream
// sequence end or past it (end 0: never).
func hand(b Batch, err error, fn func(Batch) error, end uint64) (done bool, _ error) {
	switch {
	case err == nil:
		if err := fn(b); err != nil {
			return false, err
		}
	case !errors.Is(err, ErrBadBatch):
		return false, err
	}
	return end > 0 && b.Sequence >= end, nil
}

// fetchNoWait is cons.FetchNoWait(scanBatch) bounded by ctx. An ordered
// consumer creates its server-side consumer in the fetch, with a timeout
// of its own (10 s a try, in nats.go 1.55) and tries again until
// occ.MaxResetAttempts, not ctx: with the stream's leader frozen, the
// fetch would hold its caller for as long. On ctx's end the fetch is left
// to finish on its own goroutine.
func fetchNoWait(ctx context.Context, cons jetstream.Consumer) (jetstream.MessageBatch, error) {
	type fetched struct {
		batch jetstream.MessageBatch
		err   error
	}
	done := make(chan fetched, 1)
	go func() {
		b, err := cons.FetchNoWait(scanBatch)
		done <- fetched{b, err}
	}()
	select {
	case f := <-done:
		return f.batch, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Scan reads the batches of stream that occ selects, in stored order, with an
// ordered consumer, and calls fn with each until fn returns an error or the
// batch at stream sequence end has been read (end 0: until ctx ends, for
// batches yet to come). Messages without batch headers are skipped. It
// returns fn's error, ctx's error, or a wrapped JetStream error.
//
// A read up to end pulls with no wait (FetchNoWait, up to scanBatch
// messages at a time) and pulls again when a pull comes back empty. In a
// cluster the consumer lives on one server, and a pull sent before that
// server's interest in the consumer's subject has reached the server the
// client is on finds no responder: a consumer iterator (Messages) then
// waits for a missed heartbeat, seconds, where a history load has 150 ms.
// Against a 3-node nats-server 2.15 cluster and an R3 stream, 3 to 4 reads
// in 100 through Messages stalled that way; pulls with no wait, retried,
// read 600 of 600 (p99 under 6 ms), after 22 pulls that found no
// responder.
//
// The consumer is deleted when Scan returns. An ordered consumer would
// otherwise stay on the server for its inactive threshold, and nats-server
// refuses consumers past a per-stream limit (1,000 by default,
// JSDefaultMaxConsumersPerStream), so a burst of reads (resumes, history
// loads) would start failing. occ.InactiveThreshold, if zero, is set to a
// short backstop for a delete that does not arrive. An ordered consumer
// also starts a new server-side consumer for each pull after the first;
// it deletes the one before itself.
func Scan(ctx context.Context, stream jetstream.Stream, occ jetstream.OrderedConsumerConfig, end uint64, fn func(Batch) error) error {
	if occ.InactiveThreshold == 0 {
		occ.InactiveThreshold = consumerIdle
	}
	_, bounded := ctx.Deadline()
	if occ.MaxResetAttempts == 0 && end > 0 && bounded {
		// One creation a fetch, and Scan pulls again while ctx has time:
		// a fetch left behind at ctx's end (fetchNoWait) ends after one
		// try. (Without a deadline nats.go tries until it succeeds.)
		occ.MaxResetAttempts = 1
	}
	cons, err := stream.OrderedConsumer(ctx, occ)
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	// Off the caller's path and budget: the read is over. (CachedInfo
	// waits for a creation still going on in a fetch left behind.)
	defer func() {
		go func() {
			info := cons.CachedInfo()
			if info == nil {
				return // never created on the server
			}
			dctx, cancel := context.WithTimeout(context.Background(), consumerIdle)
			defer cancel()
			_ = stream.DeleteConsumer(dctx, info.Name)
		}()
	}()
	// take hands one message to fn; done reports that end is read.
	take := func(msg jetstream.Msg) (done bool, err error) {
		b, err := DecodeMsg(msg)
		return hand(b, err, fn, end)
	}
	if end == 0 {
		return follow(ctx, cons, take)
	}
	wait := scanRetry
	for {
		batch, err := fetchNoWait(ctx, cons)
		switch {
		case err != nil && ctx.Err() != nil:
			return ctx.Err()
		case err != nil && bounded && occ.MaxResetAttempts == 1:
			// The consumer's creation failed (a leader election, say):
			// pull again shortly, within ctx.
			if perr := pause(ctx, wait); perr != nil {
				return fmt.Errorf("%w (last pull: %v)", perr, err)
			}
			wait = min(2*wait, scanRetryMax)
			continue
		case err != nil:
			return fmt.Errorf("pull: %w", err)
		}
		n := 0
		for msgs := batch.Messages(); ; n++ {
			var msg jetstream.Msg
			var ok bool
			select {
			case msg, ok = <-msgs:
			case <-ctx.Done():
				return ctx.Err()
			}
			if !ok {
				break
			}
			if done, err := take(msg); done || err != nil {
				return err
			}
		}
		switch err := batch.Error(); {
		case errors.Is(err, nats.ErrNoResponders), err == nil && n == 0:
			// The pull reached no consumer yet, or the consumer's server
			// has not stored up to end yet: pull again shortly.
			if err := pause(ctx, wait); err != nil {
				return err
			}
			wait = min(2*wait, scanRetryMax)
			continue
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("next batch: %w", err)
		}
		wait = scanRetry
	}
}

// follow is Scan without an end: a consumer iterator, which waits for
// batches yet to be stored.
func follow(ctx context.Context, cons jetstream.Consumer, take func(jetstream.Msg) (bool, error)) error {
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("next batch: %w", err)
		}
		if _, err := take(msg); err != nil {
			return err
		}
	}
}
