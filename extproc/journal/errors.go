package journal

import "errors"

var (
	// ErrClosed is returned by Shutdown when called twice, and reported by
	// Append (as false) once Shutdown has begun.
	ErrClosed = errors.New("journal: publisher closed")

	// ErrEventNotFound is returned by a Reader when ReadOptions.FromID names
	// an event id that is not (or no longer) in the session's history.
	ErrEventNotFound = errors.New("journal: event id not found")

	// ErrConflictingOptions is returned by a Reader when ReadOptions sets
	// both FromID and Since.
	ErrConflictingOptions = errors.New("journal: from-id and since are mutually exclusive")

	// ErrInvalidConfig wraps every Config validation failure.
	ErrInvalidConfig = errors.New("journal: invalid config")

	// ErrBadBatch is returned when a stored message lacks the headers of a
	// batch written by this package.
	ErrBadBatch = errors.New("journal: malformed batch message")

	// ErrServerNotReady is returned by StartServer when the embedded server
	// does not accept connections within ServerConfig.ReadyTimeout.
	ErrServerNotReady = errors.New("journal: embedded nats-server not ready")
)
