package journal

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
	"github.com/ssetrack/ssetrack/extproc/session"
)

// Load returns what JetStream holds for a session: its KV state and the ids
// of its most recent Config.HistoryEvents events, read back from its
// subject. It returns (nil, nil) when neither exists. When the read fails
// after the session's last sequence number was learnt (the events' read is
// the long part), the error comes with a History holding that number alone
// (session.Loader); when it fails before, with none, and the session then
// numbers provisionally (session.SeqBase), its records held until the base
// is read (lastStoredSeq).
//
// How it reads: the last message on the session's subject gives the
// newest per-session sequence number S. A binary search over stream
// sequences (direct gets of "next message on this subject at or after n",
// about log2(stream length) round trips) finds the batch holding event
// S-HistoryEvents+1, and batched direct gets read forward from there to
// that last message (history.ReadRange: any replica answers, no consumer;
// an ordered consumer from a server before 2.11); when the last batch
// holds that event, it is all there is to read. Each payload is split into events to recover their
// ids. Load is bounded by ctx (the caller's budget for one Envoy message);
// events recorded but not yet acknowledged are not included, but the
// History's Seq counts them: a session reloaded while they are on their way
// (evicted from memory, say) goes on after them.
//
// A message on the session's subject that is not a batch (published there
// by something else, or damaged) is passed over, never an error: when it is
// the last one, the KV state's sequence number stands in for the last
// batch's, and the read goes forward from there to the end.
func (p *Publisher) Load(ctx context.Context, sessionID string) (*session.History, error) {
	start := time.Now()
	beyond := p.beyondStore(sessionID)
	h, st, err := loadHistory(ctx, p.js, p.stream, p.kv, p.cfg, sessionID)
	p.m.loadTimer.Observe(time.Since(start).Seconds())
	if err == nil && h != nil {
		p.state.seed(sessionID, st)
	}
	if err != nil {
		err = fmt.Errorf("load session %s: %w", session.ShortID(sessionID), err)
		if h == nil {
			// The stored number is unknown: what this process has on its
			// way says nothing of what another stored.
			return nil, err
		}
		h = &session.History{Seq: h.Seq}
	}
	// What this process has on its way counts, and so does what it holds
	// numbered provisionally, which follows it.
	var n uint64
	if h != nil {
		n = h.Seq
	}
	if n = p.settle(sessionID, n, beyond); n > 0 {
		if h == nil {
			h = &session.History{}
		}
		h.Seq = n
	}
	return h, err
}

// LoadLast implements session.LastLoader: the session's last stored batch
// as a History (its events, its stream and last id, its last number), in
// one direct get, which any replica of the stream answers: a process that
// just loaded the session reads what another replica stored since without
// the ordered consumer a full Load reads with. (nil, nil) when the session
// has no batch; a last message that is not a batch is skipped the same way.
func (p *Publisher) LoadLast(ctx context.Context, sessionID string) (*session.History, error) {
	last, err := history.LastMessage(ctx, p.stream, Subject(p.cfg.SubjectPrefix, sessionID))
	if err != nil || last == nil {
		return nil, err
	}
	b, err := history.Decode(last.Header, last.Data)
	if err != nil {
		return nil, nil
	}
	h := &session.History{Seq: b.LastSeq, Streams: []session.StreamState{{Stream: b.Stream, LastEventID: b.LastID}}}
	for ev := range b.Events() {
		if ev.ID != "" {
			h.Events = append(h.Events, session.EventRef{ID: ev.ID, Stream: b.Stream, Seq: ev.Seq})
		}
	}
	return h, nil
}

// lastStoredSeq returns the last sequence number the journal holds for a
// session or has on its way from this process: the larger of its KV
// state's and its last batch's, settled with what this process has on its
// way (settle, which resolves the session's provisional runs held). Two
// direct gets, any replica answers; when the subject's last message is not
// a batch, a Load's read.
func (p *Publisher) lastStoredSeq(ctx context.Context, sessionID string) (uint64, error) {
	beyond := p.beyondStore(sessionID)
	st, err := getState(ctx, p.kv, sessionID)
	if err != nil {
		return 0, err
	}
	last, err := history.LastMessage(ctx, p.stream, Subject(p.cfg.SubjectPrefix, sessionID))
	if err != nil {
		return 0, err
	}
	n := st.Seq
	if last != nil {
		if b, err := history.Decode(last.Header, last.Data); err == nil {
			n = max(n, b.LastSeq)
		} else {
			// Not a batch: the KV state may lag the batches before it;
			// read back to the last one, as Load does.
			h, _, err := loadHistory(ctx, p.js, p.stream, p.kv, p.cfg, sessionID)
			if err != nil {
				return 0, err
			}
			if h != nil {
				n = max(n, h.Seq)
			}
		}
	}
	return p.settle(sessionID, n, beyond), nil
}

// loadHistory is Load without the publisher. st is the merged state.
func loadHistory(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, kv jetstream.KeyValue, cfg Config, sid string) (*session.History, State, error) {
	st, err := getState(ctx, kv, sid)
	if err != nil {
		return nil, st, err
	}
	haveKV := st.Seq > 0 || len(st.Streams) > 0
	subj := Subject(cfg.SubjectPrefix, sid)
	last, err := history.LastMessage(ctx, stream, subj)
	if err != nil {
		return nil, st, err
	}
	if !haveKV && last == nil {
		return nil, st, nil
	}
	var lb history.Batch
	lastOK := false
	if last != nil {
		if lb, err = history.Decode(last.Header, last.Data); err == nil {
			lastOK = true
		} else if !errors.Is(err, history.ErrBadBatch) {
			return nil, st, err
		}
	}
	streams := make(map[string]string, len(st.Streams))
	for k, v := range st.Streams {
		streams[k] = v
	}
	kvSeq := st.Seq
	h := &session.History{Seq: st.Seq, Principal: st.Principal}
	if last != nil {
		if lastOK {
			h.Seq = max(h.Seq, lb.LastSeq)
		}
		newest := h.Seq // the KV's, if the last message is not a batch
		n := uint64(cfg.HistoryEvents)
		target := uint64(1)
		if newest > n {
			target = newest - n + 1
		}
		from := last.Sequence
		if !lastOK || lb.FirstSeq > target {
			from, err = findStart(ctx, stream, subj, target, last.Sequence)
			if err != nil {
				return &session.History{Seq: h.Seq}, st, err
			}
		}
		var evs []session.EventRef
		visit := func(b history.Batch) error {
			h.Seq = max(h.Seq, b.LastSeq)
			for ev := range b.Events() {
				if ev.ID != "" && ev.Seq >= target {
					evs = append(evs, session.EventRef{ID: ev.ID, Stream: b.Stream, Seq: ev.Seq})
				}
			}
			if b.LastSeq > kvSeq { // newer than the KV value
				if b.LastID != "" {
					streams[b.Stream] = b.LastID
				} else if _, ok := streams[b.Stream]; !ok {
					streams[b.Stream] = ""
				}
			}
			return nil
		}
		if from == last.Sequence && lastOK {
			err = visit(lb) // the last batch, read already, is all there is to read
		} else {
			err = history.ReadRange(ctx, js, stream, subj, from, last.Sequence, visit)
		}
		if err != nil {
			return &session.History{Seq: h.Seq}, st, fmt.Errorf("read history: %w", err)
		}
		if len(evs) > cfg.HistoryEvents {
			evs = evs[len(evs)-cfg.HistoryEvents:]
		}
		h.Events = evs
	}
	names := make([]string, 0, len(streams))
	for k := range streams {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		h.Streams = append(h.Streams, session.StreamState{Stream: k, LastEventID: streams[k]})
	}
	st.Seq, st.Streams = h.Seq, streams
	return h, st, nil
}

// findStart returns the stream sequence of the last batch on subj whose
// first event sequence is <= target, or of the first batch if none is:
// where to start reading to see event target. It relies on batches of a
// session being stored in sequence order.
func findStart(ctx context.Context, stream jetstream.Stream, subj string, target, lastSeq uint64) (uint64, error) {
	// next returns the first batch on subj at or after stream sequence n,
	// passing over messages that are not batches; past the last batch it
	// returns lastSeq and a first sequence past target.
	next := func(n uint64) (uint64, uint64, error) {
		for n <= lastSeq {
			m, err := history.GetMsg(ctx, stream, n, subj)
			if err != nil {
				return 0, 0, fmt.Errorf("get batch: %w", err)
			}
			fs, err := strconv.ParseUint(m.Header.Get(HeaderFirstSeq), 10, 64)
			if err == nil && m.Header.Get(history.HeaderSession) != "" {
				return m.Sequence, fs, nil
			}
			n = m.Sequence + 1
		}
		return lastSeq, target + 1, nil
	}
	lo, fs, err := next(1)
	if err != nil || fs > target {
		return lo, err
	}
	hi := lastSeq
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		s, fs, err := next(mid)
		if err != nil {
			return 0, err
		}
		if fs <= target {
			lo = s
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}
