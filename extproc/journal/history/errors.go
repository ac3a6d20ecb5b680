package history

import "errors"

var (
	// ErrEventNotFound is reported by a Reader when ReadOptions.FromID names
	// an event id that is not (or no longer) stored for the session, or not
	// in ReadOptions.Stream. No event is delivered before it.
	ErrEventNotFound = errors.New("history: event id not found")

	// ErrPurged is reported by a Reader when ReadOptions.Since lies before
	// the session's oldest stored event and older events of the session
	// were purged (by the stream's MaxAge, MaxBytes or per-subject limit):
	// what was asked for is no longer whole. No event is delivered before
	// it.
	ErrPurged = errors.New("history: part of the requested history was purged")

	// ErrConflictingOptions is reported by a Reader when ReadOptions sets
	// both FromID and Since.
	ErrConflictingOptions = errors.New("history: from-id and since are mutually exclusive")

	// ErrBadBatch is returned by Decode and DecodeMsg when a message lacks
	// the headers of a batch, or one of them is malformed. A Reader skips
	// such messages.
	ErrBadBatch = errors.New("history: malformed batch message")
)
