package journal

import "errors"

var (
	// ErrClosed is returned by Shutdown when called twice, and reported by
	// Append (as false) once Shutdown has begun.
	ErrClosed = errors.New("journal: publisher closed")

	// ErrInvalidConfig wraps every Config validation failure.
	ErrInvalidConfig = errors.New("journal: invalid config")

	// ErrServerNotReady is returned by StartServer when the embedded server
	// does not accept connections within ServerConfig.ReadyTimeout.
	ErrServerNotReady = errors.New("journal: embedded nats-server not ready")
)
