package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

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
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger
	m        *metrics

	mu       sync.Mutex
	sessions map[string]*sessState
	dirty    map[string]struct{}

	quit chan struct{} // closed by stop: final cycle, then return
	done chan struct{}
}

// sessState is the state writer's copy of one session's state.
type sessState struct {
	seq       uint64
	streams   map[string]string
	principal string
	// merged is set once the bucket's value has been merged in (by Load or
	// by a read before the first write), so a write never forgets streams
	// another replica recorded.
	merged  bool
	touched time.Time
}

func newStateWriter(js jetstream.JetStream, kv jetstream.KeyValue, cfg Config, log *slog.Logger, m *metrics) *stateWriter {
	return &stateWriter{
		js:       js,
		kv:       kv,
		subjPfx:  "$KV." + cfg.Bucket + ".",
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
			ctx, cancel := context.WithTimeout(context.Background(), 2*w.timeout)
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
	<-w.done
	if ctx.Err() != nil {
		// Out of time: one short final attempt still beats losing state.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
	}
	if n := w.cycle(ctx); n > 0 {
		return fmt.Errorf("write session state: %d sessions not written", n)
	}
	return nil
}

type stateWrite struct {
	sid   string
	value []byte
	paf   jetstream.PubAckFuture
}

// cycle writes every dirty session once and returns how many writes failed
// (they stay dirty for the next cycle).
func (w *stateWriter) cycle(ctx context.Context) int {
	w.mu.Lock()
	if len(w.dirty) == 0 {
		w.mu.Unlock()
		return 0
	}
	var unmerged []string
	for sid := range w.dirty {
		if !w.sessions[sid].merged {
			unmerged = append(unmerged, sid)
		}
	}
	w.mu.Unlock()

	// Read the bucket before the first write of a session this publisher
	// has not loaded, outside the lock.
	for _, sid := range unmerged {
		s, err := getState(ctx, w.kv, sid)
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
		writes = append(writes, stateWrite{sid: sid, value: v})
		delete(w.dirty, sid)
	}
	w.mu.Unlock()

	failed := 0
	for i := range writes {
		wr := &writes[i]
		paf, err := w.js.PublishAsync(w.subjPfx+SubjectToken(wr.sid), wr.value)
		if err != nil {
			wr.paf = nil
			continue
		}
		wr.paf = paf
	}
	var redo []string
	for _, wr := range writes {
		var err error
		if wr.paf == nil {
			err = errors.New("publish failed")
		} else {
			select {
			case <-wr.paf.Ok():
			case err = <-wr.paf.Err():
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		if err != nil {
			redo = append(redo, wr.sid)
			w.m.kvErrors.Inc()
			continue
		}
		w.m.kvWrites.Inc()
	}
	w.mu.Lock()
	for _, sid := range redo {
		w.dirty[sid] = struct{}{}
	}
	failed = len(w.dirty)
	w.mu.Unlock()
	if len(redo) > 0 {
		w.log.Warn("session state writes failed, retrying next cycle", "sessions", len(redo))
	}
	return failed
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
	return s, nil
}
