package sse

import (
	"bytes"
	"math"
)

// eolFinder finds line endings with whole-buffer searches (bytes.IndexByte),
// remembering the next CR and the next LF it has found. Each search starts
// after the previous hit, so every byte is examined at most once per kind,
// whatever mix of CR, LF and CRLF the stream uses, and a stream without CRs
// costs one search for CR per buffer, not one per line.
type eolFinder struct {
	cr, lf int // positions of the next CR and LF, len(buf) if none; -1 unknown
}

// reset forgets the positions; call it whenever the buffer changes.
func (f *eolFinder) reset() { f.cr, f.lf = -1, -1 }

// next returns the position of the first CR or LF in buf at or after i, or
// len(buf) if there is none. It is small enough to be inlined; the searches
// are in find.
func (f *eolFinder) next(buf []byte, i int) int {
	if f.lf < i || f.cr < i {
		f.find(buf, i)
	}
	return min(f.cr, f.lf)
}

// find searches again for whichever of the next CR and LF is behind i.
func (f *eolFinder) find(buf []byte, i int) {
	if f.lf < i {
		f.lf = len(buf)
		if j := bytes.IndexByte(buf[i:], '\n'); j >= 0 {
			f.lf = i + j
		}
	}
	if f.cr < i {
		f.cr = len(buf)
		if j := bytes.IndexByte(buf[i:], '\r'); j >= 0 {
			f.cr = i + j
		}
	}
}

// blockStatus is how parseBlock stopped.
type blockStatus uint8

const (
	blockDone     blockStatus = iota // the blank line ending the block was found
	blockPartial                     // buf ended inside the block
	blockTooLarge                    // the block is over the limit
)

// parseBlock parses the block that starts at buf[start] (a field line or a
// blank line) into seg's fields, line by line, and returns the end of the
// block (after its blank line's CR or LF; skipOut reports a CR, whose LF the
// caller takes with takeLF). When buf ends inside the block it reports blockPartial with the
// line state at the end of buf: midLine if a line has begun, skipOut if the
// last byte was a CR. It gives up with blockTooLarge as soon as the block is
// known to be over limit bytes.
func parseBlock(buf []byte, start int, limit int, f *eolFinder, seg *Segment) (end int, st blockStatus, midLine, skipOut bool) {
	i := start
	for i < len(buf) {
		// At the start of a line: a line ending here is the blank line.
		switch buf[i] {
		case '\n', '\r':
			end = i + 1
			if end-start > limit {
				return end, blockTooLarge, false, false
			}
			// A CR ends the block at once; the caller takes an LF after it
			// if the chunk has one.
			return end, blockDone, false, buf[i] == '\r'
		}
		j := f.next(buf, i)
		if j == len(buf) {
			if len(buf)-start > limit {
				return len(buf), blockTooLarge, false, false
			}
			return len(buf), blockPartial, true, false
		}
		parseField(buf[i:j], seg)
		i = j + 1
		if buf[j] == '\r' {
			if i == len(buf) {
				// The CR may be half of a CRLF: the next byte decides.
				if i-start > limit {
					return i, blockTooLarge, false, false
				}
				return i, blockPartial, false, true
			}
			if buf[i] == '\n' {
				i++
			}
		}
		if i-start > limit {
			return i, blockTooLarge, false, false
		}
	}
	if len(buf)-start > limit {
		return len(buf), blockTooLarge, false, false
	}
	return len(buf), blockPartial, false, false
}

// scanEnd finds the blank line that ends a block, scanning buf from i with
// the line state at i, without parsing fields. It returns the end of the
// block (after the blank line's CR or LF) and found, or len(buf) and the
// line state there.
func scanEnd(buf []byte, i int, midLine, skip bool, f *eolFinder) (end int, found, midLineOut, skipOut bool) {
	for i < len(buf) {
		if skip {
			skip = false
			if buf[i] == '\n' {
				i++
				continue
			}
		}
		if !midLine {
			switch buf[i] {
			case '\n':
				return i + 1, true, false, false
			case '\r':
				return i + 1, true, false, true
			}
		}
		j := f.next(buf, i)
		if j == len(buf) {
			return len(buf), false, true, false
		}
		i = j + 1
		midLine = false
		skip = buf[j] == '\r'
	}
	return len(buf), false, midLine, skip
}

// parseField applies one non-blank line to seg, as §9.2 "process the
// field" does, except that data values are not collected: a data line only
// sets HasData.
func parseField(line []byte, seg *Segment) {
	if len(line) > 4 && line[4] == ':' && string(line[:4]) == "data" {
		seg.HasData = true // the most common line, without a search for ':'
		return
	}
	if line[0] == ':' {
		return // comment
	}
	name, value := line, line[len(line):]
	if c := bytes.IndexByte(line, ':'); c >= 0 {
		name, value = line[:c], line[c+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	value = value[:len(value):len(value)] // appending must not clobber the input
	switch string(name) {
	case "data":
		seg.HasData = true
	case "event":
		seg.Event = value
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			if !seg.HasID {
				seg.FirstID = value
			}
			seg.ID = value
			seg.HasID = true
		}
	case "retry":
		if n, ok := parseRetry(value); ok {
			seg.Retry = n
		}
	}
}

// parseRetry parses a retry value: one or more ASCII digits. A value that
// overflows int64 is invalid, like any other non-digit value.
func parseRetry(v []byte) (int64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if n > (math.MaxInt64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}
