package journal

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Reader reads sessions' events back from JetStream, for `ssetrack tail`
// and other consumers. It needs only read access to the stream.
type Reader struct {
	js  jetstream.JetStream
	cfg Config
}

// NewReader returns a Reader of the stream and subjects cfg names (only
// Stream and SubjectPrefix are used; zero values take the defaults).
func NewReader(js jetstream.JetStream, cfg Config) *Reader {
	return &Reader{js: js, cfg: cfg.withDefaults()}
}

// ReadOptions selects what a Reader delivers. FromID and Since are mutually
// exclusive; with neither, reading starts at the session's first stored
// event.
type ReadOptions struct {
	// FromID starts after the event with this id. If the id is not in the
	// stored history (never seen, or purged) the read fails with
	// ErrEventNotFound rather than replaying partially.
	FromID string
	// Since starts with the first batch stored at or after this time.
	Since time.Time
	// Follow keeps waiting for new batches until ctx ends. Without it the
	// read stops at the session's last batch as of the call.
	Follow bool
}

// Event is one stored event.
type Event struct {
	// Session and Stream identify where it was delivered.
	Session, Stream string
	// ID is the event's id; valid when HasID.
	ID    string
	HasID bool
	// Seq is the event's per-session sequence number.
	Seq uint64
	// Data is the event's SSE bytes as received, ending with its blank line.
	Data []byte
	// Sequence and Time are its batch's stream sequence and store time.
	Sequence uint64
	Time     time.Time
}

// ReadBatches calls fn with each of the session's batches in order. With
// FromID, the batch holding that id is trimmed to the events after it.
// It returns nil at the end (without Follow), fn's error, or ctx's error.
// fn must not keep b.Data after it returns.
func (r *Reader) ReadBatches(ctx context.Context, sessionID string, opts ReadOptions, fn func(b Batch) error) error {
	if opts.FromID != "" && !opts.Since.IsZero() {
		return ErrConflictingOptions
	}
	stream, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return fmt.Errorf("open stream %s: %w", r.cfg.Stream, err)
	}
	subj := Subject(r.cfg.SubjectPrefix, sessionID)
	var lastSeq uint64
	last, err := stream.GetLastMsgForSubject(ctx, subj)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return fmt.Errorf("get last batch: %w", err)
	default:
		lastSeq = last.Sequence
	}
	if opts.FromID != "" && lastSeq == 0 {
		return ErrEventNotFound
	}
	if !opts.Follow && (lastSeq == 0 || (!opts.Since.IsZero() && last.Time.Before(opts.Since))) {
		return nil
	}
	occ := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if !opts.Since.IsZero() {
		t := opts.Since
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	end := lastSeq
	if opts.Follow {
		end = 0
	}
	found := opts.FromID == ""
	return scanBatches(ctx, r.js, r.cfg.Stream, occ, end, func(b Batch) error {
		if !found {
			rest, ok := trimAfter(b, opts.FromID)
			if !ok {
				if b.Sequence >= lastSeq {
					return ErrEventNotFound
				}
				return nil
			}
			found = true
			if rest.Count == 0 && len(rest.Data) == 0 {
				return nil
			}
			b = rest
		}
		return fn(b)
	})
}

// ReadEvents is ReadBatches one event at a time. fn must not keep ev.Data
// after it returns.
func (r *Reader) ReadEvents(ctx context.Context, sessionID string, opts ReadOptions, fn func(ev Event) error) error {
	return r.ReadBatches(ctx, sessionID, opts, func(b Batch) error {
		var err error
		batchEvents(&b, func(se sseEvent, seq uint64) bool {
			err = fn(Event{
				Session: b.Session, Stream: b.Stream,
				ID: se.ID, HasID: se.HasID, Seq: seq, Data: se.Raw,
				Sequence: b.Sequence, Time: b.Time,
			})
			return err == nil
		})
		return err
	})
}

// trimAfter returns b reduced to the events after the one with id, and
// whether id was in b.
func trimAfter(b Batch, id string) (Batch, bool) {
	cut, idx, exact := -1, 0, false
	n := 0
	scanEvents(b.Data, func(ev sseEvent) bool {
		if ev.HasID && ev.ID == id && cut < 0 {
			cut, idx = ev.End, n
		}
		n++
		return true
	})
	if cut < 0 {
		return b, false
	}
	exact = n == b.Count
	rest := b
	rest.Data = b.Data[cut:]
	if exact {
		rest.Count = b.Count - idx - 1
		rest.FirstSeq = b.FirstSeq + uint64(idx) + 1
	} else {
		rest.Count = n - idx - 1
		rest.FirstSeq = b.LastSeq
	}
	rest.FirstID = ""
	scanEvents(rest.Data, func(ev sseEvent) bool {
		if ev.HasID && ev.ID != "" {
			rest.FirstID = ev.ID
			return false
		}
		return true
	})
	if rest.FirstID == "" {
		rest.LastID = ""
	}
	return rest, true
}

// scanBatches reads batches with an ordered consumer configured by occ and
// calls fn for each, until the batch at stream sequence end (end 0: until
// ctx ends). Messages without batch headers are skipped.
func scanBatches(ctx context.Context, js jetstream.JetStream, streamName string, occ jetstream.OrderedConsumerConfig, end uint64, fn func(Batch) error) error {
	cons, err := js.OrderedConsumer(ctx, streamName, occ)
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
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
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("batch metadata: %w", err)
		}
		b, err := decodeBatch(msg.Headers(), msg.Data(), md.Sequence.Stream, md.Timestamp)
		if err == nil {
			if err := fn(b); err != nil {
				return err
			}
		}
		if end > 0 && md.Sequence.Stream >= end {
			return nil
		}
	}
}
