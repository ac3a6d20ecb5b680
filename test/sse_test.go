package e2e

import (
	"bytes"
	"fmt"
	"strings"
)

// This file holds the tests' own reading of SSE, written from the WHATWG spec and kept
// apart from ssetrack's parser so the two check each other.

// block is the raw bytes of one event block: its lines up to and including the blank line
// that ends it (or the rest of the stream, for an unterminated tail).
type block struct {
	raw      []byte
	id       string // value of the last id field, if hasID
	hasID    bool
	complete bool // ended by a blank line
}

// splitBlocks cuts an SSE byte stream into blocks. Line ends are CRLF, LF or a lone CR; a
// leading UTF-8 BOM belongs to the first block.
func splitBlocks(b []byte) []block {
	var blocks []block
	start := 0
	cur := block{}
	pos := 0
	if bytes.HasPrefix(b, []byte("\xEF\xBB\xBF")) {
		pos = 3
	}
	for pos < len(b) {
		lineStart := pos
		end := pos
		for end < len(b) && b[end] != '\r' && b[end] != '\n' {
			end++
		}
		if end == len(b) { // unterminated last line
			break
		}
		next := end + 1
		if b[end] == '\r' && next < len(b) && b[next] == '\n' {
			next++
		}
		line := b[lineStart:end]
		pos = next
		if len(line) == 0 {
			cur.raw = b[start:pos]
			cur.complete = true
			blocks = append(blocks, cur)
			cur = block{}
			start = pos
			continue
		}
		name, value := splitField(line)
		if name == "id" && !strings.Contains(value, "\x00") {
			cur.id, cur.hasID = value, true
		}
	}
	if start < len(b) {
		cur.raw = b[start:]
		blocks = append(blocks, cur)
	}
	return blocks
}

// splitField splits a line into field name and value as the spec does.
func splitField(line []byte) (name, value string) {
	i := bytes.IndexByte(line, ':')
	if i < 0 {
		return string(line), ""
	}
	v := line[i+1:]
	if len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	return string(line[:i]), string(v)
}

// without returns the stream minus the complete blocks whose id is in drop: what ssetrack
// must forward when it drops those events as duplicates.
func without(b []byte, drop map[string]bool) []byte {
	var out []byte
	for _, bl := range splitBlocks(b) {
		if bl.complete && bl.hasID && drop[bl.id] {
			continue
		}
		out = append(out, bl.raw...)
	}
	return out
}

// blockIDs lists the ids of the blocks that carry one, "(none)" for those that do not.
func blockIDs(b []byte) []string {
	var ids []string
	for _, bl := range splitBlocks(b) {
		if bl.hasID {
			ids = append(ids, bl.id)
		} else {
			ids = append(ids, "(none)")
		}
	}
	return ids
}

// clientEvent is an event as a browser's EventSource dispatches it.
type clientEvent struct {
	typ, data, lastID string
}

// parseClient runs the spec's event-stream interpretation over a complete stream and
// returns the dispatched events (a trailing incomplete event is not dispatched).
func parseClient(b []byte) []clientEvent {
	b = bytes.TrimPrefix(b, []byte("\xEF\xBB\xBF"))
	var evs []clientEvent
	var typ, lastID string
	var data strings.Builder
	for len(b) > 0 {
		end := bytes.IndexAny(b, "\r\n")
		if end < 0 {
			break // incomplete line: never processed
		}
		line := b[:end]
		next := end + 1
		if b[end] == '\r' && next < len(b) && b[next] == '\n' {
			next++
		}
		b = b[next:]
		switch {
		case len(line) == 0:
			if data.Len() > 0 {
				d := strings.TrimSuffix(data.String(), "\n")
				t := typ
				if t == "" {
					t = "message"
				}
				evs = append(evs, clientEvent{typ: t, data: d, lastID: lastID})
			}
			data.Reset()
			typ = ""
		case line[0] == ':':
		default:
			name, value := splitField(line)
			switch name {
			case "event":
				typ = value
			case "data":
				data.WriteString(value)
				data.WriteByte('\n')
			case "id":
				if !strings.Contains(value, "\x00") {
					lastID = value
				}
			}
		}
	}
	return evs
}

// diffStreams describes how got differs from want, for a failure message.
func diffStreams(got, want []byte) string {
	n := 0
	for n < len(got) && n < len(want) && got[n] == want[n] {
		n++
	}
	lo := max(0, n-40)
	return fmt.Sprintf("got %d bytes, want %d; first difference at byte %d\n got  ...%q\n want ...%q\n got block ids  %v\n want block ids %v",
		len(got), len(want), n, clip(got[lo:], 120), clip(want[lo:], 120), clipIDs(blockIDs(got)), clipIDs(blockIDs(want)))
}

func clip(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

func clipIDs(ids []string) []string {
	if len(ids) > 40 {
		return append(ids[:40:40], fmt.Sprintf("... (%d more)", len(ids)-40))
	}
	return ids
}
