package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
	"github.com/ssetrack/ssetrack/extproc/session"
)

// State is the JSON value stored under a session's KV key
// (SubjectToken(sessionID)) in Config.Bucket.
type State struct {
	// Seq is the last per-session sequence number persisted.
	Seq uint64 `json:"seq"`
	// Streams maps each stream id of the session to its last event id
	// (empty when its events had no ids).
	Streams map[string]string `json:"streams"`
	// Principal is the keyed hash of the principal the session is bound to
	// (ssetrack serve --principal-header), absent when none.
	Principal string `json:"principal,omitempty"`
	// Updated is when the value was written.
	Updated time.Time `json:"updated"`

	// rev is the value's KV revision (its stream sequence), 0 when the
	// key held none.
	rev uint64
}

// How long a clean session's state stays cached by the state writer.
const (
	stateIdleTTL    = 10 * time.Minute
	stateSweepEvery = time.Minute
)

// stateWriter writes session state to the KV bucket, latest-only. Its
// mutex guards sessions and dirty; update and seed are called by the
// batcher and by Load, and the writer goroutine (run) drains dirty once per
// Config.StateInterval, so a session gets at most one write per cycle.
type stateWriter struct {
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	subjPfx  string
	bucket   string
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger
	m        *metrics

	mu       sync.Mutex
	sessions map[string]*sessState
	dirty    map[string]struct{}

	// failLog spaces out the warnings of failed cycles (see repeatLog).
	failLog repeatLog

	quit chan struct{} // closed by stop: final cycle, then return
	done chan struct{}
	// halt cuts short the writer goroutine's cycle in progress (stop):
	// its acks can take 2 × PublishTimeout with NATS away, and stop's
	// final cycle has the caller's bound.
	runCtx context.Context
	halt   context.CancelFunc
}

// sessState is the state writer's copy of one session's state.
type sessState struct {
	seq       uint64
	streams   map[string]string
	principal string
	// merged is set once the bucket's value has been merged in (by Load or
	// by a read before the first write), so a write never forgets streams
	// another replica recorded.
	merged bool
	// rev is the newest revision of the bucket's value this state holds:
	// the one merged in, or the one its last write made. A write expects
	// it (Nats-Expected-Last-Subject-Sequence, as KeyValue.Update does):
	// when another replica wrote the session since, the server refuses the
	// write, and the next cycle reads and merges that value first, from
	// the stream's leader (leaderState): a direct get may reach a replica
	// that has not seen the value that refused the write, nor a deleted
	// key's marker. conflicted marks a state whose write was refused.
	rev        uint64
	conflicted bool
	touched    time.Time
}

func newStateWriter(js jetstream.JetStream, kv jetstream.KeyValue, cfg Config, log *slog.Logger, m *metrics) *stateWriter {
	runCtx, halt := context.WithCancel(context.Background())
	return &stateWriter{
		runCtx:   runCtx,
		halt:     halt,
		failLog:  repeatLog{every: 30 * time.Second},
		js:       js,
		kv:       kv,
		subjPfx:  "$KV." + cfg.Bucket + ".",
		bucket:   cfg.Bucket,
		interval: cfg.StateInterval,
		timeout:  cfg.PublishTimeout,
		log:      log,
		m:        m,
		sessions: make(map[string]*sessState),
		dirty:    make(map[string]struct{}),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
}

func (w *stateWriter) get(sid string) *sessState {
	st := w.sessions[sid]
	if st == nil {
		st = &sessState{streams: make(map[string]string)}
		w.sessions[sid] = st
	}
	return st
}

// update records an acknowledged batch.
func (w *stateWriter) update(sid, stream, lastID string, lastSeq uint64, principal string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.get(sid)
	st.seq = max(st.seq, lastSeq)
	if st.principal == "" {
		st.principal = principal
	}
	switch _, ok := st.streams[stream]; {
	case len(lastID) > maxIDHeader:
		// Too long to keep in the session's KV value (which the server
		// caps like any message); the payload still has it. The stream's
		// last id is then unknown (""), not the older one it replaces: a
		// resume replays all the stream stored after the client's id.
		st.streams[stream] = ""
	case lastID != "":
		st.streams[stream] = lastID
	case !ok:
		st.streams[stream] = ""
	}
	st.touched = time.Now()
	w.dirty[sid] = struct{}{}
}

// seed merges state read from the bucket (or rebuilt by Load).
func (w *stateWriter) seed(sid string, s State) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.get(sid).merge(s)
}

func (st *sessState) merge(s State) {
	st.seq = max(st.seq, s.Seq)
	if s.Principal != "" {
		// The bucket's binding was there first: one from records made
		// where the session's load had failed is not the owner's
		// (Session.restore).
		st.principal = s.Principal
	}
	for k, v := range s.Streams {
		if _, ok := st.streams[k]; !ok {
			st.streams[k] = v
		}
	}
	st.conflicted = false
	st.rev = max(st.rev, s.rev) // revisions grow; a follower's read may be older than our write
	st.merged = true
	st.touched = time.Now()
}

// run is the state writer goroutine.
func (w *stateWriter) run() {
	defer close(w.done)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	lastSweep := time.Now()
	for {
		select {
		case <-t.C:
			ctx, cancel := context.WithTimeout(w.runCtx, 2*w.timeout)
			w.cycle(ctx)
			cancel()
			if time.Since(lastSweep) > stateSweepEvery {
				w.sweep()
				lastSweep = time.Now()
			}
		case <-w.quit:
			return
		}
	}
}

// stop ends the writer goroutine and writes what is dirty, bounded by ctx.
func (w *stateWriter) stop(ctx context.Context) error {
	close(w.quit)
	w.halt() // a cycle cut short leaves its sessions dirty, for the final one
	<-w.done
	if ctx.Err() != nil {
		// Out of time: one short final attempt still beats losing state.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
	}
	// A write another replica's refused is read, merged and made again,
	// a few times at most.
	n, conflicts := w.cycle(ctx)
	for i := 0; i < 3 && conflicts > 0 && ctx.Err() == nil; i++ {
		n, conflicts = w.cycle(ctx)
	}
	if n > 0 {
		return fmt.Errorf("write session state: %d sessions not written", n)
	}
	return nil
}

type stateWrite struct {
	sid   string
	value []byte
	rev   uint64 // the revision the write expects (sessState.rev)
	paf   jetstream.PubAckFuture
}

// cycle writes every dirty session once and returns how many writes failed
// (they stay dirty for the next cycle) and how many of those the server
// refused because another writer had written the session since its state
// here was merged (see sessState.rev).
func (w *stateWriter) cycle(ctx context.Context) (failed, conflicts int) {
	w.mu.Lock()
	if len(w.dirty) == 0 {
		w.mu.Unlock()
		return 0, 0
	}
	type read struct {
		sid        string
		fromLeader bool // after a refused write
	}
	var unmerged []read
	for sid := range w.dirty {
		if st := w.sessions[sid]; !st.merged {
			unmerged = append(unmerged, read{sid, st.conflicted})
		}
	}
	w.mu.Unlock()

	// Read the bucket before the first write of a session this publisher
	// has not loaded, or after a refused write, outside the lock.
	for _, r := range unmerged {
		sid := r.sid
		var s State
		var err error
		if r.fromLeader {
			s, err = leaderState(ctx, w.js.Conn(), w.bucket, sid)
		} else {
			s, err = getState(ctx, w.kv, sid)
		}
		if err != nil {
			w.log.Warn("read session state", "session", session.ShortID(sid), "err", err)
			continue
		}
		w.mu.Lock()
		w.sessions[sid].merge(s)
		w.mu.Unlock()
	}

	now := time.Now()
	w.mu.Lock()
	writes := make([]stateWrite, 0, len(w.dirty))
	for sid := range w.dirty {
		st := w.sessions[sid]
		if !st.merged {
			continue // stays dirty
		}
		v, err := json.Marshal(State{Seq: st.seq, Streams: st.streams, Principal: st.principal, Updated: now})
		if err != nil {
			continue
		}
		writes = append(writes, stateWrite{sid: sid, value: v, rev: st.rev})
		delete(w.dirty, sid)
	}
	w.mu.Unlock()

	for i := range writes {
		wr := &writes[i]
		paf, err := w.js.PublishAsync(w.subjPfx+SubjectToken(wr.sid), wr.value, jetstream.WithExpectLastSequencePerSubject(wr.rev))
		if err != nil {
			wr.paf = nil
			continue
		}
		wr.paf = paf
	}
	var redo, refused []string
	acked := make(map[string]uint64, len(writes))
	for _, wr := range writes {
		var err error
		if wr.paf == nil {
			err = errors.New("publish failed")
		} else {
			select {
			case ack := <-wr.paf.Ok():
				acked[wr.sid] = ack.Sequence
			case err = <-wr.paf.Err():
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		switch {
		case err == nil:
			w.m.kvWrites.Inc()
		case wrongLastSequence(err):
			refused = append(refused, wr.sid)
		default:
			redo = append(redo, wr.sid)
			w.m.kvErrors.Inc()
		}
	}
	w.mu.Lock()
	for sid, rev := range acked {
		if st := w.sessions[sid]; st != nil {
			st.rev = max(st.rev, rev)
		}
	}
	for _, sid := range refused {
		// Another writer's value is newer: read and merge it, then write.
		if st := w.sessions[sid]; st != nil {
			st.merged, st.conflicted = false, true
			w.dirty[sid] = struct{}{}
		}
	}
	for _, sid := range redo {
		w.dirty[sid] = struct{}{}
	}
	failed = len(w.dirty)
	w.mu.Unlock()
	if len(redo) > 0 {
		if w.failLog.noteMsg("session state writes failed") {
			w.log.Warn("session state writes failed, retrying each cycle", "sessions", len(redo))
		} else {
			w.log.Debug("session state writes failed, retrying next cycle", "sessions", len(redo))
		}
	}
	if len(refused) > 0 {
		w.log.Debug("session state written elsewhere meanwhile: merging it first", "sessions", len(refused))
	}
	return failed, len(refused)
}

// wrongLastSequence reports whether err is the server refusing a publish
// whose expected last subject sequence is not the subject's: JetStream's
// 10071, or 10164 from a replicated stream (as nats.go's KV tells a
// revision mismatch).
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// sweep forgets clean sessions idle for stateIdleTTL; a later write reads
// the bucket first.
func (w *stateWriter) sweep() {
	cut := time.Now().Add(-stateIdleTTL)
	w.mu.Lock()
	defer w.mu.Unlock()
	for sid, st := range w.sessions {
		if _, d := w.dirty[sid]; !d && st.touched.Before(cut) {
			delete(w.sessions, sid)
		}
	}
}

// leaderState reads a session's state as getState does, but from the
// leader of the bucket's stream (JetStream's message get, where a direct
// get may be answered by a replica that lags), and with the revision of
// the key's last message even when that is a delete or purge marker (then
// the zero State at that revision): what a write expecting the key's
// revision must name.
func leaderState(ctx context.Context, nc *nats.Conn, bucket, sid string) (State, error) {
	var s State
	// nats.go's JetStreamContext asks the leader unless told to get direct
	// (the jetstream package's Stream gets direct when the stream allows).
	js, err := nc.JetStream()
	if err != nil {
		return s, err
	}
	m, err := js.GetLastMsg("KV_"+bucket, "$KV."+bucket+"."+SubjectToken(sid), nats.Context(ctx))
	switch {
	case errors.Is(err, nats.ErrMsgNotFound):
		return s, nil // never written
	case err != nil:
		return s, fmt.Errorf("get session state from the leader: %w", err)
	}
	s.rev = m.Sequence
	if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return s, nil
	}
	if err := json.Unmarshal(m.Data, &s); err != nil {
		return s, fmt.Errorf("decode session state: %w", err)
	}
	return s, nil
}

// getState reads a session's state; a missing key is the zero State.
func getState(ctx context.Context, kv jetstream.KeyValue, sid string) (State, error) {
	var s State
	e, err := history.DirectGet(ctx, func(ctx context.Context) (jetstream.KeyValueEntry, error) {
		return kv.Get(ctx, SubjectToken(sid))
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("get session state: %w", err)
	}
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		return s, fmt.Errorf("decode session state: %w", err)
	}
	s.rev = e.Revision()
	return s, nil
}
