package journal

import (
	"context"
	"errors"
	"fmt"

	"github.com/ssetrack/ssetrack/extproc/session"
)

var _ session.Replayer = (*Publisher)(nil)

// errReplayDone stops a replay read once the last wanted event is found.
var errReplayDone = errors.New("journal: replay done")

// Replay implements session.Replayer: it reads the session's stored events
// after the event after and keeps those of stream, up to and including the
// event through. The read scans the session's subject from its first batch,
// so its cost grows with the session's stored history (bounded by
// MaxMsgsPerSubject and MaxAge); callers bound it with ctx.
func (p *Publisher) Replay(ctx context.Context, sessionID, stream, after, through string) ([]byte, []string, error) {
	var data []byte
	var ids []string
	r := NewReader(p.js, p.cfg)
	err := r.ReadEvents(ctx, sessionID, ReadOptions{FromID: after}, func(ev Event) error {
		if ev.Stream != stream {
			return nil
		}
		data = append(data, ev.Data...)
		if ev.HasID && ev.ID != "" {
			ids = append(ids, ev.ID)
			if ev.ID == through {
				return errReplayDone
			}
		}
		return nil
	})
	switch {
	case errors.Is(err, errReplayDone):
		return data, ids, nil
	case errors.Is(err, ErrEventNotFound):
		return nil, nil, session.ErrHistoryMissing
	case err != nil:
		return nil, nil, fmt.Errorf("replay: %w", err)
	}
	return nil, nil, session.ErrHistoryIncomplete
}
