package journal

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by Shutdown when called twice, and reported by
	// Append (as false) once Shutdown has begun.
	ErrClosed = errors.New("journal: publisher closed")

	// ErrInvalidConfig wraps every validation failure of Options, Config,
	// ConnConfig and ServerConfig (each one a *FieldError).
	ErrInvalidConfig = errors.New("journal: invalid config")

	// ErrServerNotReady is returned by StartServer when the embedded server
	// does not accept connections within ServerConfig.ReadyTimeout.
	ErrServerNotReady = errors.New("journal: embedded nats-server not ready")

	// ErrNotReady is wrapped by Journal.Ready, with the reason, while the
	// journal cannot publish: NATS not connected yet (or any more), or the
	// stream and bucket not set up yet. Load, Stale and Replay return it
	// until the first setup succeeds.
	ErrNotReady = errors.New("journal: not ready")
)

// FieldError is one invalid configuration field. It wraps ErrInvalidConfig.
// Field is the field's path in Options ("Config.Replicas",
// "Conn.TLSKeyFile"); Other, when set, is the second field of a rule on two
// fields. Callers that expose fields under other names (command-line flags)
// render the error with Describe.
type FieldError struct {
	Field string
	Value any
	// Rule says what is accepted or what went wrong: "want 1..3",
	// "needs", "excludes".
	Rule  string
	Other string
}

// Error implements error: "journal: invalid config: Config.Replicas 5: want 1..3".
func (e *FieldError) Error() string {
	return ErrInvalidConfig.Error() + ": " + e.Describe(func(f string) string { return f })
}

// Unwrap returns ErrInvalidConfig.
func (e *FieldError) Unwrap() error { return ErrInvalidConfig }

// Describe renders the error without the package prefix, naming fields
// through name: with a name that maps "Config.Replicas" to "--replicas",
// "--replicas 5: want 1..3".
func (e *FieldError) Describe(name func(field string) string) string {
	v := e.Value
	if s, ok := v.(string); ok {
		v = fmt.Sprintf("%q", s)
	}
	msg := fmt.Sprintf("%s %v: %s", name(e.Field), v, e.Rule)
	if e.Other != "" {
		msg += " " + name(e.Other)
	}
	return msg
}
