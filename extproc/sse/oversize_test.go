package sse

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// block returns a block of exactly size bytes: "data: xxx…\n\n" (eol "\n")
// or "data: xxx…\r\n\r" (eol "\r\n", whose final LF belongs to the next
// segment).
func sizedBlock(size int, eol string) []byte {
	tail := "\n\n"
	if eol == "\r\n" {
		tail = "\r\n\r"
	}
	return []byte("data: " + strings.Repeat("x", size-len("data: ")-len(tail)) + tail)
}

func TestOversize(t *testing.T) {
	const limit = 100
	next := []byte("data: next\n\n")
	tests := []struct {
		name  string
		in    []byte
		chunk int // chunk size; 0 feeds the input whole
		want  []Kind
	}{
		{"at limit", sizedBlock(limit, "\n"), 0, []Kind{KindBlock}},
		{"at limit crlf", sizedBlock(limit, "\r\n"), 0, []Kind{KindBlock}},
		{"one over", sizedBlock(limit+1, "\n"), 0, []Kind{KindOversize}},
		{"one over crlf", sizedBlock(limit+1, "\r\n"), 0, []Kind{KindOversize}},
		{"at limit in 7-byte chunks", sizedBlock(limit, "\n"), 7, []Kind{KindBlock}},
		{"one over in 7-byte chunks", sizedBlock(limit+1, "\n"), 7, []Kind{KindOversize}},
		{"one over byte by byte", sizedBlock(limit+1, "\n"), 1, []Kind{KindOversize}},
		{"then normal", append(sizedBlock(3*limit, "\r\n"), next...), 13, []Kind{KindOversize, KindBlock}},
		{"normal around", append(append(append([]byte(nil), next...), sizedBlock(limit+50, "\n")...), next...), 10, []Kind{KindBlock, KindOversize, KindBlock}},
		{"unterminated", []byte("data: " + strings.Repeat("y", 3*limit)), 9, []Kind{KindOversize}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chunks := [][]byte{tt.in}
			if tt.chunk > 0 {
				chunks = nil
				for in := tt.in; len(in) > 0; {
					n := min(tt.chunk, len(in))
					chunks = append(chunks, in[:n])
					in = in[n:]
				}
			}
			if err := checkInvariants(tt.in, limit, chunks, reference(tt.in, limit)); err != nil {
				t.Fatal(err)
			}
			got, _ := run(limit, chunks)
			var kinds []Kind
			for _, s := range got.merged().Segs {
				kinds = append(kinds, s.Kind)
			}
			if fmt.Sprint(kinds) != fmt.Sprint(tt.want) {
				t.Errorf("kinds = %v, want %v", kinds, tt.want)
			}
			for _, s := range got.Segs {
				if s.Kind == KindOversize && len(s.Raw) > limit+tt.chunk && tt.chunk > 0 {
					t.Errorf("oversize segment of %d bytes: bytes were held past the limit", len(s.Raw))
				}
			}
		})
	}
}

// TestOversizeStreaming checks that an oversize block is passed on as its
// bytes arrive, as sub-slices of the chunks, and that End marks its end.
func TestOversizeStreaming(t *testing.T) {
	p := &Parser{MaxEventSize: 10}
	feed := func(s string) []seg {
		chunk := []byte(s)
		p.Feed(chunk)
		var out []seg
		for {
			sg, ok := p.Next()
			if !ok {
				return out
			}
			if sg.Kind == KindOversize && len(sg.Raw) > 0 && !within(sg.Raw, chunk) && len(out) > 0 {
				t.Errorf("oversize segment %q not a sub-slice of the chunk", sg.Raw)
			}
			out = append(out, copySeg(sg))
		}
	}
	if got := feed("data: 12"); len(got) != 0 || p.Pending() != 8 {
		t.Fatalf("under limit: got %v, pending %d", got, p.Pending())
	}
	got := feed("345\r")
	if len(got) != 2 || got[0].Raw != "data: 12" || got[1].Raw != "345\r" || got[1].End {
		t.Fatalf("crossing limit: got %v", got)
	}
	if p.Pending() != 0 {
		t.Fatalf("pending %d while passing through", p.Pending())
	}
	// The LF completes the CR: it is not a blank line.
	got = feed("\n")
	if len(got) != 1 || got[0].Raw != "\n" || got[0].End {
		t.Fatalf("LF after CR: got %v", got)
	}
	got = feed("\ndata: ok\n\n")
	if len(got) != 2 || got[0].Raw != "\n" || !got[0].End || got[1].Kind != KindBlock || got[1].Raw != "data: ok\n\n" {
		t.Fatalf("end of oversize block: got %v", got)
	}
}

// TestOversizeHugeLine feeds a line of several megabytes without a newline
// in 64 KiB chunks: memory held must stay bounded by the limit and every
// byte must come back.
func TestOversizeHugeLine(t *testing.T) {
	in := append([]byte("data: "), bytes.Repeat([]byte("z"), 5<<20)...)
	p := &Parser{}
	var total int
	for c := in; len(c) > 0; {
		n := min(64<<10, len(c))
		p.Feed(c[:n])
		c = c[n:]
		for {
			s, ok := p.Next()
			if !ok {
				break
			}
			if s.Kind != KindOversize || s.End {
				t.Fatalf("unexpected segment kind %d end %t", s.Kind, s.End)
			}
			total += len(s.Raw)
		}
		if p.Pending() > DefaultMaxEventSize {
			t.Fatalf("holding %d bytes, over the limit", p.Pending())
		}
	}
	total += len(p.Flush())
	if total != len(in) {
		t.Fatalf("got back %d bytes, fed %d", total, len(in))
	}
	if cap(p.carry) > keepCarry {
		t.Errorf("carry of %d bytes kept after Flush", cap(p.carry))
	}
}

// within reports whether b lies inside buf's memory.
func within(b, buf []byte) bool {
	if len(b) == 0 || len(buf) == 0 {
		return false
	}
	for i := range buf {
		if &buf[i] == &b[0] {
			return i+len(b) <= len(buf)
		}
	}
	return false
}
