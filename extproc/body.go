package extproc

import (
	"math"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/ssetrack/ssetrack/extproc/session"
	"github.com/ssetrack/ssetrack/extproc/sse"
)

// responseBody is the body phase: one answer per chunk, in order (Envoy's
// STREAMED mode pops its oldest chunk with each answer; in
// FULL_DUPLEX_STREAMED the answer carries the bytes to forward).
func (x *exchange) responseBody(b *procv3.HttpBody) *procv3.ProcessingResponse {
	br := &procv3.BodyResponse{}
	resp := &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
	x.gotBody = true
	if !x.sseBody || x.ended {
		// Not ours to touch, or after end_of_stream: answer, change nothing.
		if x.modes.fullDuplex() {
			br.Response = streamedBody(b.GetBody(), b.GetEndOfStream())
		}
		return resp
	}
	out, changed := x.process(b.GetBody(), b.GetEndOfStream())
	if x.srv.ending.Load() && !b.GetEndOfStream() && x.replayable() {
		// Server.EndStreams: the chunk's events are recorded, and the
		// client, cut here, gets them by replay when it resumes.
		x.m.streamsEnded.Inc()
		return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ImmediateResponse{
			ImmediateResponse: &procv3.ImmediateResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
				Details: "ssetrack_stopping",
			},
		}}
	}
	switch {
	case x.modes.fullDuplex():
		// Envoy forwards only what the answer carries, changed or not.
		br.Response = streamedBody(out, b.GetEndOfStream())
	case changed && !x.observe:
		br.Response = &procv3.CommonResponse{BodyMutation: &procv3.BodyMutation{
			Mutation: &procv3.BodyMutation_Body{Body: out},
		}}
	}
	if b.GetEndOfStream() {
		x.endBody()
	}
	return resp
}

// chunk is the work state of one body chunk: its counters, its journal
// record, and the session delivery, begun at the chunk's first event (or
// at the first id of a block forwarded before it ends).
type chunk struct {
	counts   chunkCounts
	rec      session.Record
	delivery session.Delivery
	locked   bool
	from     uint64 // with locked: the window position the delivery began at
	carried  bool   // the parser held bytes of an earlier chunk
	body     []byte // the chunk
	// off is the offset of the segment at hand in the parser's input for
	// this chunk: the held bytes of an earlier chunk (held of them), then
	// body.
	off, held int
	// While ref, rec.Data is body[refStart:refEnd]: the record's events
	// lie back to back in body, so it references them instead of copying
	// (see appendRecord).
	ref              bool
	refStart, refEnd int
}

// process parses one chunk and returns what to forward in its place:
// everything but dropped duplicates, byte for byte, except an incomplete
// trailing event whose fate is not decided yet, which waits for the next
// chunk (the latency contract: nothing else waits; forwardHeld). At end of
// stream whatever is held is forwarded unchanged. changed is false when out
// is body itself.
//
// body must not change after the call: the journal record may reference
// it. A gRPC message's bytes are its own (protobuf copies them out of the
// transport's buffers), so the chunk Envoy sent qualifies.
func (x *exchange) process(body []byte, eos bool) (out []byte, changed bool) {
	pending := x.parser.Pending()
	c := chunk{carried: pending > 0, body: body, held: pending}
	// Held bytes already forwarded (forwardHeld) are not sent again: the
	// answer is then body's own bytes unless held ones still wait.
	x.rw.reset(body, pending > x.heldSent())
	x.parser.Feed(body)
	if x.replay != nil && !c.carried && len(body) > 0 && body[0] != 0xEF {
		// Nothing forwarded yet and no BOM can start the stream: the missed
		// events go first.
		x.sendReplay()
	}
	for seg, ok := x.parser.Next(); ok; seg, ok = x.parser.Next() {
		if x.replay != nil && seg.Kind != sse.KindBOM {
			x.sendReplay() // after the stream's BOM, before anything else
		}
		// The first segment of a chunk that began inside a block is that
		// block (or its first oversize part): its bytes forwarded before
		// it ended stay out of this answer.
		sent := 0
		if c.carried && c.off == 0 {
			sent = x.endHeld()
		}
		switch cut := x.decide(seg, &c, sent > 0); cut {
		case 0:
			x.rw.keep(seg.Raw[min(sent, len(seg.Raw)):])
		case len(seg.Raw):
			x.rw.drop()
		default: // the LF of a dropped event's CRLF, then what follows it
			x.rw.drop()
			x.rw.keep(seg.Raw[cut:])
		}
		c.off += len(seg.Raw) // segments partition the input, in order
	}
	if !eos {
		x.forwardHeld(&c)
	} else {
		// Forwarded unchanged: a partial event a browser would discard.
		sent := x.heldSent()
		x.abandonHeld()
		tail := x.parser.Flush()
		if x.replay != nil {
			x.sendReplay()
		}
		x.rw.keep(tail[min(sent, len(tail)):])
	}
	if x.cfg.Recorder != nil {
		x.finishRecord(&c.rec, &c)
	}
	x.answeredFrom, x.answeredN = c.from, 0
	if c.locked {
		x.answeredN = uint32(min(c.delivery.Position()-c.from, math.MaxUint32))
		c.delivery.End()
	}
	out, changed = x.rw.answer()
	c.counts.bytesIn, c.counts.bytesOut = len(body), len(out)
	c.counts.rewritten = changed && !x.observe
	x.m.addChunk(&c.counts)
	return out, changed
}

// begin begins the chunk's delivery to st, once.
func (c *chunk) begin(st *session.Stream) {
	if !c.locked {
		c.delivery, c.locked = st.Begin(), true
		c.from = c.delivery.Position()
	}
}

// answerLost is told that the answer to the last message could not be
// sent: Envoy had ended the stream. When that message was a body chunk,
// the client did not get its events from this response (Stream.Unsent).
func (x *exchange) answerLost() {
	if x.answeredN > 0 && x.stream != nil {
		x.stream.Unsent(x.answeredFrom, x.answeredFrom+uint64(x.answeredN))
	}
	x.answeredN = 0
}

// sendReplay puts the missed events (readReplay) into the answer here.
func (x *exchange) sendReplay() {
	x.rw.insert(x.replay)
	x.replay = nil
}

// decide decides one segment and returns how many of its leading bytes to
// leave out: all of a duplicate event the client already has, the LF that
// completes such an event's CRLF when it comes in the next chunk, none of
// anything else. begun reports that the segment's first bytes went out
// before it ended (forwardHeld): it is not dropped.
func (x *exchange) decide(seg sse.Segment, c *chunk, begun bool) (cut int) {
	crEnd, dropCR := x.journal.crEnd, x.dropCR
	x.journal.crEnd, x.dropCR = false, false
	switch seg.Kind {
	case sse.KindComment:
		if seg.Raw[0] == '\n' {
			if dropCR {
				return 1 // goes with the dropped event, as it would in one chunk
			}
			// The LF that completes a recorded event's CRLF belongs in
			// the journal with it.
			x.journal.lfOwed = x.journal.lfOwed || crEnd
		}
		return 0
	case sse.KindOversize:
		// Passed through untouched, not tracked: the session marks the
		// stream, so that a resume from before it is not answered with a
		// replay that lacks it (Stream.MissedUnheld).
		if seg.End {
			c.counts.oversize++
			if x.stream != nil {
				c.begin(x.stream)
				c.delivery.Untracked()
			}
		}
		return 0
	case sse.KindBlock:
		if !seg.HasData && !seg.HasID {
			return 0 // retry or event fields only, a blank line: no event
		}
	default:
		return 0
	}
	c.counts.seen++
	if x.stream == nil {
		c.counts.forwarded++
		return 0
	}
	c.begin(x.stream)
	id, first := seg.ID, seg.FirstID
	if !seg.HasID {
		id, first = nil, nil
	}
	var seq uint64
	var dup bool
	switch {
	case begun:
		// Its first id was new when its bytes began to go out; it goes on
		// even if another stream delivered it since (then as one sent
		// again: stored once).
		had, again := c.delivery.Claim(first)
		seq = c.delivery.Finish(first, id, true, again || had)
	case string(first) == string(id): // one id field, or none: the common case
		seq, dup = c.delivery.Deliver(id, seg.HasID)
	default:
		// Several id fields: the first decides, as it would have had the
		// block come in pieces (forwardHeld); else the last, the event's id.
		var again bool
		if dup, again = c.delivery.Claim(first); !dup {
			seq = c.delivery.Finish(first, id, true, again)
		} else {
			seq, dup = c.delivery.Deliver(id, true)
		}
	}
	if dup {
		// Never persisted twice; dropped unless Envoy only lets us observe.
		c.counts.deduped++
		if x.observe {
			c.counts.forwarded++
			return 0
		}
		x.dropCR = seg.Raw[len(seg.Raw)-1] == '\r'
		return len(seg.Raw)
	}
	c.counts.forwarded++
	if seq == 0 { // delivered again to a client that lost it: stored when first delivered
		c.counts.again++
		return 0
	}
	if x.cfg.Recorder != nil {
		x.appendRecord(&c.rec, seg, seq, c)
		x.journal.crEnd = seg.Raw[len(seg.Raw)-1] == '\r'
	}
	return 0
}

// recordState is what the exchange keeps between chunks for the journal.
type recordState struct {
	recorded bool   // a record was sent for the stream
	lastID   []byte // last id among the events of the chunk's record (reused)
	// crEnd: the last segment was a recorded event ending in the CR of a
	// blank line, at the end of its chunk. lfOwed: the LF completing that
	// CRLF came in a later chunk and was forwarded but not yet journaled;
	// it opens the stream's next record, so the journal keeps the bytes as
	// received.
	crEnd, lfOwed bool
}

// ownerPrincipal is the principal a record names: the caller's when it owns
// the session (Session.Bind), else "". A caller who is not the owner still
// has its events recorded (they are the session's), but the journal keeps a
// record's principal as the session's owner, so it must not be this one.
func (x *exchange) ownerPrincipal() string {
	if x.owner {
		return x.principal
	}
	return ""
}

// appendRecord adds a delivered event to the chunk's journal record. It
// costs no copy for an event that lies in the chunk: the record references
// the chunk (cap-limited, so the journal's appends never write into it),
// and an event that does not follow the record's last one in the chunk (a
// dropped duplicate or a comment lies between) starts a record of its own.
// Only a block that began in an earlier chunk, which the parser returns from
// its reused carry buffer, is copied, as is a record that must begin with
// the LF of the last record's CRLF (recordState.lfOwed).
func (x *exchange) appendRecord(rec *session.Record, seg sse.Segment, seq uint64, c *chunk) {
	at := c.off - c.held // the event's offset in the chunk; < 0 when it began before
	if at < 0 || len(seg.Raw) == 0 || at+len(seg.Raw) > len(c.body) || &c.body[at] != &seg.Raw[0] {
		at = -1 // not the chunk's bytes: copied
	}
	if rec.Count > 0 && (at >= 0 && !(c.ref && c.refEnd == at) || rec.Stream != x.stream.ID()) {
		// Not the next bytes of the record, or the response now continues
		// another stream (session.Stream's anchor).
		x.finishRecord(rec, c)
	}
	if rec.Count == 0 {
		*rec = session.Record{
			Session: x.sessionID, Stream: x.stream.ID(), FirstSeq: seq, Principal: x.ownerPrincipal(),
			Base: c.delivery.SeqBase(),
		}
		x.journal.recorded = true
		c.ref = at >= 0 && !x.journal.lfOwed
		if c.ref {
			c.refStart, c.refEnd = at, at
		} else {
			rec.Data = make([]byte, 0, len(seg.Raw)+1)
			if x.journal.lfOwed {
				rec.Data = append(rec.Data, '\n')
				x.journal.lfOwed = false
			}
		}
	}
	if c.ref {
		c.refEnd += len(seg.Raw)
		rec.Data = c.body[c.refStart:c.refEnd:c.refEnd]
	} else {
		rec.Data = append(rec.Data, seg.Raw...)
	}
	rec.Count++
	rec.LastSeq = seq
	if seg.HasID && len(seg.ID) > 0 {
		if rec.FirstID == "" {
			rec.FirstID = string(seg.ID)
		}
		x.journal.lastID = append(x.journal.lastID[:0], seg.ID...)
	}
}

// finishRecord hands the chunk's record to the journal and empties it.
func (x *exchange) finishRecord(rec *session.Record, c *chunk) {
	if len(x.journal.lastID) > 0 {
		// Once per record, not per event; a record of one event shares
		// the string.
		if string(x.journal.lastID) == rec.FirstID {
			rec.LastID = rec.FirstID
		} else {
			rec.LastID = string(x.journal.lastID)
		}
		x.journal.lastID = x.journal.lastID[:0]
	}
	if rec.Count == 0 && x.journal.lfOwed {
		// The LF completing the last event's CRLF came alone: the journal
		// adds it to that event's batch if the batch is still open.
		*rec = session.Record{Session: x.sessionID, Stream: x.stream.ID(), Data: []byte{'\n'}}
		x.journal.lfOwed = false
	}
	if len(rec.Data) > 0 {
		x.record(*rec, c)
	}
	*rec = session.Record{}
	c.ref = false
}

// record hands rec to the journal, which never blocks: a record of events
// it cannot take is counted as a loss, and the stream marked, so that a
// replay that would lack them is refused. c is the chunk rec comes from,
// nil for one without events.
func (x *exchange) record(rec session.Record, c *chunk) {
	if x.cfg.Recorder.Append(rec) {
		return
	}
	x.m.journalDrops.Inc()
	if rec.Count == 0 {
		return
	}
	if c != nil && c.locked {
		c.delivery.Lost()
		return
	}
	d := x.stream.Begin()
	d.Lost()
	d.End()
}

// replayable reports whether a resuming client of this response would get
// from the journal what its last chunk carried: the response is tracked,
// the journal records and replays, and the client owns the session.
func (x *exchange) replayable() bool {
	return x.stream != nil && x.owner && !x.observe && !x.modes.fullDuplex() &&
		x.cfg.Recorder != nil && x.cfg.Replayer != nil && x.journal.recorded
}
