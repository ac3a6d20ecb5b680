package journal

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"strconv"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
)

// newWriterID returns a random id for one Publisher.
func newWriterID() string {
	var b [12]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Stale implements session.Loader: it reports whether the session's last
// stored batch was written by another Publisher (another replica, or this
// process before a restart) and holds events after seq, the last sequence
// number the caller's cached copy assigned: the copy then lacks what that
// writer delivered. Batches of this process still in flight never make a
// copy stale (after a restart the last stored batch is the old process's,
// but the copy, loaded from it, has seen it). It costs one direct read of
// the subject's last message.
func (p *Publisher) Stale(ctx context.Context, sessionID string, seq uint64) (bool, error) {
	msg, err := history.LastMessage(ctx, p.stream, Subject(p.cfg.SubjectPrefix, sessionID))
	if err != nil || msg == nil {
		return false, err
	}
	if msg.Header.Get(HeaderWriter) == p.writer {
		return false, nil
	}
	last, err := strconv.ParseUint(msg.Header.Get(history.HeaderLastSeq), 10, 64)
	if err != nil {
		// Not a batch (Load passes such messages over): nothing newer that
		// ssetrack wrote can be told from it.
		return false, nil
	}
	stale := last > seq
	if stale {
		p.m.staleSessions.Inc()
	}
	return stale, nil
}
