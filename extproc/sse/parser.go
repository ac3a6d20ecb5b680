// Package sse parses Server-Sent-Events streams as the WHATWG HTML standard
// (§9.2 "Server-sent events") defines them, push-style: the caller feeds
// chunks as they arrive and takes back segments that partition the input.
//
// The package imports only the standard library. A Parser belongs to one
// goroutine; it has no locks.
//
// Segment boundaries depend on the bytes only, never on where chunks were
// split. Hence a block whose blank line ends in a CR is complete at that CR:
// if an LF follows, it completes the CRLF but is the first byte of the next
// segment (in a CRLF stream every block but the first starts with "\n", and
// the stream's final "\n" is what Flush returns). Only KindOversize segments
// depend on the chunking: their bytes are returned as they arrive, so compare
// them per block, concatenated.
//
// Retry is -1 in segments of every kind, so that Retry >= 0 alone means a
// valid retry field.
package sse

import "errors"

// DefaultMaxEventSize is the block size limit a zero Parser uses.
const DefaultMaxEventSize = 1 << 20

// ErrEventTooLarge marks segments of a block that exceeded the size limit.
// Such blocks are passed through byte for byte and not parsed.
var ErrEventTooLarge = errors.New("sse: event too large")

// Kind says what a Segment is.
type Kind uint8

const (
	// KindBlock is a complete block: every line up to and including the
	// blank line that ends it. Its fields are parsed.
	KindBlock Kind = iota + 1
	// KindBOM is the one UTF-8 byte order mark at the start of the stream.
	KindBOM
	// KindOversize is part of a block larger than the size limit. Its bytes
	// are passed through unparsed; the last part of such a block has
	// Segment.End set.
	KindOversize
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

	chunk []byte    // the chunk being parsed; nil once Next reported false
	pos   int       // first byte of chunk not yet returned or held
	eol   eolFinder // next CR and LF in chunk, so no byte is searched twice

	// carry holds a block that began in an earlier chunk, from its first
	// byte. It never holds more than the size limit.
	carry []byte

	// Line state at the end of the bytes consumed so far: the carry, the
	// oversize bytes returned, or the last complete segment.
	midLine   bool // the current line has bytes: a line ending ends it, not the block
	skipLF    bool // the last byte was a CR: an LF right after it completes that CRLF
	blockSkip bool // skipLF as it was when the carried block began
	oversize  bool // inside a block over the limit: bytes pass through unparsed

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
		if seg, ok, handled := p.nextBOM(); handled {
			return seg, ok
		}
	}
	if p.oversize {
		return p.nextOversize()
	}
	if len(p.carry) > 0 {
		return p.nextCarried()
	}
	return p.nextBlock()
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
				p.midLine, p.skipLF, p.blockSkip = true, false, false
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
	end, st, midLine, skip := parseBlock(buf, start, p.skipLF, p.limit(), &p.eol, &seg)
	switch st {
	case blockDone:
		seg.Raw = buf[start:end:end]
		p.pos = end
		p.skipLF = skip
		return seg, true
	case blockPartial:
		p.carry = append(p.carry[:0], buf[start:]...)
		p.blockSkip = p.skipLF
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
	p.carry = append(p.carry, buf[start:end]...)
	p.pos = end
	raw := p.carry[:len(p.carry):len(p.carry)]
	p.carry = p.carry[:0] // raw stays valid until the next call, as documented
	seg := Segment{Kind: KindBlock, Raw: raw, Retry: -1}
	var f eolFinder
	f.reset()
	parseBlock(raw, 0, p.blockSkip, len(raw), &f, &seg)
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
	p.pos = end
	p.midLine, p.skipLF = midLine, skip
	if found {
		p.oversize = false
	}
	return Segment{Kind: KindOversize, Raw: buf[start:end:end], Retry: -1, End: found}, true
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
