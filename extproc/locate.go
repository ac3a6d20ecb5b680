package extproc

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// locateStream asks the journal which stream carried the client's
// Last-Event-ID when the session does not hold it (Session.NeedsLocate;
// shared: another response of the session is open here, Table.Shared), so
// that the resume continues that stream and what the client missed is
// replayed however far back the id is, or whichever replica delivered it;
// "" when it is not asked or does not know. Only the session's owner, who
// alone gets replays, makes it ask. An id the journal does not hold costs
// a read of the session's history, bounded by ctx; the session remembers
// it (Session.NotStored), and the locator shares a search among concurrent
// resumes from one id and bounds the searches running at once. For a
// shared session the search is made once more after a peer pause (see
// awaitPeer) if it found nothing: the id may be in another replica's batch
// still on its way. Only a search that finished after the pause records
// the id as not stored: a shared copy is not reloaded, and would keep a
// wrong answer while its other response stays open.
func (x *exchange) locateStream(ctx context.Context) string {
	if x.cfg.Replayer == nil || x.observe || !x.owner {
		return ""
	}
	shared := x.cfg.Sessions.Shared(x.sess)
	if !x.sess.NeedsLocate(x.lastEventID, shared) {
		return ""
	}
	stream, err := x.srv.locator.streamOf(ctx, x.cfg.Replayer, x.sessionID, x.lastEventID)
	if errors.Is(err, session.ErrHistoryMissing) && shared {
		if !x.peerPause(ctx) {
			return "" // not known yet: nothing recorded
		}
		stream, err = x.srv.locator.streamOf(ctx, x.cfg.Replayer, x.sessionID, x.lastEventID)
	}
	switch {
	case errors.Is(err, session.ErrHistoryMissing):
		x.sess.NotStored(x.lastEventID)
		return ""
	case err != nil:
		// Mostly a search cut short by ctx: counted, not logged at warn
		// (a client can repeat it at will), and the client told (readReplay).
		x.lookupFailed = true
		x.m.errors.WithLabelValues("locate").Inc()
		x.srv.log.Debug("locate stream", "session", session.ShortID(x.sessionID), "err", err)
		return ""
	}
	return stream
}

// awaitPeer gives another replica's batch time to reach the journal when a
// resume, the first this process sees of its session, names an id the
// session loaded from the journal does not hold: the client may have got
// that event from the other replica moments ago (its batch waits up to the
// batch delay). It pauses (peerPause) and reads what the journal stored
// since (Table.Reload: the session's last batch). An id still not held is
// recorded as not stored (NotStored), which spares a later resume from it
// a journal search.
func (x *exchange) awaitPeer(ctx context.Context) {
	id := x.lastEventID
	if x.cfg.Replayer == nil || x.observe || !x.hasLastEventID || id == "" || x.sess.Holds(id) || !x.peerPause(ctx) {
		return
	}
	x.cfg.Sessions.Reload(ctx, x.sess)
	if !x.sess.Holds(id) && !x.sess.NeedsLocate(id, false) {
		x.sess.NotStored(id)
	}
}

// peerPause waits Config.PeerWait, or half of what is left of ctx: about
// the longest another replica's batch may take to reach the journal. It
// reports false when there is no wait configured or ctx ended first.
func (x *exchange) peerPause(ctx context.Context) bool {
	wait := x.cfg.PeerWait
	if wait <= 0 {
		return false
	}
	if deadline, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(deadline)/2)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// maxLocates bounds the journal searches locateStream runs at once, over all
// sessions: each may read a session's whole history (an id not stored).
const maxLocates = 8

// locator runs locateStream's searches: concurrent resumes of a session
// from the same id share one search (singleflight), and at most maxLocates
// run at once; a resume that finds no free slot within its ctx is not
// located.
type locator struct {
	group singleflight.Group
	slots chan struct{}
}

// streamOf is Replayer.StreamOf through the locator. A shared search has
// the deadline of the resume that started it but not its cancellation: the
// resumes that joined it keep their answer when that one's client leaves.
// Each caller stops waiting when its own ctx ends.
func (l *locator) streamOf(ctx context.Context, r Replayer, sessionID, id string) (string, error) {
	ch := l.group.DoChan(sessionID+"\x00"+id, func() (any, error) {
		sctx := context.WithoutCancel(ctx)
		if deadline, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			sctx, cancel = context.WithDeadline(sctx, deadline)
			defer cancel()
		}
		select {
		case l.slots <- struct{}{}:
			defer func() { <-l.slots }()
		case <-sctx.Done():
			return "", sctx.Err()
		}
		return r.StreamOf(sctx, sessionID, id)
	})
	select {
	case res := <-ch:
		stream, _ := res.Val.(string)
		return stream, res.Err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}
