package extproc

import "github.com/ssetrack/ssetrack/extproc/sse"

// This file is the part of the body phase that lets an event cut across
// chunks go to the client before it ends (the latency contract in
// README.md): its fate is decided at its first id.

// heldState is what the exchange knows of the incomplete block the parser
// holds (sse.Parser.Held). It is allocated for a response's first block
// that spans chunks, and reused.
type heldState struct {
	sent int        // the block's bytes forwarded so far (forwardHeld)
	scan sse.IDScan // the search for the block's first id
	dup  bool       // its first id is one the client has: it waits for its end
}

// heldSent is how many bytes of the held block were forwarded.
func (x *exchange) heldSent() int {
	if x.held == nil {
		return 0
	}
	return x.held.sent
}

// endHeld forgets the held block, which the parser has returned or dropped,
// and returns how many of its bytes were forwarded.
func (x *exchange) endHeld() (sent int) {
	if x.held == nil {
		return 0
	}
	sent = x.held.sent
	*x.held = heldState{}
	return sent
}

// abandonHeld ends a held block that will never end as an event (the body
// ended inside it, or the stream was cut): one whose first bytes went out
// is counted as cut.
func (x *exchange) abandonHeld() {
	if x.endHeld() > 0 {
		x.m.errors.WithLabelValues("partial_event_cut").Inc()
	}
}

// forwardHeld forwards the bytes so far of the incomplete block the parser
// holds as soon as the block's fate is decided, so that a large event
// streams through instead of waiting for its end, and its chunks go on
// unchanged. The fate is decided when nothing is ever dropped (no session
// tracked) or when the block's first id field names an event the client
// does not have (session.Delivery.Dup). The parser keeps the block and
// returns it whole when it ends; only its bytes not yet sent go out then,
// and decide records the event then, as it records one that arrives whole
// (a block cut short is never recorded: the client discards it).
//
// Nothing is recorded before the block ends, so another stream of the
// session (a client that resumed while this response still runs) is never
// kept from the event. Should that stream deliver it first, this one
// forwards the rest all the same, and a client on both gets it twice, as it
// would without ssetrack; it is stored once.
func (x *exchange) forwardHeld(c *chunk) {
	block := x.parser.Held()
	if block == nil && x.stream == nil {
		// Bytes of a BOM split across chunks, or of a first block that
		// begins like one: without a session nothing is dropped, so they
		// go on whichever they turn out to be. With one they wait: a
		// block's fate waits for its first id.
		block = x.parser.HeldBOM()
	}
	if len(block) <= x.heldSent() || x.observe {
		return
	}
	if x.held == nil {
		x.held = &heldState{}
	}
	if x.held.sent == 0 && !x.fateDecided(block, c) {
		return
	}
	if x.replay != nil {
		x.sendReplay()
	}
	x.rw.keep(block[x.held.sent:])
	x.held.sent = len(block)
}

// fateDecided reports whether the held block, not yet ended, goes to the
// client whatever its end holds (see forwardHeld).
func (x *exchange) fateDecided(block []byte, c *chunk) bool {
	if x.stream == nil {
		return true
	}
	h := x.held
	if h.dup {
		return false
	}
	id, ok := h.scan.Find(block)
	if !ok {
		return false // no id yet: a later line may name one the client has
	}
	c.begin(x.stream)
	if c.delivery.Dup(id) {
		h.dup = true
		return false
	}
	return true
}
