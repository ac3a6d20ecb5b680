package sse

import (
	"bytes"
	"fmt"
	"strings"
)

// seg is a Segment copied out of the parser, so it outlives the next call.
type seg struct {
	Kind    Kind
	Raw     string
	ID      string
	HasID   bool
	Event   string
	EventOK bool // Event != nil
	HasData bool
	Retry   int64
	End     bool
}

func copySeg(s Segment) seg {
	return seg{
		Kind: s.Kind, Raw: string(s.Raw), ID: string(s.ID), HasID: s.HasID,
		Event: string(s.Event), EventOK: s.Event != nil, HasData: s.HasData,
		Retry: s.Retry, End: s.End,
	}
}

func (s seg) String() string {
	var b strings.Builder
	switch s.Kind {
	case KindBlock:
		b.WriteString("block")
	case KindBOM:
		b.WriteString("bom")
	case KindOversize:
		b.WriteString("oversize")
	case KindComment:
		b.WriteString("comment")
	default:
		fmt.Fprintf(&b, "kind(%d)", s.Kind)
	}
	fmt.Fprintf(&b, " %q", s.Raw)
	if s.Kind == KindOversize {
		fmt.Fprintf(&b, " end=%t", s.End)
	}
	if s.Kind != KindBlock {
		return b.String()
	}
	if s.HasID {
		fmt.Fprintf(&b, " id=%q", s.ID)
	} else {
		b.WriteString(" id=none")
	}
	if s.EventOK {
		fmt.Fprintf(&b, " event=%q", s.Event)
	} else {
		b.WriteString(" event=none")
	}
	fmt.Fprintf(&b, " data=%t retry=%d", s.HasData, s.Retry)
	return b.String()
}

// result is what a whole run of a Parser produced.
type result struct {
	Segs  []seg
	Flush string
}

func (r result) String() string {
	var b strings.Builder
	for _, s := range r.Segs {
		b.WriteString(s.String())
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "flush %q\n", r.Flush)
	return b.String()
}

// joined is the concatenation of every segment's Raw and the flush.
func (r result) joined() string {
	var b strings.Builder
	for _, s := range r.Segs {
		b.WriteString(s.Raw)
	}
	b.WriteString(r.Flush)
	return b.String()
}

// merged returns r with the cuts that depend on chunking undone (see the
// package doc): the parts of each oversize block joined, consecutive
// KindComment segments joined, and a KindComment segment's leading LF that
// completes a CRLF given back to the segment before it.
func (r result) merged() result {
	out := result{Flush: r.Flush}
	open := false // the last segment is an oversize block's part, not its end
	for _, s := range r.Segs {
		var last *seg
		if n := len(out.Segs); n > 0 {
			last = &out.Segs[n-1]
		}
		if s.Kind == KindComment && last != nil && strings.HasSuffix(last.Raw, "\r") && s.Raw[0] == '\n' {
			last.Raw += "\n"
			s.Raw = s.Raw[1:]
			if s.Raw == "" {
				continue
			}
		}
		switch {
		case s.Kind == KindOversize && open:
			last.Raw += s.Raw
			last.End = s.End
		case s.Kind == KindComment && last != nil && last.Kind == KindComment:
			last.Raw += s.Raw
		default:
			out.Segs = append(out.Segs, s)
		}
		open = s.Kind == KindOversize && !s.End
	}
	return out
}

// run feeds chunks to a fresh parser and collects everything it returns.
// After each chunk it checks the latency contract: the parser holds exactly
// the bytes that a one-chunk parse of the input so far leaves undecided (an
// incomplete block, a partial stream-start BOM), and Pending counts them.
func run(maxSize int, chunks [][]byte) (result, error) {
	p := &Parser{MaxEventSize: maxSize}
	var r result
	var prefix []byte
	fed, out := 0, 0
	for _, c := range chunks {
		p.Feed(c)
		fed += len(c)
		prefix = append(prefix, c...)
		for {
			s, ok := p.Next()
			if !ok {
				break
			}
			if len(s.Raw) == 0 {
				return r, fmt.Errorf("empty segment %v", copySeg(s))
			}
			out += len(s.Raw)
			r.Segs = append(r.Segs, copySeg(s))
		}
		if got, want := p.Pending(), fed-out; got != want {
			return r, fmt.Errorf("after %d bytes: Pending() = %d, want %d", fed, got, want)
		}
		if held, want := string(prefix[out:]), reference(prefix, maxSize).Flush; held != want {
			return r, fmt.Errorf("after %d bytes: holds %q, want only the undecided %q", fed, held, want)
		}
	}
	r.Flush = string(p.Flush())
	if p.Pending() != 0 {
		return r, fmt.Errorf("Pending() = %d after Flush", p.Pending())
	}
	return r, nil
}

// splitAt cuts in at the given ascending offsets.
func splitAt(in []byte, cuts ...int) [][]byte {
	var chunks [][]byte
	prev := 0
	for _, c := range cuts {
		chunks = append(chunks, in[prev:c])
		prev = c
	}
	return append(chunks, in[prev:])
}

// bytewise cuts in into one-byte chunks.
func bytewise(in []byte) [][]byte {
	chunks := make([][]byte, len(in))
	for i := range in {
		chunks[i] = in[i : i+1]
	}
	return chunks
}

// reference parses a whole stream the plain way, one byte at a time over
// the complete input, as an oracle independent of the Parser's chunk logic.
// It gives the segments of a one-chunk parse: oversize blocks come out as
// one segment each, the runs between blocks as one KindComment each.
func reference(in []byte, maxSize int) result {
	if maxSize <= 0 {
		maxSize = DefaultMaxEventSize
	}
	var r result
	i := 0
	if len(in) < 3 && bytes.HasPrefix([]byte(utf8BOM), in) {
		r.Flush = string(in)
		return r
	}
	if bytes.HasPrefix(in, []byte(utf8BOM)) {
		r.Segs = append(r.Segs, seg{Kind: KindBOM, Raw: utf8BOM, Retry: -1})
		i = 3
	}
	// lineEnd returns the end of the line at i (after CR, LF or CRLF) and
	// the end of its text, or -1 if the line does not end.
	lineEnd := func(i int) (next, text int) {
		k := i
		for k < len(in) && in[k] != '\r' && in[k] != '\n' {
			k++
		}
		if k == len(in) {
			return -1, k
		}
		if in[k] == '\r' && k+1 < len(in) && in[k+1] == '\n' {
			return k + 2, k
		}
		return k + 1, k
	}
	for i < len(in) {
		// Between blocks: comment lines, a trailing unended comment line.
		start := i
		for i < len(in) && in[i] == ':' {
			next, _ := lineEnd(i)
			if next < 0 {
				i = len(in)
				break
			}
			i = next
		}
		if i > start {
			r.Segs = append(r.Segs, seg{Kind: KindComment, Raw: string(in[start:i]), Retry: -1})
			continue
		}
		// A block: field lines up to a blank line, or a blank line alone.
		s := seg{Kind: KindBlock, Retry: -1}
		done, size := false, 0
		for i < len(in) {
			next, text := lineEnd(i)
			if next < 0 {
				i = len(in)
				break
			}
			line := in[i:text]
			i = next
			if len(line) == 0 {
				done = true
				size = text + 1 - start // the LF of a final CRLF is not counted
				break
			}
			refField(line, &s)
		}
		raw := string(in[start:i])
		switch {
		case done && size > maxSize, !done && len(raw) > maxSize:
			r.Segs = append(r.Segs, seg{Kind: KindOversize, Raw: raw, Retry: -1, End: done})
		case done:
			s.Raw = raw
			r.Segs = append(r.Segs, s)
		default:
			r.Flush = raw
		}
	}
	return r
}

func refField(line []byte, s *seg) {
	if line[0] == ':' {
		return
	}
	name, value := string(line), ""
	if c := strings.IndexByte(name, ':'); c >= 0 {
		name, value = name[:c], strings.TrimPrefix(name[c+1:], " ")
	}
	switch name {
	case "data":
		s.HasData = true
	case "event":
		s.Event, s.EventOK = value, true
	case "id":
		if !strings.Contains(value, "\x00") {
			s.ID, s.HasID = value, true
		}
	case "retry":
		var n int64
		ok := value != ""
		for _, c := range []byte(value) {
			if c < '0' || c > '9' || n > (1<<63-1-int64(c-'0'))/10 {
				ok = false
				break
			}
			n = n*10 + int64(c-'0')
		}
		if ok {
			s.Retry = n
		}
	}
}

// checkInvariants runs in under the given chunking and compares it with the
// reference: same segments (oversize parts merged) and an exact partition.
func checkInvariants(in []byte, maxSize int, chunks [][]byte, want result) error {
	got, err := run(maxSize, chunks)
	if err != nil {
		return err
	}
	if j := got.joined(); j != string(in) {
		return fmt.Errorf("partition broken: segments+flush = %q, input %q", j, in)
	}
	for _, s := range got.Segs {
		if s.Kind == KindOversize && len(s.Raw) == 0 {
			return fmt.Errorf("empty oversize segment")
		}
	}
	if g := got.merged().String(); g != want.String() {
		return fmt.Errorf("segments differ\ngot:\n%swant:\n%s", g, want.String())
	}
	return nil
}
