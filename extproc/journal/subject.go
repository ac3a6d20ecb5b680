package journal

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
)

// SubjectToken maps a session id to the subject token (and KV key) used for
// it; see history.SubjectToken.
func SubjectToken(sessionID string) string { return history.SubjectToken(sessionID) }

// Subject returns the subject of a session's batches; see history.Subject.
// An empty prefix means DefaultSubjectPrefix.
func Subject(prefix, sessionID string) string { return history.Subject(prefix, sessionID) }

// MsgID is the Nats-Msg-Id of a batch of session on stream, starting at
// per-session sequence firstSeq, published by writer (one Publisher) as its
// batch-th batch. A retry reuses the message, hence the id, so the server
// drops it as a duplicate within the stream's duplicate window. The stream
// and the writer are hashed in, so that no two streams' batches, and no two
// replicas' batches, collide even when their sequence numbers overlap
// (replicas number a session's events independently); batch keeps two
// batches of one writer apart even if a session reloaded from the journal
// hands out a sequence number again (a session evicted while its last batch
// was unacknowledged), which would otherwise be dropped as a duplicate.
func MsgID(sessionID, stream, writer string, firstSeq, batch uint64) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s%d:%s%d:%s", len(sessionID), sessionID, len(stream), stream, len(writer), writer)
	sum := h.Sum(nil)
	return fmt.Sprintf("%s.%d.%d", base64.RawURLEncoding.EncodeToString(sum[:18]), firstSeq, batch)
}
