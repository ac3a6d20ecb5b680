// Package session keeps the cross-request state of SSE sessions: for each
// session its streams, their last event ids, a per-session sequence and a
// bounded dedup window of delivered event ids.
//
// A Table is shared by all ext_proc streams; a Session is shared by the
// requests of one session, which may run concurrently (an MCP client holds a
// GET stream open while POST responses stream too). Each Session has its own
// mutex; a Stream belongs to the goroutine serving one HTTP response, which
// delivers to it only through a Delivery.
//
// It owns the in-memory state only: persistence reaches it through the
// Loader interface (package journal implements it), and it imports only the
// standard library.
package session

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// maxStreams bounds the streams a session remembers; the least recently
// opened are forgotten first (their ids stay in the dedup window).
const maxStreams = 32

// Session is the state of one session. Its methods are safe for concurrent
// use; the fields are guarded by mu.
type Session struct {
	id    string
	table *Table

	// ready is closed once the session's history has been loaded (or found
	// absent); until then no stream may use it.
	ready chan struct{}

	mu  sync.Mutex
	win window
	seq uint64 // last sequence number assigned (counted from base while base is set)
	// base is set while the session numbers provisionally: its history did
	// not load, so seq counts from a stored number not yet known (SeqBase).
	// Cleared, and added to seq, once it is known.
	base      *SeqBase
	principal string // keyed hash of the owner, "" until one is seen
	streams   []streamInfo
	notStored string // the last Last-Event-ID the journal did not hold
	// marks holds what a session needs after a loss or a lost answer; nil
	// until one (one pointer keeps an idle session small).
	marks      *marks
	nextStream uint32

	// unloaded is loadFailed when loading the session's history failed (a
	// timeout under load, NATS away): the copy may lack history, so the
	// next request that names the session tries the load again and merges
	// what it finds. It is checkFailed when the copy, cached here, could
	// not be checked against the journal for what another writer stored
	// since (Table.revalidate): the next request loads it again, taking
	// the journal's last ids where it numbered more. 0 otherwise.
	unloaded atomic.Uint32

	// Guarded by the table shard's mutex.
	active     int   // open streams
	lastUsed   int64 // unix nanoseconds
	prev, next *Session
	evicted    bool
	ended      bool // Forget was called while responses were open
}

type streamInfo struct {
	num uint32
	// since names the stream's current response: the low 32 bits of the
	// window position (see window) at which it opened, or took the stream
	// over, made to differ from the previous response's (nextSince). A
	// response whose Stream.since differs was superseded (see
	// Delivery.superseded); what the window holds of the stream from since
	// on, the current response delivered (Table.TakenOver). 32 bits keep
	// streamInfo at 48 bytes; positions compare modulo 2^32.
	since  uint32
	id     string
	lastID []byte // reused: updated once per chunk without allocating
}

// ID returns the session id.
func (s *Session) ID() string { return s.id }

// Unloaded reports that the session's history failed to load (see
// Table.Acquire): it goes on without it, so what it knows of its past,
// the Last-Event-ID of a resume included, may be incomplete.
func (s *Session) Unloaded() bool { return s.unloaded.Load() == loadFailed }

// Unchecked reports that the session, cached here, could not be checked
// against the journal (see Table.Acquire): another replica may have
// delivered events of it that this copy does not know, so a resume from
// an id it does not hold cannot be placed.
func (s *Session) Unchecked() bool { return s.unloaded.Load() == checkFailed }

// Values of Session.unloaded.
const (
	loadFailed  = 1
	checkFailed = 2
)

// Resume describes how a new response relates to the session's past.
type Resume struct {
	// LastEventID is the client's Last-Event-ID request header.
	LastEventID string
	// HasLastEventID reports whether the header was present.
	HasLastEventID bool
	// Stream, when set, is the stream the journal says carried
	// LastEventID (see NeedsLocate): the resume continues it even though
	// the session no longer holds that id, and everything it delivered
	// after the id is missed.
	Stream string
}

// marks is what a session records of losses, the rare case.
type marks struct {
	// lostAt holds, for each remembered stream whose events the journal
	// lost, 1 + the window position (see window) at its newest loss
	// (Delivery.Lost): the lost events lie before it.
	lostAt map[uint32]uint64
	// unsent holds the window keys (hash>>8) of events delivered in an
	// answer that never reached Envoy (Stream.Unsent), at most a window's
	// worth. A later delivery of one goes to the client again, neither
	// numbered nor stored again.
	unsent map[uint64]struct{}
}

// mark returns s.marks, made if need be. s.mu must be held.
func (s *Session) mark() *marks {
	if s.marks == nil {
		s.marks = &marks{}
	}
	return s.marks
}

// lostAt is s.marks.lostAt[num], 0 when none. s.mu must be held.
func (s *Session) lostAt(num uint32) uint64 {
	if s.marks == nil {
		return 0
	}
	return s.marks.lostAt[num]
}

// forgetLoss forgets stream num's loss. s.mu must be held.
func (s *Session) forgetLoss(num uint32) {
	if s.marks != nil {
		delete(s.marks.lostAt, num)
	}
}

// Stream is one SSE response of a session. It belongs to the goroutine
// serving that response, which delivers events to it through a Delivery.
type Stream struct {
	sess  *Session
	num   uint32
	since uint32 // streamInfo.since when this response opened or took the stream over
	id    string

	// matched is set when the response resumes a known stream after the
	// client's Last-Event-ID: ids of that stream (whose tag is lostTag)
	// the window recorded at positions from from up to start may be
	// delivered again, since the client said it has not seen them (from
	// is 0 when the id had left the window: all of them are after it).
	matched bool
	lostTag uint64
	from    uint64
	start   uint64
	// anchoring is set when the client's Last-Event-ID is one the session
	// does not know: the first id the upstream sends may tell where the
	// client is (see anchor).
	anchoring bool
	// located is set when the journal named the stream (Resume.Stream).
	located bool
	// continued is set when the response continues a stream the session
	// already knew (matched by Last-Event-ID or by its last id).
	continued bool
	// missedAfter and missedThrough bound what the stream delivered after
	// the client's Last-Event-ID: the events the client says it never got.
	missedAfter, missedThrough string
	// replayed holds the id hashes of the response's replay while the
	// upstream may still repeat them (see Delivery.Replayed), nil
	// otherwise; replayedHit is set once it repeated one, replayedMiss
	// counts the ids it sent before that, none of them replayed.
	replayed     map[uint64]struct{}
	replayedHit  bool
	replayedMiss int
}

// OpenStream starts a new response in the session. A resume whose
// Last-Event-ID the session delivered continues the stream that carried it;
// otherwise the response is a new stream.
func (s *Session) OpenStream(r Resume) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &Stream{sess: s, start: s.win.next}
	if r.HasLastEventID && r.LastEventID != "" {
		if slot := s.win.find(s.table.hash(r.LastEventID)); slot >= 0 {
			// The slot knows its stream by tag; the session's remembered
			// streams have distinct tags. A stream no longer remembered
			// starts anew.
			for i := range s.streams {
				if tagOf(s.streams[i].num) == s.win.tag(slot) {
					st.num = s.streams[i].num
					st.matched = true
					st.from = s.win.position(slot) + 1
					break
				}
			}
		} else {
			for i := range s.streams {
				if string(s.streams[i].lastID) == r.LastEventID {
					st.num = s.streams[i].num
					break
				}
			}
		}
		if st.num == 0 && r.Stream != "" {
			// Located by the journal: every id of that stream still in
			// the window was delivered after the client's id.
			st.matched, st.from, st.located = true, 0, true
			for i := range s.streams {
				if s.streams[i].id == r.Stream {
					st.num = s.streams[i].num
					break
				}
			}
		}
	}
	if info := s.stream(st.num); info != nil {
		st.id = info.id
		st.continued = true
		info.since = nextSince(info.since, st.start)
		st.since = info.since
		// lastID stays the last id delivered: the client's header may be
		// behind it, and what lies between is what it missed. A stream
		// whose last id is not known (loaded from a journal that could not
		// keep an id that long) missed whatever it stored after the
		// client's id.
		if st.matched && string(info.lastID) != r.LastEventID {
			st.missedAfter, st.missedThrough = r.LastEventID, string(info.lastID)
		}
		s.touchStream(st.num)
		return st.settle(r)
	}
	st.num = s.newStreamNum()
	st.id = newStreamID()
	lastID := []byte(r.LastEventID)
	if st.located {
		// A stream this session no longer remembers (or another replica
		// delivered): it goes on under its id, and what it stored after
		// the client's id is missed, through whatever the journal holds.
		st.id, st.continued, lastID = r.Stream, true, nil
		st.missedAfter = r.LastEventID
	}
	st.since = uint32(st.start)
	s.remember(streamInfo{num: st.num, id: st.id, lastID: lastID, since: st.since})
	return st.settle(r)
}

// settle ends OpenStream once the stream is chosen: a matched resume may
// deliver again ids of its own stream, and a resume from an id the session
// does not know waits for the upstream's first id (anchor).
func (st *Stream) settle(r Resume) *Stream {
	st.lostTag = tagOf(st.num)
	st.anchoring = !st.continued && r.HasLastEventID && r.LastEventID != ""
	return st
}

// anchor places a resume from a Last-Event-ID the session does not know
// (an id the client could not send back byte for byte, such as one with
// invalid UTF-8 or surrounding spaces, or the id of an event too large to
// track) at the first id the upstream sends, slot its window slot or -1.
// An upstream that honours Last-Event-ID resumes right after the client's
// id, so when that first id is one the session delivered, the client lacks
// it and what its stream delivered after it: those go to the client again,
// as they would without ssetrack, instead of being dropped as duplicates.
// The response then continues that stream, as a resume from an id the
// session knows does, so that a later resume from one of these events
// finds them stored under it. Only the first id anchors.
func (d *Delivery) anchor(slot int) {
	st := d.st
	st.anchoring = false
	if slot < 0 {
		return
	}
	s := st.sess
	tag := s.win.tag(slot)
	// What that stream delivered since this response opened (on a response
	// of it still open, whose client has left) is the client's too.
	st.matched, st.lostTag, st.from, st.start = true, tag, s.win.position(slot), s.win.next
	for i := range s.streams {
		if num := s.streams[i].num; tagOf(num) == tag && num != st.num {
			s.forgetStream(st.num) // opened for this response, nothing delivered on it
			s.touchStream(num)
			info := s.stream(num)
			st.num, st.id, st.continued = num, info.id, true // lostTag is its tag already
			info.since = nextSince(info.since, st.start)
			st.since = info.since
			d.info = info
			return
		}
	}
}

// newStreamNum returns the session's next stream number whose window tag
// (tagOf) no remembered stream has: a stream kept remembered by resumes (an
// MCP client's GET) would otherwise share its tag with the one 255 numbers
// later, and the window could not tell their events apart. There are 255
// tags and at most maxStreams remembered streams. s.mu must be held.
func (s *Session) newStreamNum() uint32 {
	for {
		s.nextStream++
		tag := tagOf(s.nextStream)
		if !slices.ContainsFunc(s.streams, func(i streamInfo) bool { return tagOf(i.num) == tag }) {
			return s.nextStream
		}
	}
}

// remember adds a stream to the session's remembered streams, forgetting
// the oldest beyond maxStreams. s.mu must be held.
func (s *Session) remember(info streamInfo) {
	if len(s.streams) == maxStreams {
		s.forgetLoss(s.streams[0].num)
		copy(s.streams, s.streams[1:])
		s.streams = s.streams[:maxStreams-1]
	}
	s.streams = append(s.streams, info)
}

// forgetStream removes stream num from the remembered streams. s.mu must
// be held.
func (s *Session) forgetStream(num uint32) {
	s.streams = slices.DeleteFunc(s.streams, func(info streamInfo) bool { return info.num == num })
	s.forgetLoss(num)
}

// touchStream moves stream num to the end of the remembered streams, which
// are forgotten oldest first: a resumed stream (an MCP GET stream that
// lives as long as its session) is kept over the streams opened since.
func (s *Session) touchStream(num uint32) {
	for i := range s.streams {
		if s.streams[i].num == num {
			info := s.streams[i]
			copy(s.streams[i:], s.streams[i+1:])
			s.streams[len(s.streams)-1] = info
			return
		}
	}
}

// NeedsLocate reports whether a resume from lastEventID should ask the
// journal which stream carried it (Resume.Stream): the session does not
// hold the id (in its window or as a stream's last id), and the journal
// has not said already that the id is not stored (NotStored). A session
// that has let no record go (it numbered no more events than its window
// holds, nor recorded more: an event sent again, a replayed one and a mark
// each take a place without a number) holds every id it delivered, so it
// asks only when shared: another response of the session is open here
// (Table.Shared). Acquire reloads a copy that another writer's batch made
// stale only when no stream of it is open, so one that is (an MCP
// client's standalone GET, while its POSTs go to other replicas) may lack
// what other replicas delivered since it was loaded.
func (s *Session) NeedsLocate(lastEventID string, shared bool) bool {
	if lastEventID == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if lastEventID == s.notStored {
		return false
	}
	if !shared && s.base == nil && max(s.seq, s.win.next) <= uint64(len(s.win.slots)) {
		// (A session numbering provisionally does not know its history:
		// an id it does not hold may be stored.)
		return false
	}
	return !s.holds(lastEventID)
}

// Holds reports whether the session knows id: its window holds it, or it
// is the last id of a stream the session remembers.
func (s *Session) Holds(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holds(id)
}

// holds is Holds with s.mu held.
func (s *Session) holds(id string) bool {
	if s.win.find(s.table.hash(id)) >= 0 {
		return true
	}
	for i := range s.streams {
		if string(s.streams[i].lastID) == id {
			return true
		}
	}
	return false
}

// NotStored records that the journal does not hold lastEventID, so that a
// client resuming from it again does not cost another search.
func (s *Session) NotStored(lastEventID string) {
	s.mu.Lock()
	s.notStored = lastEventID
	s.mu.Unlock()
}

// Located reports whether the journal named the stream (Resume.Stream).
func (st *Stream) Located() bool { return st.located }

// Missed reports the events the stream delivered that the resuming client
// says it does not have: those after the id after, through the id through.
// ok is false when the client has everything the stream delivered.
func (st *Stream) Missed() (after, through string, ok bool) {
	return st.missedAfter, st.missedThrough, st.missedAfter != ""
}

// MissedUnheld reports whether the stream delivered, after the client's
// Last-Event-ID, an event the journal does not hold: delivered untracked
// (Delivery.Untracked), even after the stream's last id (Missed's through),
// or lost by the journal (Delivery.Lost, Table.Lost). A replay would then
// not give the client all it missed. It reads the session's marks as they
// are now: a loss the journal reports while a replay is read shows once the
// read is done.
// Marks live in memory: an untracked event whose place has left the window,
// or what a session loaded from the journal never saw, is not reported.
func (st *Stream) MissedUnheld() bool {
	if st.missedAfter == "" {
		return false
	}
	s := st.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lostAt(st.num) > st.from || s.win.untrackedAfter(st.num, st.from)
}

// stream returns the info of stream num, or nil. s.mu must be held.
func (s *Session) stream(num uint32) *streamInfo {
	if num == 0 {
		return nil
	}
	for i := range s.streams {
		if s.streams[i].num == num {
			return &s.streams[i]
		}
	}
	return nil
}

// ID returns the stream id, stable across resumes of the stream.
func (st *Stream) ID() string { return st.id }

// Resumed reports whether the response continues a stream the session knew.
func (st *Stream) Resumed() bool { return st.continued }

// Delivery is a run of deliveries to one stream, typically the events of one
// response chunk. It holds the session's lock from Stream.Begin until End, so
// a chunk's events are decided together and the concurrent streams of a
// session (an MCP client's GET stream and a POST response) interleave per
// chunk, not per event. Its methods are the only way to deliver. A Delivery
// belongs to the goroutine that began it; End must be called exactly once.
type Delivery struct {
	st   *Stream
	info *streamInfo // the stream's entry in the session, looked up once; nil if forgotten
}

// Begin starts a delivery to the stream, locking its session until End.
func (st *Stream) Begin() Delivery {
	st.sess.mu.Lock()
	if b := st.sess.base; b != nil {
		// The journal may have learnt the base meanwhile: number on from it.
		if v, ok := b.Value(); ok {
			st.sess.rebase(v)
		}
	}
	// The session's stream list changes only under the lock: info stays
	// valid until End.
	return Delivery{st: st, info: st.sess.stream(st.num)}
}

// SeqBase is the base the sequence numbers this delivery assigns count
// from, nil when they are final (see Record.Base). It stays the same until
// End.
func (d *Delivery) SeqBase() *SeqBase { return d.st.sess.base }

// End ends the delivery and unlocks the session.
func (d *Delivery) End() { d.st.sess.mu.Unlock() }

// Position is the window position the delivery's next event takes: a
// caller that keeps it can name, with Stream.Unsent, what the stream
// delivered from there on.
func (d *Delivery) Position() uint64 { return d.st.sess.win.next }

// Unsent records that what this stream delivered at window positions
// [from, to) (Delivery.Position at the delivery's start and end) never
// reached Envoy: the ext_proc answer carrying it could not be sent, the
// stream having ended (an upstream that reset mid-stream, say). Its client
// did not get those events from this response, whatever a later one that
// says nothing of them (no Last-Event-ID) would otherwise be taken to have:
// when an upstream sends one of them again on any response of the session,
// it goes to the client again, as a resuming client's lost event does
// (Deliver), neither numbered nor stored again, once. They stay recorded and
// stored as delivered: a resume from an id before them gets them by replay.
// A response superseded meanwhile (its client resumed elsewhere) marks
// nothing: its stream's events are the newer response's.
//
// The marks are bounded by the window: marks of ids no longer in it are
// dropped first, and past a window's worth an arbitrary one gives way.
func (st *Stream) Unsent(from, to uint64) {
	s := st.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	if info := s.stream(st.num); info == nil || info.since != st.since {
		return
	}
	w := &s.win
	size := uint64(len(w.slots))
	to = min(to, w.next)
	if w.next > size {
		from = max(from, w.next-size)
	}
	if from >= to {
		return
	}
	m := s.mark()
	if m.unsent == nil {
		m.unsent = make(map[uint64]struct{})
	}
	swept := false
	tag := tagOf(st.num)
	for p := from; p < to; p++ {
		v := w.slots[p%size]
		if v&0xff != tag || v>>8 == 0 {
			continue
		}
		if len(m.unsent) >= len(w.slots) && !swept {
			swept = true
			for k := range m.unsent {
				if w.find(k<<8) < 0 {
					delete(m.unsent, k) // left the window: a resend is new to it
				}
			}
		}
		if len(m.unsent) >= len(w.slots) {
			for k := range m.unsent {
				delete(m.unsent, k) // an arbitrary one gives way
				break
			}
		}
		m.unsent[v>>8] = struct{}{}
	}
}

// isUnsent reports whether window key h>>8 is among the unsent (see
// marks), and with take forgets it. s.mu must be held.
func (s *Session) isUnsent(h uint64, take bool) bool {
	if s.marks == nil || s.marks.unsent == nil {
		return false
	}
	_, ok := s.marks.unsent[h>>8]
	if ok && take {
		delete(s.marks.unsent, h>>8)
	}
	return ok
}

// Deliver decides whether an event goes to the client and records it if so.
// id is the event's id and hasID whether it had a valid id field (WHATWG HTML
// §9.2): an empty id resets the stream's last event id and, like an event
// without id, is never a duplicate. It returns the event's per-session
// sequence number, or dup set and seq 0 when the client already has the
// event. An event a resuming client says it lost (delivered on this stream
// after its Last-Event-ID) goes to it again with seq 0: it was numbered and
// stored when first delivered, and is neither numbered nor stored again. A
// delivered event's id (copied) becomes the stream's last event id.
func (d *Delivery) Deliver(id []byte, hasID bool) (seq uint64, dup bool) {
	dup, again := d.Claim(id)
	if dup {
		return 0, true
	}
	return d.Finish(id, id, hasID, again), false
}

// Claim is the first half of Deliver, which Finish completes: it reports
// dup when the client has the event with id claimed, and otherwise records
// the id in the window. again reports an event a resuming client lost (see
// Deliver). A gateway that decided on an event's first id field before the
// event ended (Dup) claims it once the event is whole. An empty id is never
// a duplicate and is not recorded.
func (d *Delivery) Claim(claimed []byte) (dup, again bool) {
	if d.superseded() {
		return false, true
	}
	if len(claimed) == 0 {
		return false, false
	}
	st := d.st
	s := st.sess
	h := s.table.hashBytes(claimed)
	if st.replayed != nil {
		if _, ok := st.replayed[h]; ok {
			st.replayedHit = true
			return true, false
		}
		if st.replayedMiss++; st.replayedHit || st.replayedMiss > len(s.win.slots) {
			// Past the replay's repeats, or an upstream that sends none.
			st.replayed = nil
		}
	}
	slot := s.win.find(h)
	if st.anchoring {
		d.anchor(slot)
	}
	if slot >= 0 {
		// Both asked: an unsent mark goes with any delivery of its event.
		lost, unsent := st.lost(slot), s.isUnsent(h, true)
		if again = lost || unsent; !again {
			return true, false
		}
	}
	// Once more at the head of the window: a second repeat in this
	// response is a duplicate.
	s.win.move(h, st.num, slot)
	return false, again
}

// Finish completes the delivery of an event claimed (Claim) at its id
// field claimed: id is its last id field, which WHATWG HTML §9.2 makes the
// event's id, and hasID whether it had one. When id differs from claimed the
// window records it too, whether or not the client had it: the event went
// to the client. It returns the event's sequence number, 0 when again (an
// event sent again is neither numbered nor stored again).
func (d *Delivery) Finish(claimed, id []byte, hasID, again bool) (seq uint64) {
	st := d.st
	s := st.sess
	if d.superseded() {
		return 0
	}
	if len(id) > 0 && string(id) != string(claimed) {
		s.win.add(s.table.hashBytes(id), st.num)
	}
	if hasID && d.info != nil {
		d.info.lastID = append(d.info.lastID[:0], id...)
	}
	if again {
		return 0
	}
	s.seq++
	return s.seq
}

// superseded reports that the client resumed this response's stream on a
// newer response (by Last-Event-ID, or anchored): the client has left this
// one, whose connection may not have noticed yet (a half-open last mile).
// What it still sends is forwarded as it comes, and neither recorded,
// numbered nor stored: those events are the newer response's to deliver,
// and a client that still reads both gets them twice, as it would without
// ssetrack.
func (d *Delivery) superseded() bool { return d.info != nil && d.info.since != d.st.since }

// nextSince is streamInfo.since for a response that opens at window
// position pos, the previous response's since being prev: pos's low 32
// bits, or prev+1 when the window has not moved past prev (a response that
// opened before any event since the previous one), so that the two differ.
// The second case leaves since past the response's first position, so a
// takeover notice naming its first event (Table.TakenOver) does not
// supersede it: pushing a slot to keep them equal would let a storm of
// reconnects empty the dedup window.
func nextSince(prev uint32, pos uint64) uint32 {
	if n := uint32(pos); int32(n-prev) > 0 {
		return n
	}
	return prev + 1
}

// Untracked records that an event went to the client on this stream
// without being decided, numbered or stored: one larger than the gateway
// tracks. It takes a place in the window, so that a client resuming from an
// id before it is known to have missed an event no replay can give
// (Stream.MissedUnheld).
func (d *Delivery) Untracked() {
	if !d.superseded() {
		d.st.sess.win.mark(d.st.num)
	}
}

// Lost records that the journal lost (refused, or gave up on) events this
// stream delivered: a client resuming from an id before this point may
// have missed one of them, which no replay can give (Stream.MissedUnheld).
func (d *Delivery) Lost() {
	if !d.superseded() {
		d.st.sess.lost(d.st.num)
	}
}

// lost records a loss of stream num's events at the window's head (see
// marks.lostAt). s.mu must be held.
func (s *Session) lost(num uint32) {
	m := s.mark()
	if m.lostAt == nil {
		m.lostAt = make(map[uint32]uint64)
	}
	m.lostAt[num] = s.win.next + 1
}

// Dup reports whether Claim would find the event with this id a
// duplicate, recording nothing in the window: a gateway decides on it
// before the event ends, and claims the event once it is whole. Like Claim,
// it anchors a resume from an unknown id (Stream.anchor).
func (d *Delivery) Dup(id []byte) bool {
	if len(id) == 0 || d.superseded() {
		return false
	}
	s := d.st.sess
	h := s.table.hashBytes(id)
	if _, ok := d.st.replayed[h]; ok {
		return true
	}
	slot := s.win.find(h)
	if d.st.anchoring {
		d.anchor(slot)
	}
	return slot >= 0 && !d.st.lost(slot) && !s.isUnsent(h, false)
}

// lost reports whether the event in window slot is one the client resuming
// on this stream lost: delivered on the stream it resumes, after its
// Last-Event-ID.
func (st *Stream) lost(slot int) bool {
	w := &st.sess.win
	pos := w.position(slot)
	return st.matched && w.tag(slot) == st.lostTag && pos >= st.from && pos < st.start
}

// Replayed records that events already delivered (and persisted) once,
// with these ids in order, were delivered again to this response from the
// journal: the upstream's own repeats of them are then duplicates. Unlike
// Deliver it assigns no sequence numbers. Empty ids are skipped.
//
// The window records them as it records any delivery, and the response
// keeps their hashes too (a map entry per event) while the upstream may
// repeat them: until it sends an id not among them after one among them,
// or more than a window's worth of ids before the first (one that resumes
// from before the client's id, or that sends none). The window alone may
// not be enough: a replay of more ids than it holds evicts its own first
// ones, as do other streams of the session delivering meanwhile, and each
// upstream repeat of an evicted id, forwarded, would evict the next one it
// repeats.
func (d *Delivery) Replayed(ids []string) {
	st := d.st
	s := st.sess
	if d.superseded() {
		return
	}
	if st.replayed == nil {
		st.replayed = make(map[uint64]struct{}, len(ids))
	}
	for _, id := range ids {
		if id == "" {
			continue
		}
		h := s.table.hash(id)
		s.win.add(h, st.num)
		s.isUnsent(h, true) // the replay delivers it
		st.replayed[h] = struct{}{}
	}
}

// LastID returns the stream's last event id as the session knows it.
func (st *Stream) LastID() string {
	st.sess.mu.Lock()
	defer st.sess.mu.Unlock()
	if info := st.sess.stream(st.num); info != nil {
		return string(info.lastID)
	}
	return ""
}

// Bind binds the session to principal (a keyed hash of it) unless it is
// bound already, and reports whether principal owns the session: the one it
// is bound to, or any while it is bound to none. Replay is served only to
// the owner. An empty principal binds nothing.
func (s *Session) Bind(principal string) (owner bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.principal == "" {
		s.principal = principal
		return true
	}
	return s.principal == principal
}

// LatestLastID returns the last event id of the session's most recently
// opened or resumed stream, or "".
func (s *Session) LatestLastID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.streams); n > 0 {
		return string(s.streams[n-1].lastID)
	}
	return ""
}

// restore applies a journal history to the session: a new one, or one
// whose earlier load failed and that has delivered events of its own since
// (those stay: restore only adds what the session does not know yet, and
// keeps its streams' last ids unless newer says the history is the more
// recent, see below).
func (s *Session) restore(h *History, newer bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.base != nil {
		// The first load failed: what the session numbered since counts
		// from what the journal holds, unless the journal, storing those
		// numbers, learnt it first.
		s.rebase(s.base.Resolve(h.Seq))
	}
	// With newer, the history's last ids replace the session's when the
	// journal numbered more events than the session did: another writer
	// delivered after it (Table.Reload).
	newer = newer && h.Seq > s.seq
	s.seq = max(s.seq, h.Seq) // s.seq: a floor from a dropped stale copy, or our own
	if h.Principal != "" {
		// The stored binding is the session's: one made here while its
		// load failed was the first caller's, whoever that was.
		s.principal = h.Principal
	}
	nums := map[string]uint32{}
	for _, st := range s.streams {
		nums[st.id] = st.num
	}
	num := func(id string) uint32 {
		if n, ok := nums[id]; ok {
			return n
		}
		n := s.newStreamNum()
		nums[id] = n
		s.remember(streamInfo{num: n, id: id})
		return n
	}
	for _, st := range h.Streams {
		if info := s.stream(num(st.Stream)); info != nil && (len(info.lastID) == 0 || newer) {
			info.lastID = []byte(st.LastEventID)
		}
	}
	events := h.Events
	if len(events) > len(s.win.slots) {
		events = events[len(events)-len(s.win.slots):]
	}
	for _, e := range events {
		if e.ID != "" {
			if hv := s.table.hash(e.ID); s.win.find(hv) < 0 {
				s.win.add(hv, num(e.Stream))
			}
		}
		if e.Seq > s.seq {
			s.seq = e.Seq
		}
	}
}

// rebase ends provisional numbering: the numbers assigned so far count from
// v (Record.Base). s.mu must be held.
func (s *Session) rebase(v uint64) {
	s.seq += v
	s.base = nil
}

// footprint reports the session's approximate heap bytes.
func (s *Session) footprint() int {
	n := int(sessionSize) + s.win.bytes() + len(s.id) + cap(s.streams)*int(streamInfoSize)
	for _, st := range s.streams {
		n += len(st.id) + cap(st.lastID)
	}
	return n
}

var streamSeq struct {
	sync.Mutex
	prefix string
	n      uint64
}

// newStreamID returns an id unique across processes: a random per-process
// prefix and a counter.
func newStreamID() string {
	streamSeq.Lock()
	defer streamSeq.Unlock()
	if streamSeq.prefix == "" {
		streamSeq.prefix = strconv.FormatUint(rand.Uint64()>>16, 36)
	}
	streamSeq.n++
	return streamSeq.prefix + "-" + strconv.FormatUint(streamSeq.n, 36)
}

func now() int64 { return time.Now().UnixNano() }
