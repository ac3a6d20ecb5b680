package history

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Limits of locate's backward search.
const (
	// keepBytes bounds the payload bytes locate keeps of the batches it
	// has read, to hand them to the caller instead of reading them again.
	keepBytes = 4 << 20
	// maxGets is how many direct gets one round of the search makes before
	// it reads the rest of its range with an ordered consumer, which
	// streams instead of paying a round trip per batch.
	maxGets = 16
)

// located is where a read from an event id starts.
type located struct {
	// start is the stream sequence of the batch holding the id, and stream
	// the SSE stream (Batch.Stream) that carried it.
	start  uint64
	stream string
	// batches are the batches to deliver, from that batch (trimmed to the
	// events after the id) through the session's last batch, when the
	// search could keep them all; nil otherwise.
	batches []Batch
}

// locate finds the most recent batch on subj (of stream, if set) holding
// an event with id, searching backwards from last, the subject's last
// message. With keep it hands back the batches from there on when they fit
// in keepBytes (located.batches); without it, it keeps only the range at
// hand. Its cost depends on how far back the id is, not on how much the
// session has stored.
//
// Why a backward search: a resume asks for what a client missed, and that
// is almost always the last few events. JetStream reads forwards only: an
// ordered consumer (DeliverByStartSequence, DeliverByStartTime) and direct
// get by subject ("the next message on this subject at or after sequence
// n", which nats.go's jetstream exposes as GetMsg with WithGetMsgSubject)
// both need a starting point, and nothing maps an event id to one: ids are
// opaque strings, and the per-session sequence of the id (which would allow
// a binary search over the batches' Ssetrack-First-Seq headers) is not
// known to the reader. Scanning forward from the session's first batch, as
// the journal once did, costs the whole stored history. So locate
// gallops backwards from the last message, which GetLastMsgForSubject
// finds in one direct get: each round reads the batches in the next older
// range of stream sequences, twice as long as the previous one, forwards,
// and checks them newest first. Every batch between the id's batch and the
// end is read exactly once, plus at most one get per round that lands past
// the range (in a stream shared with other sessions), and those batches are
// the ones a read from the id delivers anyway, so they are kept (up to
// keepBytes) and handed back. A range is read with batched direct gets (a
// round trip per 256 batches) when the Reader has WithDirectBatches, else
// with direct gets (one round trip per batch) and, past maxGets batches, an
// ordered consumer. An id that is not stored costs a read of the session's
// whole history, as before; the caller's ctx bounds it.
//
// Considered and not chosen: an index from per-session sequence to stream
// sequence kept in the session's KV state would need the publisher to
// write more per batch and still would not map an id to its sequence; a
// start time gives no bound, since a client may resume long after the
// events it missed.
func (r *Reader) locate(ctx context.Context, subj string, last *jetstream.RawStreamMsg, id, stream string, keep bool) (located, error) {
	holds := func(b Batch) bool { return (stream == "" || b.Stream == stream) && b.has(id) }
	var known []Batch // the batches at stream sequences >= lo, in order
	kept, dropped := 0, !keep
	lb, err := decodeRaw(last)
	if err == nil {
		known = append(known, lb)
		kept += len(lb.Data)
	}
	lo := last.Sequence
	for span := uint64(1); ; span *= 2 {
		for i := len(known) - 1; i >= 0; i-- {
			if !holds(known[i]) {
				continue
			}
			if dropped {
				return located{start: known[i].Sequence, stream: known[i].Stream}, nil
			}
			out := known[i:]
			rest, _ := out[0].after(id)
			if rest.Count == 0 {
				out = out[1:]
			} else {
				out[0] = rest
			}
			if out == nil {
				out = []Batch{}
			}
			return located{start: known[i].Sequence, stream: known[i].Stream, batches: out}, nil
		}
		if lo <= 1 {
			return located{}, ErrEventNotFound
		}
		from := lo - min(span, lo-1)
		older, err := r.olderRange(ctx, subj, from, lo)
		if err != nil {
			return located{}, err
		}
		if !dropped {
			for _, b := range older {
				kept += len(b.Data)
			}
			if kept > keepBytes {
				dropped = true
			}
		}
		if dropped {
			// Only the range not yet checked matters from here on.
			known = older
		} else {
			known = append(older, known...)
		}
		lo = from
	}
}

// olderRange reads one round's range for locate: the batches on subj at
// stream sequences from..to-1, with batched direct gets when the Reader has
// them (readBatches; the read stops at the first message at or past to-1,
// and one past it is dropped), else with Range.
func (r *Reader) olderRange(ctx context.Context, subj string, from, to uint64) ([]Batch, error) {
	if r.js != nil {
		var out []Batch
		err := readBatches(ctx, r.js, r.stream, subj, from, to-1, func(b Batch) error {
			if b.Sequence < to {
				out = append(out, b)
			}
			return nil
		})
		if !errors.Is(err, errNoBatches) {
			return out, err
		}
	}
	return Range(ctx, r.stream, subj, from, to, maxGets)
}

// Range returns the batches on subject subj of stream at stream sequences
// from..to-1, in order, skipping messages that are not batches. It reads
// them with direct gets ("the next message on subj at or after n", one
// round trip each, served by any replica of a stream with AllowDirect), and
// past maxGets of them the rest with an ordered consumer (Scan), which
// streams instead of paying a round trip per batch but costs a consumer
// created on the stream's leader. The consumer stops at the message at
// stream sequence to-1 or the first after it: subj must have one (callers
// pass a to just past a message they know), or the read lasts until ctx
// ends. Bounded by ctx.
func Range(ctx context.Context, stream jetstream.Stream, subj string, from, to uint64, maxGets int) ([]Batch, error) {
	var out []Batch
	for n := 0; from < to; n++ {
		if n == maxGets {
			occ := jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{subj},
				DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
				OptStartSeq:    from,
			}
			// The subject's last message is at or after to, so the
			// consumer always reaches to-1 or beyond.
			err := Scan(ctx, stream, occ, to-1, func(b Batch) error {
				if b.Sequence < to {
					out = append(out, b)
				}
				return nil
			})
			return out, err
		}
		m, err := GetMsg(ctx, stream, from, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("get batch: %w", err)
		}
		if m.Sequence >= to {
			return out, nil
		}
		if b, err := decodeRaw(m); err == nil {
			out = append(out, b)
		}
		from = m.Sequence + 1
	}
	return out, nil
}
