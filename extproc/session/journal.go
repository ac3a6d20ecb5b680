package session

import (
	"context"
	"errors"
)

// Record is a run of consecutive delivered events of one stream of one
// session, handed to a Journal. The processor builds one Record per response
// chunk that delivered events, and one with End set when a stream closes.
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
	// Data is the events' SSE bytes exactly as received, each event ending in
	// its blank line: itself a valid SSE stream. The receiver owns it.
	Data []byte
	// End marks the end of the stream: flush its pending batch. A Record
	// with End set may carry no events.
	End bool
	// Principal is the keyed hash of the principal the session is bound to,
	// empty when none is; the journal keeps the first one it sees.
	Principal string
}

// Journal persists delivered events and gives back a session's history. The
// ext_proc side depends only on this interface; the NATS JetStream
// implementation lives in package journal.
type Journal interface {
	// Append hands a record to the journal. It must never block: when the
	// journal cannot take the record it drops it, counts the loss and
	// returns false. The journal owns rec's slices after the call.
	Append(rec Record) bool
	// Load returns what the journal knows of a session, to rebuild its
	// dedup window and last ids after a restart or on another replica.
	// It returns (nil, nil) when the journal has nothing for the session.
	// Load may do network I/O; callers bound it with ctx.
	Load(ctx context.Context, sessionID string) (*History, error)
	// Stale reports whether another writer (another replica, or this
	// process before a restart) persisted events of the session after this
	// process last did: a cached copy may then lack them and is reloaded.
	// Stale may do network I/O; callers bound it with ctx.
	Stale(ctx context.Context, sessionID string) (bool, error)
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

// Replayer is implemented by journals that can give back a stream's events,
// so a resuming client can be sent what passed the gateway but never reached
// it.
type Replayer interface {
	// Replay returns the stored SSE bytes of the events of stream that
	// followed the event after, through the event through, and the ids among
	// them. It returns ErrHistoryMissing when after is not stored and
	// ErrHistoryIncomplete when through is not (yet) stored: history is never
	// replayed in part.
	Replay(ctx context.Context, sessionID, stream, after, through string) (data []byte, ids []string, err error)
}

var (
	// ErrHistoryMissing reports that the journal does not hold the event a
	// replay should start after (never stored, or purged).
	ErrHistoryMissing = errors.New("session: history missing")
	// ErrHistoryIncomplete reports that the journal does not (yet) hold every
	// event a replay should cover.
	ErrHistoryIncomplete = errors.New("session: history incomplete")
)
