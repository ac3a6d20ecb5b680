package sse

// IDScan finds the first valid id field of one block while the block's
// bytes are still arriving: Find is called with the block so far, each
// call's block extending the last's (as Parser.Held returns it). Every
// byte is searched once, and each line is parsed once, when it has ended.
//
// A block's first id lets a gateway decide before the block ends whether
// the event is new to the client. The event's id is its last id field
// (§9.2), which a later line may still change: see Segment.FirstID.
//
// The zero IDScan is ready for a block; Reset readies it for the next.
type IDScan struct {
	start    int  // offset of the first line not yet ended
	searched int  // bytes before it hold no line ending of that line
	afterCR  bool // the last line read ended in a CR at the block's end
}

// Reset starts the search over, for a new block.
func (s *IDScan) Reset() { *s = IDScan{} }

// Find returns the value of the first valid id field among the ended lines
// of block (a line ends at CR, LF or CRLF; an id whose value holds NUL is
// not valid), and true; or false when the lines so far hold none. block
// holds one block's bytes from its start, up to but not including the
// blank line that ends it.
func (s *IDScan) Find(block []byte) (id []byte, found bool) {
	i := s.start
	if s.afterCR && i < len(block) {
		s.afterCR = false
		if block[i] == '\n' {
			i++ // the LF of a CRLF whose CR ended the last line read
			s.searched = i
		}
	}
	var f eolFinder
	f.reset()
	for i < len(block) {
		j := f.next(block, max(i, s.searched))
		if j == len(block) {
			s.searched = len(block) // the line has not ended
			break
		}
		if j == i {
			break // a blank line: the block has ended, which Find is not for
		}
		var seg Segment
		parseField(block[i:j], &seg)
		i = j + 1
		if block[j] == '\r' {
			if i == len(block) {
				s.afterCR = true // the next byte may be its LF
			} else if block[i] == '\n' {
				i++
			}
		}
		s.searched = i
		if seg.HasID {
			s.start = i
			return seg.ID, true
		}
	}
	s.start = i
	return nil, false
}
