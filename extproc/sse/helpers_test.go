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

// merged returns r with the KindOversize segments of each block merged into
// one: only their Raw depends on where chunks were split.
func (r result) merged() result {
	out := result{Flush: r.Flush}
	open := false
	for _, s := range r.Segs {
		if s.Kind == KindOversize && open {
			last := &out.Segs[len(out.Segs)-1]
			last.Raw += s.Raw
			last.End = s.End
		} else {
			out.Segs = append(out.Segs, s)
		}
		open = s.Kind == KindOversize && !s.End
	}
	return out
}

// run feeds chunks to a fresh parser and collects everything it returns. It
// also checks Pending after each chunk against the bytes not yet returned.
func run(maxSize int, chunks [][]byte) (result, error) {
	p := &Parser{MaxEventSize: maxSize}
	var r result
	fed, out := 0, 0
	for _, c := range chunks {
		p.Feed(c)
		fed += len(c)
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
// Oversize blocks come out as one segment each.
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
	afterCR := false
	for i < len(in) {
		start := i
		s := seg{Kind: KindBlock, Retry: -1}
		if afterCR && in[i] == '\n' {
			i++
		}
		afterCR = false
		done := false
		for i < len(in) && !done {
			k := i
			for k < len(in) && in[k] != '\r' && in[k] != '\n' {
				k++
			}
			if k == len(in) {
				i = k
				break
			}
			line := in[i:k]
			if len(line) == 0 {
				done = true
				afterCR = in[k] == '\r'
				i = k + 1
				break
			}
			refField(line, &s)
			i = k + 1
			if in[k] == '\r' && i < len(in) && in[i] == '\n' {
				i++
			}
		}
		raw := string(in[start:i])
		switch {
		case len(raw) > maxSize:
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
