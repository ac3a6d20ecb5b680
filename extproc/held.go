package extproc

import "github.com/ssetrack/ssetrack/extproc/sse"

// This file is the part of the body phase that lets an event cut across
// chunks go to the client before it ends (the latency contract in
// README.md): its fate is decided at its first id.

// heldState is what the exchange knows of the incomplete block the parser
// holds (sse.Parser.Held). It is allocated for a response's first block
// that spans chunks, and reused.
type heldState struct {
	sent    int        // the block's bytes forwarded so far (forwardHeld)
	scan    sse.IDScan // the search for the block's first id
	dup     bool       // its first id is one the client has: it waits for its end
	claimed bool       // its first id is claimed (session.Delivery.Claim)
	again   bool       // ... as an event the resuming client lost
	first   []byte     // the claimed id (the buffer is reused)
}

// active reports whether h says anything of the held block.
func (h *heldState) active() bool { return h.sent > 0 || h.dup || h.scan != (sse.IDScan{}) }

// reset readies h for the next block, keeping first's buffer.
func (h *heldState) reset() { *h = heldState{first: h.first[:0]} }

// heldSent is how many bytes of the held block were forwarded.
func (x *exchange) heldSent() int {
	if x.held == nil {
		return 0
	}
	return x.held.sent
}

// forwardHeld forwards the bytes so far of the incomplete block the parser
// holds as soon as the block's fate is decided, so that a large event
// streams through instead of waiting for its end, and its chunks go on
// unchanged. The fate is decided when nothing is ever dropped (no session
// tracked) or when the block's first id field names an event the client
// does not have: the event is then claimed for the client
// (session.Delivery.Claim) and goes on whatever follows. The parser keeps
// the block and returns it whole when it ends, for the journal; only its
// bytes not yet sent go out then. decide gives a block that arrives whole
// the same fate, so the client's bytes never depend on the chunk cuts.
func (x *exchange) forwardHeld(c *chunk) {
	block := x.parser.Held()
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
// client whatever its end holds (see forwardHeld), claiming its first id.
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
	if !c.locked {
		c.delivery, c.locked = x.stream.Begin(), true
	}
	dup, again := c.delivery.Claim(id)
	if dup {
		h.dup = true
		return false
	}
	h.claimed, h.again = true, again
	h.first = append(h.first[:0], id...)
	return true
}

// unclaim undoes the claim on a held block that will not end as an event
// (cut short, or over the size limit): the client never gets it whole.
func (x *exchange) unclaim(c *chunk, h *heldState) {
	if !h.claimed || x.stream == nil {
		return
	}
	if !c.locked {
		c.delivery, c.locked = x.stream.Begin(), true
	}
	c.delivery.Unclaim(h.first)
	h.claimed = false
}

// abandonHeld forgets the held block at the end of the body, undoing its
// claim.
func (x *exchange) abandonHeld(c *chunk) {
	if x.held == nil {
		return
	}
	x.unclaim(c, x.held)
	x.held.reset()
}
