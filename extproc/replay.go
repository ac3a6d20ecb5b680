package extproc

import (
	"context"
	"errors"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// Replay results, in the ssetrack-replay response header and the
// ssetrack_replays_total metric.
const (
	replayDone       = "replayed"   // missed events are sent before the upstream's
	replayMissing    = "missing"    // the client's Last-Event-ID is not in the journal
	replayIncomplete = "incomplete" // the journal lacks some missed events: none sent
	replayFailed     = "error"      // the journal read failed or timed out: none sent
	replayDenied     = "denied"     // the caller is not the session's principal
	replayTooLarge   = "too_large"  // more than the journal's MaxReplayBytes: none sent
)

// readReplay is the replay phase, run with the response headers: it reads
// from the journal the events the resuming client missed on its stream and
// marks them delivered to this response, so the upstream's repeats are
// dropped; the body phase sends them before the upstream's first event.
// History is replayed whole or not at all: the result (for the response
// header) tells the client which, "" when nothing was missed.
func (x *exchange) readReplay(ctx context.Context) string {
	if x.cfg.Replayer == nil || x.stream == nil || x.observe {
		return ""
	}
	if x.hasLastEventID && x.lastEventID != "" &&
		(x.sess.Unloaded() || x.lookupFailed && x.owner || x.sess.Unchecked() && !x.sess.Holds(x.lastEventID)) {
		// The session's history did not load in time, or the search for
		// the client's id did not finish, or the copy here could not be
		// checked against the journal and does not know the client's id
		// (another replica may have delivered it): whether the client
		// missed anything is not known here. The client is told, and the
		// upstream decides.
		x.m.replays.WithLabelValues(replayFailed).Inc()
		return replayFailed
	}
	after, through, missed := x.stream.Missed()
	if !missed {
		return ""
	}
	if !x.owner {
		x.m.replays.WithLabelValues(replayDenied).Inc()
		return replayDenied
	}
	if x.stream.MissedUnheld() {
		// An event over MaxEventSize, or one the journal lost, went out
		// among the missed ones: the upstream decides, as for any gap.
		x.m.replays.WithLabelValues(replayIncomplete).Inc()
		return replayIncomplete
	}
	data, ids, err := x.cfg.Replayer.Replay(ctx, x.sessionID, x.stream.ID(), after, through)
	if err == nil && x.stream.MissedUnheld() {
		// The journal gave up on some of them while the replay was read
		// (it publishes what the session has on its way first).
		err = session.ErrHistoryIncomplete
	}
	result := replayDone
	switch {
	case errors.Is(err, session.ErrHistoryMissing):
		result = replayMissing
	case errors.Is(err, session.ErrHistoryIncomplete):
		result = replayIncomplete
	case errors.Is(err, session.ErrHistoryTooLarge):
		result = replayTooLarge
	case err != nil:
		result = replayFailed
		x.srv.log.Warn("replay", "session", session.ShortID(x.sessionID), "err", err)
	case len(ids) == 0 && len(data) == 0:
		return "" // a located stream that stored nothing after the id
	default:
		d := x.stream.Begin()
		d.Replayed(ids)
		d.End()
		x.replay = data
		x.m.eventsReplayed.Add(float64(len(ids)))
	}
	x.m.replays.WithLabelValues(result).Inc()
	return result
}
