package extproc

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// locateStream asks the journal which stream carried the client's
// Last-Event-ID when the session no longer holds it (Session.NeedsLocate),
// or when a copy of the session this process held before the request
// (cached) may never have held it: another replica stored the session's
// last batch (Table.WrittenElsewhere). The resume then continues that
// stream and what the client missed is replayed however far back the id
// is; "" when it is not asked or does not know. Only the session's owner,
// who alone gets replays, makes it ask. An id the journal does not hold
// costs a read of the session's history, bounded by ctx; the session
// remembers it (Session.NotStored), and the locator shares a search among
// concurrent resumes from one id and bounds the searches running at once.
func (x *exchange) locateStream(ctx context.Context, cached bool) string {
	if x.cfg.Replayer == nil || x.observe || !x.owner {
		return ""
	}
	if !x.sess.NeedsLocate(x.lastEventID) && !(cached && x.cfg.Sessions.WrittenElsewhere(ctx, x.sess, x.lastEventID)) {
		return ""
	}
	stream, err := x.srv.locator.streamOf(ctx, x.cfg.Replayer, x.sessionID, x.lastEventID)
	switch {
	case errors.Is(err, session.ErrHistoryMissing):
		x.sess.NotStored(x.lastEventID)
		return ""
	case err != nil:
		// Mostly a search cut short by ctx: counted, not logged at warn
		// (a client can repeat it at will).
		x.m.errors.WithLabelValues("locate").Inc()
		x.log.Debug("locate stream", "session", session.ShortID(x.sessionID), "err", err)
		return ""
	}
	return stream
}

// awaitPeer gives another replica's batch time to reach the journal when a
// resume, the first this process sees of its session, names an id the
// session loaded from the journal does not hold: the client may have got
// that event from the other replica moments ago (its batch waits up to the
// batch delay). It waits Config.PeerWait, or half of what is left of ctx,
// and reads what the journal stored since (Table.Reload: the session's last
// batch). An id still not held is recorded as not stored (NotStored),
// which spares a later resume from it a journal search.
func (x *exchange) awaitPeer(ctx context.Context) {
	id := x.lastEventID
	if x.cfg.PeerWait <= 0 || x.cfg.Replayer == nil || x.observe || !x.hasLastEventID || id == "" || x.sess.Holds(id) {
		return
	}
	wait := x.cfg.PeerWait
	if deadline, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(deadline)/2)
	}
	t := time.NewTimer(wait)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		return
	}
	x.cfg.Sessions.Reload(ctx, x.sess)
	if !x.sess.Holds(id) && !x.sess.NeedsLocate(id) {
		x.sess.NotStored(id)
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

// streamOf is Replayer.StreamOf through the locator. A shared search runs
// under the ctx of the resume that started it.
func (l *locator) streamOf(ctx context.Context, r Replayer, sessionID, id string) (string, error) {
	ch := l.group.DoChan(sessionID+"\x00"+id, func() (any, error) {
		select {
		case l.slots <- struct{}{}:
			defer func() { <-l.slots }()
		case <-ctx.Done():
			return "", ctx.Err()
		}
		return r.StreamOf(ctx, sessionID, id)
	})
	select {
	case res := <-ch:
		stream, _ := res.Val.(string)
		return stream, res.Err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}
