package journal

import (
	"context"
	"errors"
	"fmt"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
	"github.com/ssetrack/ssetrack/extproc/session"
)

// Replay implements extproc.Replayer: it returns the stored events of
// stream after the event after, through the event through. It reads what
// the client missed, not what the session stored: history.Reader finds the
// batch holding after by searching backwards from the session's last batch
// (see its FromID), so the cost depends on how many events were stored
// after it, not on the session's history. History is never replayed in
// part: ErrHistoryMissing when after is not stored (never, or purged),
// ErrHistoryIncomplete when through is not among the events after it,
// ErrHistoryTooLarge past Config.MaxReplayBytes. An empty through asks for
// every event stored after it. It first publishes what the session still
// has on its way to JetStream (Flush): a client that resumes at once missed
// events the journal holds but has not stored yet; when ctx ends before
// they are, the history is incomplete. Callers bound it with ctx.
func (p *Publisher) Replay(ctx context.Context, sessionID, stream, after, through string) ([]byte, []string, error) {
	if err := p.Flush(ctx, sessionID); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", session.ErrHistoryIncomplete, err)
	}
	var data []byte
	var ids []string
	// Two replicas may both have stored an event: the client left a
	// response half open on one and resumed on the other, and the takeover
	// notice (takeover.go) reached the first after the event. Once the
	// replay meets a second writer (Ssetrack-Writer), an event whose id it
	// replayed already (or is after) is dropped: the first copy stored is
	// the one replayed. The set of ids is built only then. (A resume from
	// an id stored twice starts after its later copy, the one locate finds
	// first: what the other writer stored between the two copies is not
	// replayed. The notice makes that span milliseconds.)
	var seen map[string]struct{}
	writer := "" // the writer of the replay's first event
	r := history.NewReader(p.stream, p.cfg.SubjectPrefix, history.WithDirectBatches(p.js))
	for ev, err := range r.Events(ctx, sessionID, history.ReadOptions{FromID: after, Stream: stream}) {
		switch {
		case errors.Is(err, history.ErrEventNotFound):
			return nil, nil, session.ErrHistoryMissing
		case err != nil:
			return nil, nil, fmt.Errorf("replay: %w", err)
		}
		if writer == "" {
			writer = ev.Writer
		}
		if seen == nil && ev.Writer != writer {
			seen = make(map[string]struct{}, len(ids)+1)
			seen[after] = struct{}{}
			for _, id := range ids {
				seen[id] = struct{}{}
			}
		}
		if seen != nil && ev.HasID && ev.ID != "" {
			if _, dup := seen[ev.ID]; dup {
				continue
			}
		}
		if len(data)+len(ev.Data) > p.cfg.MaxReplayBytes {
			return nil, nil, session.ErrHistoryTooLarge
		}
		data = append(data, ev.Data...)
		if ev.HasID && ev.ID != "" {
			ids = append(ids, ev.ID)
			if seen != nil {
				seen[ev.ID] = struct{}{}
			}
			if ev.ID == through {
				return data, ids, nil
			}
		}
	}
	if through == "" {
		return data, ids, nil // everything stored after it
	}
	return nil, nil, session.ErrHistoryIncomplete
}

// StreamOf implements extproc.Replayer: the stream of the session that
// carried the stored event id (history.Reader.StreamOf), or
// session.ErrHistoryMissing when no stored event has it. Callers bound it
// with ctx.
func (p *Publisher) StreamOf(ctx context.Context, sessionID, id string) (string, error) {
	stream, err := history.NewReader(p.stream, p.cfg.SubjectPrefix, history.WithDirectBatches(p.js)).StreamOf(ctx, sessionID, id)
	switch {
	case errors.Is(err, history.ErrEventNotFound):
		return "", session.ErrHistoryMissing
	case err != nil:
		return "", fmt.Errorf("stream of event: %w", err)
	}
	return stream, nil
}
