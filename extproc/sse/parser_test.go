package sse

import (
	"testing"
)

// TestFields checks the parsed fields of single blocks.
func TestFields(t *testing.T) {
	none := "none"
	tests := []struct {
		in      string
		id      string // "none" when HasID must be false
		event   string // "none" when Event must be nil
		hasData bool
		retry   int64
	}{
		{"data: x\n\n", none, none, true, -1},
		{"data\n\n", none, none, true, -1},
		{"data:\n\n", none, none, true, -1},
		{"datum: x\n\n", none, none, false, -1},
		{"DATA: x\n\n", none, none, false, -1},
		{"event: e\n: data: x\n\n", none, "e", false, -1}, // a comment line inside a block
		{"id: 1-17\n\n", "1-17", none, false, -1},
		{"id:1\n\n", "1", none, false, -1},
		{"id:  1\n\n", " 1", none, false, -1},
		{"id: 1 \n\n", "1 ", none, false, -1},
		{"id\n\n", "", none, false, -1},
		{"id: \n\n", "", none, false, -1},
		{"id: a\x00b\n\n", none, none, false, -1},
		{"id: a\nid: b\x00\n\n", "a", none, false, -1},
		{"id: a\nid:\n\n", "", none, false, -1},
		{"event: e\n\n", none, "e", false, -1},
		{"event\n\n", none, "", false, -1},
		{"event: a\nevent: b\n\n", none, "b", false, -1},
		{"retry: 0\n\n", none, none, false, 0},
		{"retry: 007\n\n", none, none, false, 7},
		{"retry: 1 \n\n", none, none, false, -1},
		{"retry: +1\n\n", none, none, false, -1},
		{"retry: ١\n\n", none, none, false, -1}, // non-ASCII digit
		{"retry: 5\nretry: x\n\n", none, none, false, 5},
		{"retry: 18446744073709551616\n\n", none, none, false, -1},
		{"\xef\xbb\xbfdata: x\n\n", none, none, false, -1}, // stream-start BOM stripped: see TestBOM
	}
	for _, tt := range tests {
		p := &Parser{}
		p.Feed([]byte("\n" + tt.in)) // a blank block first, so no BOM check
		if s, ok := p.Next(); !ok || string(s.Raw) != "\n" {
			t.Fatalf("%q: first block %q, %t", tt.in, s.Raw, ok)
		}
		s, ok := p.Next()
		if !ok || s.Kind != KindBlock || string(s.Raw) != tt.in {
			t.Errorf("%q: got %v, %t", tt.in, copySeg(s), ok)
			continue
		}
		if tt.id == none {
			if s.HasID {
				t.Errorf("%q: HasID set, ID %q", tt.in, s.ID)
			}
		} else if !s.HasID || string(s.ID) != tt.id {
			t.Errorf("%q: ID %q (HasID %t), want %q", tt.in, s.ID, s.HasID, tt.id)
		}
		if tt.event == none {
			if s.Event != nil {
				t.Errorf("%q: Event %q, want nil", tt.in, s.Event)
			}
		} else if s.Event == nil || string(s.Event) != tt.event {
			t.Errorf("%q: Event %q, want %q", tt.in, s.Event, tt.event)
		}
		if s.HasData != tt.hasData {
			t.Errorf("%q: HasData %t", tt.in, s.HasData)
		}
		if s.Retry != tt.retry {
			t.Errorf("%q: Retry %d, want %d", tt.in, s.Retry, tt.retry)
		}
		if _, ok := p.Next(); ok {
			t.Errorf("%q: extra segment", tt.in)
		}
	}
}

func TestBOM(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   string // segments, then the flush
	}{
		{"whole", []string{"\xef\xbb\xbf\n"}, "bom \"\\ufeff\"\nblock \"\\n\" id=none event=none data=false retry=-1\nflush \"\"\n"},
		{"split 1+2", []string{"\xef", "\xbb\xbf\n"}, "bom \"\\ufeff\"\nblock \"\\n\" id=none event=none data=false retry=-1\nflush \"\"\n"},
		{"split 1+1+1", []string{"\xef", "\xbb", "\xbf", "\n"}, "bom \"\\ufeff\"\nblock \"\\n\" id=none event=none data=false retry=-1\nflush \"\"\n"},
		{"partial then end", []string{"\xef", "\xbb"}, "flush \"\\xef\\xbb\"\n"},
		{"not a BOM", []string{"\xef", "\xbb", "X\n\n"}, "block \"\\xef\\xbbX\\n\\n\" id=none event=none data=false retry=-1\nflush \"\"\n"},
		{"second BOM kept", []string{"\xef\xbb\xbf", "\xef\xbb\xbf"}, "bom \"\\ufeff\"\nflush \"\\ufeff\"\n"},
	}
	for _, tt := range tests {
		var chunks [][]byte
		for _, c := range tt.chunks {
			chunks = append(chunks, []byte(c))
		}
		got, err := run(0, chunks)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got.String() != tt.want {
			t.Errorf("%s: got\n%swant\n%s", tt.name, got, tt.want)
		}
	}
	// After Flush a new stream starts: its BOM is stripped again.
	p := &Parser{}
	p.Feed([]byte("\xef\xbb\xbfdata: x\n"))
	for _, ok := p.Next(); ok; _, ok = p.Next() {
	}
	if string(p.Flush()) != "data: x\n" {
		t.Fatal("flush")
	}
	p.Feed([]byte("\xef\xbb\xbf"))
	if s, ok := p.Next(); !ok || s.Kind != KindBOM {
		t.Errorf("no BOM on the second stream: %v %t", copySeg(s), ok)
	}
}

// TestZeroCopy checks that blocks inside one chunk alias it, and that a
// block that began in an earlier chunk is assembled.
func TestZeroCopy(t *testing.T) {
	p := &Parser{}
	chunk := []byte("data: a\n\nid: 1\ndata: b\n\nevent: partial\n")
	p.Feed(chunk)
	for range 2 {
		s, ok := p.Next()
		if !ok {
			t.Fatal("missing block")
		}
		if !within(s.Raw, chunk) {
			t.Errorf("%q does not alias the chunk", s.Raw)
		}
		if s.HasID && !within(s.ID, chunk) {
			t.Errorf("ID %q does not alias the chunk", s.ID)
		}
		if cap(s.Raw) != len(s.Raw) {
			t.Errorf("Raw capacity %d reaches past the segment", cap(s.Raw))
		}
	}
	if _, ok := p.Next(); ok {
		t.Fatal("partial block returned")
	}
	if p.Pending() != len("event: partial\n") {
		t.Fatalf("Pending() = %d", p.Pending())
	}
	chunk[len(chunk)-2] = 'X' // the parser must not keep the chunk
	p.Feed([]byte("data: c\n\n"))
	s, ok := p.Next()
	if !ok || string(s.Raw) != "event: partial\ndata: c\n\n" || string(s.Event) != "partial" || !s.HasData {
		t.Fatalf("assembled block: %v %t", copySeg(s), ok)
	}
	if _, ok := p.Next(); ok || p.Pending() != 0 {
		t.Fatal("leftover after assembled block")
	}
}

func TestZeroParserAndReset(t *testing.T) {
	var p Parser
	if _, ok := p.Next(); ok {
		t.Fatal("Next on a zero Parser returned a segment")
	}
	if p.Pending() != 0 || p.Flush() != nil {
		t.Fatal("zero Parser holds bytes")
	}
	p.Feed([]byte("data: x\n\ndata: y"))
	if s, ok := p.Next(); !ok || string(s.Raw) != "data: x\n\n" {
		t.Fatalf("got %v %t", copySeg(s), ok)
	}
	if _, ok := p.Next(); ok || p.Pending() != 7 {
		t.Fatalf("Pending() = %d", p.Pending())
	}
	p.Reset()
	if p.Pending() != 0 || p.Flush() != nil {
		t.Fatal("Reset kept bytes")
	}
	// A CR at the end of the old stream must not swallow the new stream's LF.
	p.Feed([]byte("\r"))
	p.Next()
	p.Reset()
	p.Feed([]byte("\n"))
	if s, ok := p.Next(); !ok || string(s.Raw) != "\n" {
		t.Fatalf("after Reset: %v %t", copySeg(s), ok)
	}
}

// TestFeedBeforeNextDone checks the documented misuse: Feed before Next
// reported false keeps the unread bytes, and Flush returns unread bytes too.
func TestFeedBeforeNextDone(t *testing.T) {
	in := "data: a\n\ndata: b\n\ndata: c\n\ndata: d"
	p := &Parser{}
	p.Feed([]byte(in[:20]))
	var got string
	s, _ := p.Next()
	got += string(s.Raw)
	p.Feed([]byte(in[20:30]))
	s, _ = p.Next()
	got += string(s.Raw)
	p.Feed([]byte(in[30:]))
	got += string(p.Flush())
	if got != in {
		t.Fatalf("got %q, want %q", got, in)
	}
}

// TestNoAllocs checks the steady state allocates nothing per event, for
// blocks within a chunk and blocks assembled across chunks.
func TestNoAllocs(t *testing.T) {
	stream := []byte("id: 1-17\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n: ping\n\ndata: [DONE]\r\n\r\n")
	p := &Parser{}
	parseAll := func(chunks ...[]byte) {
		for _, c := range chunks {
			p.Feed(c)
			for _, ok := p.Next(); ok; _, ok = p.Next() {
			}
		}
	}
	parseAll(stream, stream[:10], stream[10:]) // warm up the carry
	for _, split := range []int{0, 7, 40, len(stream) - 1} {
		if n := testing.AllocsPerRun(100, func() { parseAll(stream[:split], stream[split:]) }); n != 0 {
			t.Errorf("split at %d: %v allocs per run", split, n)
		}
	}
}

// TestMidStreamKeepsLeadingFEFF: a parser for input that does not start a
// stream (a stored batch) reads a leading U+FEFF as a byte of the first field
// name, where a stream's parser strips it as the byte order mark.
func TestMidStreamKeepsLeadingFEFF(t *testing.T) {
	const in = "\ufeffid: 1\ndata: x\n\n"
	for _, mid := range []bool{false, true} {
		p := Parser{MidStream: mid}
		p.Feed([]byte(in))
		var kinds []Kind
		var block Segment
		for seg, ok := p.Next(); ok; seg, ok = p.Next() {
			kinds = append(kinds, seg.Kind)
			if seg.Kind == KindBlock {
				block = seg
			}
		}
		switch {
		case !mid && (len(kinds) != 2 || kinds[0] != KindBOM || !block.HasID || string(block.ID) != "1"):
			t.Errorf("stream start: kinds %v, id %q (has %v); want the BOM, then a block with id 1", kinds, block.ID, block.HasID)
		case mid && (len(kinds) != 1 || block.HasID || string(block.Raw) != in):
			t.Errorf("mid-stream: kinds %v, id %q (has %v), raw %q; want one block, no id, raw the whole input", kinds, block.ID, block.HasID, block.Raw)
		}
	}
}
