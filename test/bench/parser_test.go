package main

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	gosse "github.com/tmaxmax/go-sse"

	"github.com/ssetrack/ssetrack/extproc/sse"
)

// parserCorpus is an MCP Streamable HTTP stream of about 1 MiB with LF line
// endings: progress notifications (about 200 B), now and then a tool result
// of 2–12 KiB, and a ": ping" comment every 20 events. It returns the stream
// and the number of events in it (blocks with data) and of comments.
func parserCorpus() (stream []byte, events, comments int) {
	r := rand.New(rand.NewPCG(17, 23))
	var b bytes.Buffer
	for n := 1; b.Len() < 1<<20; n++ {
		if r.IntN(50) == 0 {
			text := strings.Repeat("lorem ipsum dolor sit amet ", (2<<10+r.IntN(10<<10))/27)
			fmt.Fprintf(&b, "event: message\nid: 7-%d\ndata: {\"jsonrpc\":\"2.0\",\"id\":%d,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}}\n\n", n, n, text)
		} else {
			fmt.Fprintf(&b, "event: message\nid: 7-%d\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"tok-%d\",\"progress\":%d,\"total\":100000,\"message\":\"indexing /srv/data/file-%d.json\"}}\n\n", n, r.IntN(50), n, r.IntN(1000))
		}
		events++
		if n%20 == 0 {
			b.WriteString(": ping\n\n")
			comments++
		}
	}
	return b.Bytes(), events, comments
}

// readsOf is an io.Reader over b that returns at most n bytes per Read, as
// a socket under a stream of small writes would.
type readsOf struct {
	b []byte
	n int
}

func (r *readsOf) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[k:]
	return k, nil
}

// parseSsetrack feeds every read to an extproc/sse Parser and counts the
// segments with data: what the processor does per body chunk.
func parseSsetrack(r io.Reader, readSize int) (events int, err error) {
	var p sse.Parser
	buf := make([]byte, readSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.Feed(buf[:n])
			for {
				s, ok := p.Next()
				if !ok {
					break
				}
				if s.HasData {
					events++
				}
			}
		}
		if err == io.EOF {
			p.Flush()
			return events, nil
		}
		if err != nil {
			return events, err
		}
	}
}

// parseGoSSE reads the stream with go-sse's sse.Read, its one public parsing
// entry point (an io.Reader in, an iterator of Events out), and counts the
// events it dispatches.
func parseGoSSE(r io.Reader) (events int, err error) {
	for ev, err := range gosse.Read(r, &gosse.ReadConfig{MaxEventSize: 1 << 20}) {
		if err != nil {
			return events, err
		}
		_ = ev.Data
		events++
	}
	return events, nil
}

// scanBlocks is the floor any SSE framing costs: it appends every read to a
// carry buffer and finds each block's end (two line endings, sep) with a
// bytes.Index loop, remembering how far it has looked. It counts blocks,
// comments included, and looks at no field.
func scanBlocks(r io.Reader, readSize int, sep []byte) (blocks int, err error) {
	buf := make([]byte, readSize)
	var carry []byte
	from := 0 // carry[:from] holds no sep start
	for {
		n, err := r.Read(buf)
		if n > 0 {
			carry = append(carry, buf[:n]...)
			off := 0
			for {
				i := bytes.Index(carry[max(off, from):], sep)
				if i < 0 {
					break
				}
				blocks++
				off = max(off, from) + i + len(sep)
				from = off
			}
			carry = carry[:copy(carry, carry[off:])]
			from = max(0, len(carry)-len(sep)+1)
		}
		if err == io.EOF {
			return blocks, nil
		}
		if err != nil {
			return blocks, err
		}
	}
}

// BenchmarkParser compares extproc/sse's Parser with github.com/tmaxmax/go-sse
// (sse.Read) and a raw block scan (scanBlocks), on the same stream with LF, CR
// and CRLF line endings, delivered in reads of 64 B, 512 B and 16 KiB. One op
// parses the whole stream from a new parser. It reports events/s (events with
// data, the same count for every parser) and allocs/ev (heap allocations per
// event). It checks each parser found every event; it never checks timing.
func BenchmarkParser(b *testing.B) {
	lf, events, comments := parserCorpus()
	for _, ending := range []struct{ name, eol string }{{"LF", "\n"}, {"CR", "\r"}, {"CRLF", "\r\n"}} {
		stream := bytes.ReplaceAll(lf, []byte("\n"), []byte(ending.eol))
		sep := []byte(ending.eol + ending.eol)
		for _, readSize := range []int{64, 512, 16 << 10} {
			for _, parser := range []struct {
				name  string
				want  int
				parse func(r io.Reader) (int, error)
			}{
				{"ssetrack", events, func(r io.Reader) (int, error) { return parseSsetrack(r, readSize) }},
				{"go-sse", events, parseGoSSE},
				{"scan", events + comments, func(r io.Reader) (int, error) { return scanBlocks(r, readSize, sep) }},
			} {
				b.Run(fmt.Sprintf("%s/read=%s/%s", ending.name, sizeName(readSize), parser.name), func(b *testing.B) {
					b.SetBytes(int64(len(stream)))
					b.ReportAllocs()
					var m0, m1 runtime.MemStats
					runtime.ReadMemStats(&m0)
					for b.Loop() {
						got, err := parser.parse(&readsOf{b: stream, n: readSize})
						if err != nil || got != parser.want {
							b.Fatalf("parsed %d blocks (%v), want %d", got, err, parser.want)
						}
					}
					runtime.ReadMemStats(&m1)
					b.ReportMetric(float64(events)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
					b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(events)/float64(b.N), "allocs/ev")
				})
			}
		}
	}
}

// sizeName writes n bytes as 64B, 512B or 16KiB.
func sizeName(n int) string {
	if n >= 1<<10 && n%(1<<10) == 0 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
