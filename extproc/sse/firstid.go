package sse

import "bytes"

// IDScan finds the first valid id field of one block while the block's
// bytes are still arriving: Find is called with the block so far (each
// call's block extending the last's, as Parser.Held returns it), and every
// byte is searched for a line ending once, except that a line that may
// still turn out to be an id field is read again when more of it arrives.
//
// A block's first id lets a gateway decide before the block ends that it
// is new to the client. The event's id is its last id field (§9.2), so a
// later id line can still name an id the client has; a caller that acts on
// the first id must say what it does then.
//
// The zero IDScan is ready for a block; Reset readies it for the next.
type IDScan struct {
	next   int  // offset in the block where the search resumes
	inLine bool // next is inside a line that is not an id field: skip to its end
}

// Reset starts the search over, for a new block.
func (s *IDScan) Reset() { *s = IDScan{} }

// Find returns the value of the first valid id field among the ended lines
// of block (a line ends at CR, LF or CRLF; an id whose value holds NUL is
// not valid), and true; or false when the lines so far hold none. block
// holds one block's bytes from its start and no blank line.
func (s *IDScan) Find(block []byte) (id []byte, found bool) {
	i := s.next
	if i > 0 && i < len(block) && block[i-1] == '\r' && block[i] == '\n' && !s.inLine {
		i++ // the LF of a CRLF whose CR ended the last line read
	}
	for i < len(block) {
		j := indexEOL(block[i:])
		if s.inLine {
			if j < 0 {
				i = len(block)
				break
			}
			s.inLine = false
			i = skipCRLF(block, i+j)
			continue
		}
		if j < 0 {
			// The line has not ended. Unless its name already rules out
			// id, read it again once it has.
			if !maybeIDLine(block[i:]) {
				s.inLine = true
				i = len(block)
			}
			break
		}
		if j == 0 {
			break // a blank line: the block has ended, which Find is not for
		}
		var seg Segment
		parseField(block[i:i+j], &seg)
		if seg.HasID {
			s.next = skipCRLF(block, i+j)
			return seg.ID, true
		}
		i = skipCRLF(block, i+j)
	}
	s.next = i
	return nil, false
}

// indexEOL returns the offset of the first CR or LF in b, or -1.
func indexEOL(b []byte) int {
	lf := bytes.IndexByte(b, '\n')
	if lf < 0 {
		lf = len(b)
	}
	if cr := bytes.IndexByte(b[:lf], '\r'); cr >= 0 {
		return cr
	}
	if lf == len(b) {
		return -1
	}
	return lf
}

// skipCRLF returns the offset after the line ending at b[eol], past the LF
// of a CRLF when that LF is in b.
func skipCRLF(b []byte, eol int) int {
	if b[eol] == '\r' && eol+1 < len(b) && b[eol+1] == '\n' {
		return eol + 2
	}
	return eol + 1
}

// maybeIDLine reports whether a line not yet ended can still be an id field
// line: its field name so far is "id", or a prefix of it.
func maybeIDLine(line []byte) bool {
	name := line
	if c := bytes.IndexByte(line, ':'); c >= 0 {
		name = line[:c]
		return string(name) == "id"
	}
	return len(name) <= 2 && string(name) == "id"[:len(name)]
}
