package session

import (
	"errors"
	"sync/atomic"
)

// Record is a run of consecutive delivered events of one stream of one
// session, handed to a journal to persist. The processor builds one Record
// per response chunk that delivered events, and one with End set when a
// stream closes.
type Record struct {
	// Session is the session id as the client sent it (never empty).
	Session string
	// Stream identifies the stream within the session. A resumed stream keeps
	// the id of the stream it continues.
	Stream string
	// FirstID and LastID are the first and last non-empty event ids among
	// the events in Data; empty when none of them had an id.
	FirstID, LastID string
	// Count is the number of events in Data. A record of no events may
	// carry just the LF completing the CRLF that ended the stream's last
	// recorded event, when that LF came in a later chunk: the journal
	// appends it to that event's batch if the batch is still open.
	Count int
	// FirstSeq and LastSeq are the per-session sequence numbers of the first
	// and last event in Data. Sequence numbers start at 1, grow by one per
	// delivered event across all streams of the session, and survive
	// restarts through the journal (History.Seq).
	FirstSeq, LastSeq uint64
	// Base, when not nil, says that FirstSeq and LastSeq are provisional:
	// the session could not read its last stored number when it began
	// numbering (its history did not load: NATS away, a timeout), so it
	// numbered from 1, and the journal must add Base's value, once known,
	// before it stores the record, and hold the record until then (see
	// SeqBase).
	Base *SeqBase
	// Data is the events' SSE bytes exactly as received, each event ending in
	// its blank line: itself a valid SSE stream. The receiver owns it.
	Data []byte
	// End marks the end of the stream: flush its pending batch. A Record
	// with End set may carry no events.
	End bool
	// Principal is the keyed hash of the principal the session is bound to,
	// empty when none is or when the response's caller is not the one it is
	// bound to; the journal keeps the first non-empty one it sees, unless
	// its KV state already names one (which wins).
	Principal string
}

// SeqBase is the number a session's provisional sequence numbers count
// from: the last number the journal stored for the session before them. A
// session whose history did not load numbers its events 1, 2, ... with a
// SeqBase not yet known; whichever learns the stored number first, the
// session's next successful load or the journal about to store such a
// record, resolves it, and both then add the same value: no two events of
// a session share a number, and the numbers stay consecutive (a gap still
// means lost events). Safe for concurrent use.
type SeqBase struct {
	v atomic.Uint64 // the base + 1; 0 while unknown
}

// Resolve sets the base to n unless it is set already, and returns the
// base in effect.
func (b *SeqBase) Resolve(n uint64) uint64 {
	b.v.CompareAndSwap(0, n+1)
	return b.v.Load() - 1
}

// Value returns the base and true once it is resolved.
func (b *SeqBase) Value() (uint64, bool) {
	v := b.v.Load()
	return v - 1, v != 0
}

// History is a session's persisted state.
type History struct {
	// Seq is the last per-session sequence number assigned.
	Seq uint64
	// Principal is the keyed hash of the principal the session is bound
	// to, or empty.
	Principal string
	// Streams lists the session's streams with their last event ids.
	Streams []StreamState
	// Events lists the most recent delivered event ids, oldest first, at
	// most as many as the caller's dedup window needs (the journal may
	// return more; the table keeps the newest).
	Events []EventRef
}

// StreamState is one stream's persisted cursor.
type StreamState struct {
	Stream      string
	LastEventID string
}

// EventRef is one delivered event id and where it was delivered.
type EventRef struct {
	ID     string
	Stream string
	Seq    uint64
}

// Errors a journal returns from a replay read, matched with errors.Is. History
// is never replayed in part.
var (
	// ErrHistoryMissing reports that the journal does not hold the event a
	// replay should start after (never stored, or purged).
	ErrHistoryMissing = errors.New("session: history missing")
	// ErrHistoryIncomplete reports that the journal does not (yet) hold every
	// event a replay should cover.
	ErrHistoryIncomplete = errors.New("session: history incomplete")
	// ErrHistoryTooLarge reports that the events a replay should cover are
	// more bytes than the journal sends in one replay.
	ErrHistoryTooLarge = errors.New("session: history too large to replay")
)
