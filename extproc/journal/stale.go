package journal

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// newWriterID returns a random id for one Publisher.
func newWriterID() string {
	var b [12]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Stale implements session.Loader: it reports whether the session's last
// stored batch was written by another Publisher (another replica, or this
// process before a restart), so a cached copy of the session may lack what
// that writer delivered. It costs one direct read of the subject's last
// message.
func (p *Publisher) Stale(ctx context.Context, sessionID string) (bool, error) {
	msg, err := p.stream.GetLastMsgForSubject(ctx, Subject(p.cfg.SubjectPrefix, sessionID))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("last batch of session: %w", err)
	}
	stale := msg.Header.Get(HeaderWriter) != p.writer
	if stale {
		p.m.staleSessions.Inc()
	}
	return stale, nil
}
