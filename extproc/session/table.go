package session

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"
	"unsafe"
)

// Defaults for Config's zero fields.
const (
	DefaultWindow      = 1024
	DefaultTTL         = 30 * time.Minute
	DefaultMaxSessions = 100_000
)

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("session: table closed")

// Config sets a Table's bounds. The zero value uses the defaults above.
type Config struct {
	// Window is the number of delivered ids each session remembers for
	// dedup (at most 32768).
	Window int
	// TTL evicts a session that had no open stream for this long.
	TTL time.Duration
	// MaxSessions caps the sessions held; past it the least recently used
	// session without open streams is evicted (or, if all are busy, the least
	// recently used one: its open streams keep working, detached, numbering
	// their events on their own, so a copy loaded meanwhile may repeat those
	// numbers: keep it above the sessions with open streams).
	MaxSessions int
	// Loader, if set, is asked for a session's history when a request names
	// a session this table does not hold: the table is then a cache of what
	// the loader keeps. Nil: sessions start empty.
	Loader Loader
	// Logger receives eviction and load errors; nil discards.
	Logger *slog.Logger
}

// Loader gives back what a persistence layer knows of a session, so a table
// can rebuild the session after a restart or on another replica. Package
// journal implements it on NATS JetStream.
type Loader interface {
	// Load returns what is stored of a session, or (nil, nil) when nothing
	// is. It may do network I/O, bounded by ctx. With an error it may
	// return the part of the History it could read, at least Seq: the
	// session then goes on numbering after it, so that no two of its
	// events share a number.
	Load(ctx context.Context, sessionID string) (*History, error)
	// Stale reports whether another writer (another replica, or this
	// process before a restart) stored events of the session with
	// per-session sequence numbers after seq, the last one a cached copy
	// assigned: the copy then lacks them and is reloaded. Events of the
	// copy not yet stored never make it stale. It may do network I/O,
	// bounded by ctx.
	Stale(ctx context.Context, sessionID string, seq uint64) (bool, error)
}

// LastLoader is a Loader that can also read the session's last stored
// batch alone, cheaply: Table.Reload uses it to learn what another writer
// stored since the session was loaded.
type LastLoader interface {
	LoadLast(ctx context.Context, sessionID string) (*History, error)
}

const shardCount = 64

// Table holds the sessions. It is safe for concurrent use: sessions are
// spread over shards, each guarded by its own mutex, which also guards the
// shard's LRU list and the sessions' active counts.
type Table struct {
	cfg      Config
	seed     maphash.Seed
	shards   [shardCount]shard
	perShard int

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

type shard struct {
	mu sync.Mutex
	m  map[string]*Session
	// LRU list: head is the most recently used, tail the least.
	head, tail *Session
	_          [40]byte // keep shards on separate cache lines
}

// NewTable returns a table and starts its eviction sweeper; Close stops it.
func NewTable(cfg Config) *Table {
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Table{
		cfg:      cfg,
		seed:     maphash.MakeSeed(),
		perShard: max(1, (cfg.MaxSessions+shardCount-1)/shardCount),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	for i := range t.shards {
		t.shards[i].m = make(map[string]*Session)
	}
	go t.sweep()
	return t
}

func (t *Table) hash(s string) uint64 { return maphash.String(t.seed, s) }

func (t *Table) hashBytes(b []byte) uint64 { return maphash.Bytes(t.seed, b) }

func (t *Table) shard(id string) *shard {
	return &t.shards[t.hash(id)%shardCount]
}

// Acquire returns the session a request names, creating it if needed, and
// counts one more open stream on it; Release undoes that. A session the
// table does not hold is loaded from the Loader first, within ctx; a load
// that fails or runs out of time leaves the session empty (dedup starts
// afresh: a duplicate may pass, no event is ever dropped). It returns
// ErrClosed after Close, or ctx's error while another request's load of the
// same session is still running.
func (t *Table) Acquire(ctx context.Context, id string) (*Session, error) {
	return t.acquire(ctx, id, t.cfg.Loader != nil)
}

// AcquireNew is Acquire for a session id an upstream has just assigned (MCP
// assigns Mcp-Session-Id on its initialize response): new by definition,
// so nothing is loaded.
func (t *Table) AcquireNew(id string) (*Session, error) {
	return t.acquire(context.Background(), id, false)
}

func (t *Table) acquire(ctx context.Context, id string, load bool) (*Session, error) {
	select {
	case <-t.stop:
		return nil, ErrClosed
	default:
	}
	sh := t.shard(id)
	var floor uint64 // the last sequence number a dropped stale copy assigned
	if load {
		floor = t.revalidate(ctx, sh, id)
	}
	sh.mu.Lock()
	s, ok := sh.m[id]
	loading := !ok && load
	if ok {
		sh.unlink(s)
	} else {
		s = &Session{id: id, table: t, ready: readyNow, win: newWindow(t.cfg.Window), seq: floor}
		if loading {
			s.ready = make(chan struct{})
		}
		sh.m[id] = s
		if len(sh.m) > t.perShard {
			t.evictOne(sh)
		}
	}
	s.active++
	s.lastUsed = now()
	sh.pushFront(s)
	sh.mu.Unlock()

	if loading {
		if !t.load(ctx, s, false) {
			// Nothing learnt of the session's history, not even its last
			// number: number provisionally until the journal knows it.
			s.mu.Lock()
			s.seq, s.base = 0, new(SeqBase)
			s.mu.Unlock()
		}
		close(s.ready)
	}
	if !ok {
		return s, nil
	}
	select {
	case <-s.ready:
	default:
		// Another request is loading the session: wait for it, within ctx.
		// (Only then: a cached session is never refused for a ctx that ran
		// out on the way here, in a slow Stale check, say. A select over a
		// closed ready and a done ctx would pick either.)
		select {
		case <-s.ready:
		case <-ctx.Done():
			t.Release(s)
			return nil, ctx.Err()
		}
	}
	if state := s.unloaded.Load(); load && state != 0 && s.unloaded.CompareAndSwap(state, 0) {
		// The copy's history never loaded, or it could not be checked:
		// try again, keeping what the copy learned meanwhile (in degraded
		// operation, its only dedup state). A copy that did load takes the
		// journal's last ids where another writer numbered more (newer).
		t.load(ctx, s, state == checkFailed)
		if state == checkFailed {
			// A failed reload leaves the copy what it was: loaded, unchecked.
			s.unloaded.CompareAndSwap(loadFailed, checkFailed)
		}
	}
	return s, nil
}

// revalidate drops the cached copy of session id when another writer has
// stored events of the session that the copy has not seen (another replica
// served it, say), so that Acquire loads it afresh. Only an idle copy is
// dropped: one with open streams here is in use and stays as it is. It
// returns the last sequence number the dropped copy assigned (0 if none was
// dropped): the reloaded session goes on after it even if the copy's last
// events are not stored yet, so no two events of a session share a number.
func (t *Table) revalidate(ctx context.Context, sh *shard, id string) uint64 {
	sh.mu.Lock()
	s, ok := sh.m[id]
	idle := ok && s.active == 0
	sh.mu.Unlock()
	if !idle {
		return 0
	}
	s.mu.Lock()
	seq, provisional := s.seq, s.base != nil
	s.mu.Unlock()
	if provisional {
		// Its numbers count from a base not yet known: nothing to compare.
		// Its history never loaded, so Acquire loads it again anyway.
		return 0
	}
	stale, err := t.cfg.Loader.Stale(ctx, id, seq)
	if err != nil {
		// Keep the copy: at worst it lets a duplicate through. But it may
		// lack what another writer stored since: it is unchecked (a resume
		// from an id it lacks is told its replay is not known), and is
		// loaded again below and by the next request until that works.
		s.unloaded.Store(checkFailed)
		t.cfg.Logger.Warn("check cached session", "session", ShortID(id), "err", err)
		return 0
	}
	if !stale {
		return 0
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m[id] != s || s.active != 0 {
		return 0
	}
	sh.remove(s)
	return seq
}

// load reads the history of s and merges it in (Session.restore, newer
// as there). It reports whether the session's last stored number is known
// now: false only when the load failed before the journal read it.
func (t *Table) load(ctx context.Context, s *Session, newer bool) (numbered bool) {
	h, err := t.cfg.Loader.Load(ctx, s.id)
	if err != nil {
		// The session goes on without history: dedup starts empty, which can
		// let a duplicate through but never drops an event. The next request
		// that names the session tries the load again.
		s.unloaded.Store(loadFailed)
		t.cfg.Logger.Warn("load session history", "session", ShortID(s.id), "err", err)
		if h == nil {
			return false
		}
		s.mu.Lock()
		if s.base != nil {
			s.rebase(s.base.Resolve(h.Seq))
		}
		s.seq = max(s.seq, h.Seq)
		s.mu.Unlock()
		return true
	}
	if h != nil {
		s.restore(h, newer)
		return true
	}
	s.mu.Lock()
	if s.base != nil {
		s.rebase(s.base.Resolve(0)) // nothing stored: numbers count from 0
	}
	s.mu.Unlock()
	return true
}

// Cached reports whether the table holds session id, loaded or not.
func (t *Table) Cached(id string) bool { return t.lookup(id) != nil }

// lookup returns session id if the table holds it, else nil; it neither
// loads nor counts a use.
func (t *Table) lookup(id string) *Session {
	sh := t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.m[id]
}

// Reload reads what the journal stored of s since s was loaded and merges
// it into s, its streams' last ids included when the journal numbered more
// events than s has: with a LastLoader the session's last batch alone (one
// cheap read; what another writer delivered moments ago is there), else the
// whole history again. Bounded by ctx; a failed read leaves s as it was.
func (t *Table) Reload(ctx context.Context, s *Session) {
	s.mu.Lock()
	provisional := s.base != nil
	s.mu.Unlock()
	if ll, ok := t.cfg.Loader.(LastLoader); ok && !provisional {
		// (A session numbering provisionally needs the whole load: the
		// last batch alone may not carry the session's last number.)
		if h, err := ll.LoadLast(ctx, s.id); err != nil {
			t.cfg.Logger.Warn("reload session history", "session", ShortID(s.id), "err", err)
		} else if h != nil {
			s.restore(h, true)
		}
		return
	}
	if t.cfg.Loader != nil {
		t.load(ctx, s, true)
	}
}

// Shared reports whether another response of s than the caller's is open
// here: s has been acquired more than once and not released.
func (t *Table) Shared(s *Session) bool {
	sh := t.shard(s.id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return s.active > 1
}

// Release marks one stream of s closed.
func (t *Table) Release(s *Session) {
	sh := t.shard(s.id)
	sh.mu.Lock()
	s.active--
	s.lastUsed = now()
	if s.active == 0 && s.ended && !s.evicted {
		sh.remove(s)
	}
	sh.mu.Unlock()
}

// Lost is Delivery.Lost for a journal that gave up on events of stream
// streamID (Stream.ID) of session sessionID after it took them: it marks
// the stream if the table holds the session and the session remembers the
// stream, and does nothing otherwise. It takes the session's lock: the
// caller must not hold it.
func (t *Table) Lost(sessionID, streamID string) {
	t.withStream(sessionID, streamID, func(s *Session, info *streamInfo) bool {
		s.lost(info.num)
		return true
	})
}

// withStream calls fn with session sessionID and its entry of stream
// streamID, under the session's lock, when the table holds the session and
// the session remembers the stream, and returns what fn returns (false
// otherwise). The caller must not hold the session's lock.
func (t *Table) withStream(sessionID, streamID string, fn func(s *Session, info *streamInfo) bool) bool {
	s := t.lookup(sessionID)
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.streams {
		if s.streams[i].id == streamID {
			return fn(s, &s.streams[i])
		}
	}
	return false
}

// TakenOver is told that a client resumed stream streamID (Stream.ID) of
// session sessionID on another replica, from lastEventID: the response of
// the stream open here, if it delivered that id, is one the client has
// left (a half-open last mile). It is superseded, as by a resume on this
// replica (see Delivery.superseded): what it still carries is forwarded
// and no longer recorded, numbered or stored, since the resumed response
// delivers and stores it; otherwise both replicas would store it. A
// response that did not deliver the id (the client has resumed here
// since) is left alone, and so is a session or stream the table does not
// hold. It reports whether the stream's latest response here delivered
// the id, and so is superseded if it is still open (the table does not
// keep which streams have a response open). It takes the session's lock:
// the caller must not hold it.
func (t *Table) TakenOver(sessionID, streamID, lastEventID string) bool {
	if lastEventID == "" {
		return false
	}
	return t.withStream(sessionID, streamID, func(s *Session, info *streamInfo) bool {
		slot := s.win.find(t.hash(lastEventID))
		if slot < 0 || s.win.tag(slot) != tagOf(info.num) || int32(uint32(s.win.position(slot))-info.since) < 0 {
			return false
		}
		info.since = nextSince(info.since, s.win.next)
		return true
	})
}

// Forget removes session id from memory: the session has ended (the MCP
// server accepted a client's DELETE). A session with responses still open
// (an MCP client may send DELETE before its GET stream closes) is removed
// when the last of them ends. What the journal stored of it stays there; a
// later request naming it loads it again. It reports whether the table
// held the session.
func (t *Table) Forget(id string) bool {
	sh := t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	s, ok := sh.m[id]
	if !ok {
		return false
	}
	if s.active > 0 {
		s.ended = true
	} else {
		sh.remove(s)
	}
	return true
}

// evictOne removes the least recently used session of sh, preferring one
// without open streams. sh.mu must be held.
func (t *Table) evictOne(sh *shard) {
	victim := sh.tail
	for s := sh.tail; s != nil; s = s.prev {
		if s.active == 0 {
			victim = s
			break
		}
	}
	if victim != nil {
		sh.remove(victim)
	}
}

func (sh *shard) remove(s *Session) {
	sh.unlink(s)
	delete(sh.m, s.id)
	s.evicted = true
}

func (sh *shard) unlink(s *Session) {
	if s.prev != nil {
		s.prev.next = s.next
	} else if sh.head == s {
		sh.head = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else if sh.tail == s {
		sh.tail = s.prev
	}
	s.prev, s.next = nil, nil
}

func (sh *shard) pushFront(s *Session) {
	s.next = sh.head
	if sh.head != nil {
		sh.head.prev = s
	}
	sh.head = s
	if sh.tail == nil {
		sh.tail = s
	}
}

// sweep evicts idle sessions until Close.
func (t *Table) sweep() {
	defer close(t.done)
	tick := time.NewTicker(max(t.cfg.TTL/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			t.evictIdle(now())
		}
	}
}

// evictIdle removes sessions without open streams idle for longer than TTL.
func (t *Table) evictIdle(nowNanos int64) (n int) {
	cutoff := nowNanos - int64(t.cfg.TTL)
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for s := sh.tail; s != nil; {
			prev := s.prev
			if s.active == 0 && s.lastUsed < cutoff {
				sh.remove(s)
				n++
			}
			s = prev
		}
		sh.mu.Unlock()
	}
	return n
}

// Len returns the number of sessions held.
func (t *Table) Len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// Close stops the sweeper. Sessions stay usable by streams that hold them.
func (t *Table) Close() {
	t.once.Do(func() { close(t.stop) })
	<-t.done
}

// ShortID returns a short tag of a session id for logs: the first 48 bits of
// its SHA-256, base64url (8 characters). Session ids are bearer-like secrets
// in MCP and are never logged whole; the tag is the same in every package,
// process and replica, so the log lines of one session can be joined.
func ShortID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return base64.RawURLEncoding.EncodeToString(sum[:6])
}

// readyNow is the ready channel of sessions that load nothing: closed, and
// shared so such sessions allocate no channel of their own.
var readyNow = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

var (
	sessionSize    = unsafe.Sizeof(Session{})
	streamInfoSize = unsafe.Sizeof(streamInfo{})
)
