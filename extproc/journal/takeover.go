package journal

import (
	"encoding/binary"
	"errors"

	"github.com/nats-io/nats.go"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// Takeover notices. A client whose last mile died without Envoy noticing
// (a half-open connection) resumes while its old response still runs, and
// the upstream goes on writing into it. When the resume reaches the
// replica that serves the old response, the session there supersedes the
// old response: what it still carries is forwarded and no longer stored.
// When the resume reaches another replica, that replica tells the others
// with a notice on core NATS (no JetStream: nothing is stored), and each
// supersedes the response it holds (Config.TakenOver). Without it, both
// replicas would store the events the upstream sends on both responses.
//
// A notice is best effort: one sent while NATS is away, or one that
// arrives after the old response carried more events, leaves those stored
// twice, each copy with its writer's Ssetrack-Writer, as before notices.

// takeoverPrefix starts the subject of notices: takeoverPrefix + the
// journal's stream name. It lies outside any subject the stream captures
// ("_" marks a subject for the program's own use, as in _INBOX).
const takeoverPrefix = "_SSETRACK.takeover."

// maxNotice bounds a notice's payload: a session id or Last-Event-ID so
// long that it would not fit is not announced.
const maxNotice = 64 << 10

// errBadNotice reports a notice whose payload is not one encodeNotice
// wrote.
var errBadNotice = errors.New("journal: malformed takeover notice")

// notice says that writer continued stream of session on a resume from
// lastEventID.
type notice struct {
	writer, session, stream, lastEventID string
}

// encodeNotice writes n as four length-prefixed (uvarint) byte strings:
// writer, session, stream, Last-Event-ID. Session ids and event ids may
// hold any byte, which rules out a text format with separators.
func encodeNotice(n notice) []byte {
	var b []byte
	for _, f := range []string{n.writer, n.session, n.stream, n.lastEventID} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// decodeNotice reads what encodeNotice wrote: errBadNotice for anything
// else (a notice is dropped, never half read).
func decodeNotice(b []byte) (notice, error) {
	var f [4]string
	for i := range f {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return notice{}, errBadNotice
		}
		f[i], b = string(b[k:k+int(n)]), b[k+int(n):]
	}
	if len(b) != 0 {
		return notice{}, errBadNotice
	}
	return notice{writer: f[0], session: f[1], stream: f[2], lastEventID: f[3]}, nil
}

// Takeover tells the other replicas that a response here continues stream
// of session sessionID from the client's Last-Event-ID lastEventID (a
// resume): a response of the stream they still serve is one the client
// has left. It publishes one core NATS message and never blocks; a notice
// that cannot be sent is dropped.
func (p *Publisher) Takeover(sessionID, stream, lastEventID string) {
	if lastEventID == "" {
		return
	}
	b := encodeNotice(notice{writer: p.writer, session: sessionID, stream: stream, lastEventID: lastEventID})
	if len(b) > maxNotice {
		return
	}
	if err := p.js.Conn().Publish(p.takeoverSubj, b); err != nil {
		p.log.Debug("journal: takeover notice not sent", "session", session.ShortID(sessionID), "err", err)
		return
	}
	p.m.takeovers.WithLabelValues("sent").Inc()
}

// subscribeTakeovers hands other writers' notices to Config.TakenOver.
func (p *Publisher) subscribeTakeovers() error {
	if p.cfg.TakenOver == nil {
		return nil
	}
	sub, err := p.js.Conn().Subscribe(p.takeoverSubj, func(m *nats.Msg) {
		n, err := decodeNotice(m.Data)
		switch {
		case err != nil:
			p.m.takeovers.WithLabelValues("malformed").Inc()
			p.log.Warn("journal: takeover notice dropped", "subject", m.Subject, "err", err)
			return
		case n.writer == p.writer:
			return // our own
		}
		if p.cfg.TakenOver(n.session, n.stream, n.lastEventID) {
			p.m.takeovers.WithLabelValues("superseded").Inc()
		} else {
			p.m.takeovers.WithLabelValues("ignored").Inc()
		}
	})
	if err != nil {
		return err
	}
	p.takeoverSub = sub
	return nil
}
