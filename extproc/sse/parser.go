// Package sse parses Server-Sent-Events streams as the WHATWG HTML standard
// (§9.2 "Server-sent events") defines them, push-style: the caller feeds
// chunks as they arrive and takes back segments that partition the input.
//
// It owns the SSE syntax only: no sessions, no ids' meaning, no I/O. It
// imports only the standard library, and every other package that reads SSE
// (the processor, the journal's reader, the demo) uses it. A Parser belongs
// to one goroutine; it has no locks.
//
// # What a Parser holds
//
// A gateway must not delay a byte whose fate is known, so after each chunk
// the Parser holds back only bytes that may still belong to an event whose
// fate (forward or drop) is undecided:
//
//   - an incomplete block: from its first field line up to, not including,
//     the blank line that will end it (a partial first line counts when it
//     does not start with ':');
//   - at the start of the stream only, up to two bytes of a possible UTF-8
//     byte order mark.
//
// Everything else is returned from the chunk it arrived in: complete
// blocks, comment lines and blank lines between blocks (heartbeats, even a
// comment line not yet ended), and the LF that completes a CRLF. A CR at the
// end of a chunk ends its line at once; if the next chunk starts with LF,
// that LF opens a KindComment segment (alone, or with the comment lines that
// follow it in that chunk).
//
// # Segment boundaries
//
// Boundaries depend on the bytes, except where holding nothing forces a
// cut: the LF of a CRLF that arrives after its CR (see above), a comment
// line split across chunks, and the parts of a KindOversize block. Tests
// compare segments with those pieces merged (a lone LF joined to the
// segment before it, consecutive KindComment segments joined, the parts of
// one oversize block joined).
//
// Retry is -1 in segments of every kind, so that Retry >= 0 alone means a
// valid retry field.
package sse

// DefaultMaxEventSize is the block size limit a zero Parser uses.
const DefaultMaxEventSize = 1 << 20

// Kind says what a Segment is.
type Kind uint8

const (
	// KindBlock is a complete block: from its first field line up to and
	// including the blank line that ends it (with the LF of a final CRLF
	// when that LF is in the same chunk), or a blank line on its own. Its
	// fields are parsed; comment lines inside it are part of it.
	KindBlock Kind = iota + 1
	// KindBOM is the one UTF-8 byte order mark at the start of the stream.
	KindBOM
	// KindOversize is part of a block larger than the size limit. Its bytes
	// are passed through unparsed; the last part of such a block has
	// Segment.End set.
	KindOversize
	// KindComment is bytes between blocks that no event can own: comment
	// lines (§9.2: a line starting with ':') before a block's first field,
	// a comment line's bytes so far when a chunk ends inside it, and the LF
	// completing a CRLF whose CR ended the previous segment. A heartbeat
	// such as ": ping\n" is one.
	KindComment
)

// Segment is a run of the input. The segments a Parser returns, plus what
// Flush returns at the end, concatenate to exactly the bytes fed in.
//
// Raw and the field slices alias the input chunk or the parser's carry
// buffer: they are valid until the next call to Feed, Next or Flush.
type Segment struct {
	Kind Kind
	// Raw is the segment's bytes exactly as received.
	Raw []byte

	// The fields below are set for KindBlock only.

	// ID is the value of the last valid id field in the block (an id field
	// whose value contains NUL is ignored). Valid only when HasID.
	ID []byte
	// FirstID is the value of the first valid id field, the same as ID
	// unless the block has several. Valid only when HasID.
	FirstID []byte
	// HasID reports whether the block had a valid id field. An empty ID
	// with HasID set resets the stream's last event id.
	HasID bool
	// Event is the value of the last event field, nil if none.
	Event []byte
	// HasData reports whether the block had at least one data field, that
	// is, whether a browser would dispatch an event for it.
	HasData bool
	// Retry is the reconnection time in milliseconds from the last valid
	// retry field (ASCII digits only), or -1 if none.
	Retry int64

	// End is set on the last KindOversize segment of a block.
	End bool
}

// Parser splits an SSE byte stream into segments. Its zero value is ready to
// use with DefaultMaxEventSize.
type Parser struct {
	// MaxEventSize bounds the bytes of one block; 0 means
	// DefaultMaxEventSize. A larger block is returned as KindOversize
	// segments as its bytes arrive, so the stream is never held or broken.
	MaxEventSize int

	// MidStream marks input that does not start a stream, such as the
	// events of a stored batch: a U+FEFF at its start is then a byte of a
	// field line, where at a stream's start it is the byte order mark the
	// parser strips (WHATWG HTML §9.2.6 strips one only there).
	MidStream bool

	chunk []byte    // the chunk being parsed; nil once Next reported false
	pos   int       // first byte of chunk not yet returned or held
	eol   eolFinder // next CR and LF in chunk, so no byte is searched twice

	// carry holds a block that began in an earlier chunk, from its first
	// byte. It never holds more than the size limit.
	carry []byte

	// Line state at the end of the bytes consumed so far: the carry, the
	// oversize bytes returned, or the last complete segment.
	midLine  bool // the current line has bytes: a line ending ends it, not the block
	skipLF   bool // the last byte was a CR: an LF right after it completes that CRLF
	comment  bool // inside a comment line between blocks: its bytes pass through
	oversize bool // inside a block over the limit: bytes pass through unparsed

	bomDone bool    // the stream-start BOM is decided (seen, or ruled out)
	bomN    int     // bytes of a possible BOM held in bom
	bom     [3]byte // a BOM split across chunks, held until it is decided

	spill []byte // Feed's copy of an unread chunk rest (API misuse only)
}

// utf8BOM is the byte order mark stripped at the start of a stream.
const utf8BOM = "\xef\xbb\xbf"

// keepCarry is the carry capacity kept across streams; a larger buffer,
// left by a big event, is released when the stream ends.
const keepCarry = 64 << 10

// limit is the effective size limit. A negative MaxEventSize, like 0,
// means DefaultMaxEventSize.
func (p *Parser) limit() int {
	if p.MaxEventSize <= 0 {
		return DefaultMaxEventSize
	}
	return p.MaxEventSize
}

// Feed sets the next chunk of input. Call Next until it reports false before
// calling Feed again. The parser does not keep chunk after Next reports false:
// an incomplete trailing block is copied into the parser's carry buffer.
//
// Calling Feed before Next reported false is a misuse, but loses nothing: the
// unread rest of the previous chunk is copied and parsed before chunk.
func (p *Parser) Feed(chunk []byte) {
	if p.pos < len(p.chunk) {
		// Copy within spill is safe: append moves bytes with memmove and
		// the destination starts at or before the source.
		p.spill = append(p.spill[:0], p.chunk[p.pos:]...)
		p.spill = append(p.spill, chunk...)
		chunk = p.spill
	}
	p.chunk = chunk
	p.pos = 0
	p.eol.reset()
}

// release forgets the chunk once it is consumed, as Feed promises.
func (p *Parser) release() {
	p.chunk = nil
	p.pos = 0
}

// Next returns the next complete segment of the input fed so far, or false
// when the rest of the input is an incomplete block, now held by the parser.
func (p *Parser) Next() (Segment, bool) {
	if !p.bomDone {
		if p.MidStream {
			p.bomDone = true
		} else if seg, ok, handled := p.nextBOM(); handled {
			return seg, ok
		}
	}
	if p.oversize {
		return p.nextOversize()
	}
	if len(p.carry) > 0 {
		return p.nextCarried()
	}
	// Most segments are blocks that start right here: skip the look for
	// bytes between blocks without a call.
	if p.skipLF || p.comment || p.pos < len(p.chunk) && p.chunk[p.pos] == ':' {
		if seg, ok := p.nextComment(); ok {
			return seg, true
		}
	}
	return p.nextBlock()
}

// nextComment returns the bytes at the current position that lie between
// blocks: the LF completing a CRLF, comment lines, and a comment line's
// bytes so far. It reports false, consuming nothing, when a field line or a
// blank line (a block) or the end of the chunk comes first.
func (p *Parser) nextComment() (Segment, bool) {
	buf, start := p.chunk, p.pos
	i := start
	for i < len(buf) {
		if p.skipLF {
			p.skipLF = false
			if buf[i] == '\n' {
				i++
				continue
			}
		}
		if !p.comment {
			if buf[i] != ':' {
				break
			}
			p.comment = true
		}
		j := p.eol.next(buf, i)
		if j == len(buf) {
			i = j // the comment line goes on in the next chunk
			break
		}
		p.comment = false
		i = j + 1
		p.skipLF = buf[j] == '\r'
	}
	if i == start {
		return Segment{}, false
	}
	p.pos = i
	return Segment{Kind: KindComment, Raw: buf[start:i:i], Retry: -1}, true
}

// takeLF extends a segment that ends at buf[end-1] over the LF completing
// its final CR when that LF is in buf, so the LF is not left for a segment
// of its own. skip reports whether the segment ended in a CR; skipOut
// whether it still does.
func takeLF(buf []byte, end int, skip bool) (endOut int, skipOut bool) {
	if skip && end < len(buf) && buf[end] == '\n' {
		return end + 1, false
	}
	return end, skip
}

// nextBOM decides whether the stream starts with a BOM, holding up to two
// bytes until it can tell. It reports handled=false when parsing goes on
// with the chunk; bytes held that turn out not to be a BOM become the start
// of the first block.
func (p *Parser) nextBOM() (seg Segment, ok, handled bool) {
	rest := p.chunk[p.pos:]
	need := len(utf8BOM) - p.bomN
	n := min(need, len(rest))
	for i := range n {
		if rest[i] != utf8BOM[p.bomN+i] {
			p.bomDone = true
			if p.bomN > 0 {
				p.carry = append(p.carry[:0], p.bom[:p.bomN]...)
				p.bomN = 0
				p.midLine, p.skipLF = true, false
			}
			return Segment{}, false, false
		}
	}
	if n < need {
		p.bomN += copy(p.bom[p.bomN:], rest)
		p.release()
		return Segment{}, false, true
	}
	p.bomDone = true
	raw := rest[:n:n]
	if p.bomN > 0 {
		copy(p.bom[p.bomN:], rest[:n])
		raw = p.bom[:]
		p.bomN = 0
	}
	p.pos += n
	return Segment{Kind: KindBOM, Raw: raw, Retry: -1}, true, true
}

// nextBlock parses a block that starts in the current chunk. This is the
// hot path: a block that ends in the chunk is returned without copying.
func (p *Parser) nextBlock() (Segment, bool) {
	buf, start := p.chunk, p.pos
	if start >= len(buf) {
		p.release()
		return Segment{}, false
	}
	seg := Segment{Kind: KindBlock, Retry: -1}
	end, st, midLine, skip := parseBlock(buf, start, p.limit(), &p.eol, &seg)
	switch st {
	case blockDone:
		end, skip = takeLF(buf, end, skip)
		seg.Raw = buf[start:end:end]
		p.pos = end
		p.skipLF = skip
		return seg, true
	case blockPartial:
		p.carry = append(p.carry[:0], buf[start:]...)
		p.midLine, p.skipLF = midLine, skip
		p.release()
		return Segment{}, false
	default: // blockTooLarge: pass the block through from its start.
		p.oversize = true
		p.midLine = false
		return p.nextOversize()
	}
}

// nextCarried continues the block held in the carry. Only the new bytes are
// scanned for the block's end; the fields are parsed once, when the block is
// complete.
func (p *Parser) nextCarried() (Segment, bool) {
	buf, start := p.chunk, p.pos
	end, found, midLine, skip := scanEnd(buf, start, p.midLine, p.skipLF, &p.eol)
	if len(p.carry)+end-start > p.limit() {
		// Return what is held now; the rest of the block follows as it
		// arrives. The line state stays that of the carry's end.
		seg := Segment{Kind: KindOversize, Raw: p.carry[:len(p.carry):len(p.carry)], Retry: -1}
		p.carry = p.carry[:0]
		p.oversize = true
		return seg, true
	}
	if !found {
		p.carry = append(p.carry, buf[start:]...)
		p.midLine, p.skipLF = midLine, skip
		p.release()
		return Segment{}, false
	}
	blockEnd := len(p.carry) + end - start // the fields end at the blank line
	end, skip = takeLF(buf, end, skip)
	p.carry = append(p.carry, buf[start:end]...)
	p.pos = end
	raw := p.carry[:len(p.carry):len(p.carry)]
	p.carry = p.carry[:0] // raw stays valid until the next call, as documented
	seg := Segment{Kind: KindBlock, Raw: raw, Retry: -1}
	var f eolFinder
	f.reset()
	parseBlock(raw[:blockEnd], 0, blockEnd, &f, &seg)
	p.midLine, p.skipLF = false, skip
	return seg, true
}

// nextOversize passes through the bytes of a block over the limit, up to and
// including its blank line.
func (p *Parser) nextOversize() (Segment, bool) {
	buf, start := p.chunk, p.pos
	end, found, midLine, skip := scanEnd(buf, start, p.midLine, p.skipLF, &p.eol)
	if end == start { // only when the chunk is consumed
		p.release()
		return Segment{}, false
	}
	if found {
		end, skip = takeLF(buf, end, skip)
		p.oversize = false
	}
	p.pos = end
	p.midLine, p.skipLF = midLine, skip
	return Segment{Kind: KindOversize, Raw: buf[start:end:end], Retry: -1, End: found}, true
}

// Held returns the bytes so far of the incomplete block the parser holds,
// from its first byte, or nil when it holds none (or only bytes of a
// possible BOM). They are valid until the next call to Feed, Next or Flush.
// The parser keeps them: a caller that forwards them early gets the block
// whole again when it ends (see IDScan).
func (p *Parser) Held() []byte {
	if !p.bomDone || len(p.carry) == 0 {
		return nil
	}
	return p.carry[:len(p.carry):len(p.carry)]
}

// HeldBOM returns the bytes of a possible BOM the parser holds at the
// stream's start, before it can tell (Pending counts them), or nil. They
// are valid until the next call to Feed, Next or Flush; the parser keeps
// them, and returns them again in the BOM's segment or the first block.
func (p *Parser) HeldBOM() []byte {
	if p.bomDone {
		return nil
	}
	return p.bom[:p.bomN:p.bomN]
}

// Pending reports how many bytes the parser holds (an incomplete block).
func (p *Parser) Pending() int {
	if !p.bomDone {
		return p.bomN
	}
	return len(p.carry)
}

// Flush ends the stream: it returns the held bytes (an incomplete block, which
// a browser would discard, or a partial BOM) for forwarding unchanged, and
// resets the parser for a new stream.
//
// The bytes returned are valid until the next call to Feed, Next or Flush.
// If Next has not reported false yet, the unread rest of the chunk is
// returned too, after the held bytes, so no byte is ever lost.
func (p *Parser) Flush() []byte {
	var rest []byte
	if p.pos < len(p.chunk) {
		rest = p.chunk[p.pos:]
	}
	var out []byte
	switch {
	case p.bomN > 0:
		out = append(p.carry[:0], p.bom[:p.bomN]...)
		out = append(out, rest...)
	case len(p.carry) > 0:
		out = append(p.carry, rest...)
	case len(rest) > 0:
		out = rest
	}
	p.Reset()
	return out
}

// Reset prepares the parser for a new stream, dropping anything held.
func (p *Parser) Reset() {
	carry, spill := p.carry[:0], p.spill[:0]
	if cap(carry) > keepCarry {
		carry = nil
	}
	if cap(spill) > keepCarry {
		spill = nil
	}
	// bom is kept: a KindBOM segment's Raw may point into it.
	*p = Parser{MaxEventSize: p.MaxEventSize, carry: carry, spill: spill, bom: p.bom}
}
