package history

import (
	"crypto/sha256"
	"encoding/base64"
)

// Where `ssetrack serve` stores events unless configured otherwise.
const (
	// DefaultStream is the JetStream stream holding the batches.
	DefaultStream = "SSETRACK"
	// DefaultSubjectPrefix starts every session's subject.
	DefaultSubjectPrefix = "ssetrack.events"
)

// maxTokenLen is the longest subject token kept as a plain encoding; longer
// encodings are hashed so subjects and KV keys stay short.
const maxTokenLen = 200

// hashedPrefix starts every hashed token. '=' never occurs in unpadded
// base64url, so a hashed token can never equal a plain one, and it is valid
// in subjects and in KV keys.
const hashedPrefix = "="

// SubjectToken maps a session id to the subject token (and KV key) used for
// it: the unpadded base64url encoding of the id's bytes, or, when that would
// be empty or longer than 200 bytes, "=" followed by the unpadded base64url
// SHA-256 of the id (44 bytes). The result contains only [A-Za-z0-9_=-],
// so the id's own '.', '*', '>', spaces or any other bytes never reach a
// subject, and two different ids never share a token (barring a SHA-256
// collision between two long ids).
func SubjectToken(sessionID string) string {
	n := base64.RawURLEncoding.EncodedLen(len(sessionID))
	if n == 0 || n > maxTokenLen {
		sum := sha256.Sum256([]byte(sessionID))
		return hashedPrefix + base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return base64.RawURLEncoding.EncodeToString([]byte(sessionID))
}

// Subject returns the subject of a session's batches: prefix + "." +
// SubjectToken(sessionID). An empty prefix means DefaultSubjectPrefix.
func Subject(prefix, sessionID string) string {
	if prefix == "" {
		prefix = DefaultSubjectPrefix
	}
	return prefix + "." + SubjectToken(sessionID)
}
