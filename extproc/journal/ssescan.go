package journal

// This file holds a small SSE block scanner for payloads read back from
// JetStream. It is deliberately independent of package sse: a stored
// payload is a sequence of complete events, so only block boundaries and
// id fields matter here.

// sseEvent is one block of a stored payload.
type sseEvent struct {
	// Raw is the block's bytes including its terminating blank line.
	Raw []byte
	// End is the offset just past Raw in the scanned payload.
	End int
	// ID is the last valid id field's value; valid when HasID.
	ID    string
	HasID bool
	// HasData reports whether the block had a data field.
	HasData bool
}

// scanEvents calls fn for each complete, non-empty block of p in order,
// following the WHATWG line rules (CRLF, LF or lone CR end a line; a blank
// line ends a block; ':' starts a comment; one space after the colon is
// stripped; an id containing NUL is ignored). A leading BOM is skipped and
// an unterminated trailing block is ignored. fn returns false to stop.
func scanEvents(p []byte, fn func(ev sseEvent) bool) {
	i := 0
	if len(p) >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF {
		i = 3
	}
	start := i
	var ev sseEvent
	lines := 0
	for i < len(p) {
		// Find the end of the line.
		e := i
		for e < len(p) && p[e] != '\n' && p[e] != '\r' {
			e++
		}
		if e == len(p) {
			return // unterminated line: incomplete block
		}
		next := e + 1
		if p[e] == '\r' && next < len(p) && p[next] == '\n' {
			next++
		}
		line := p[i:e]
		i = next
		if len(line) == 0 {
			if lines > 0 {
				ev.Raw, ev.End = p[start:next], next
				if !fn(ev) {
					return
				}
			}
			ev = sseEvent{}
			lines = 0
			start = next
			continue
		}
		lines++
		if line[0] == ':' {
			continue
		}
		name, value := line, []byte(nil)
		for k, c := range line {
			if c == ':' {
				name, value = line[:k], line[k+1:]
				if len(value) > 0 && value[0] == ' ' {
					value = value[1:]
				}
				break
			}
		}
		switch string(name) {
		case "id":
			if !containsNUL(value) {
				ev.ID, ev.HasID = string(value), true
			}
		case "data":
			ev.HasData = true
		}
	}
}

func containsNUL(b []byte) bool {
	for _, c := range b {
		if c == 0 {
			return true
		}
	}
	return false
}

// batchEvents splits a batch into events and numbers them. Event k gets
// FirstSeq+k when the payload holds exactly Count blocks; otherwise (the
// writer counted events differently) every event gets LastSeq, which keeps
// sequence order and never claims a number past the batch.
func batchEvents(b *Batch, fn func(ev sseEvent, seq uint64) bool) {
	n := 0
	scanEvents(b.Data, func(sseEvent) bool { n++; return true })
	exact := n == b.Count
	k := uint64(0)
	scanEvents(b.Data, func(ev sseEvent) bool {
		seq := b.LastSeq
		if exact {
			seq = b.FirstSeq + k
		}
		k++
		return fn(ev, seq)
	})
}
