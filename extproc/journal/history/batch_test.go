package history

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// TestBatchEvents splits stored payloads into events: blocks with a data
// or an id field, in every line-ending style, numbered by the batch's
// per-session sequence range.
func TestBatchEvents(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		count   int
		want    []string // id/hasID@seq and the event's bytes
	}{
		{"lf", "id: 1\ndata: a\n\n: ping\n\nid: 2\ndata: b\n\n", 2,
			[]string{`"1"/true@5 "id: 1\ndata: a\n\n"`, `"2"/true@6 "id: 2\ndata: b\n\n"`}},
		// As the processor records a CRLF stream: a block ends at the CR
		// of its blank line; the LF that completes it leads the next one
		// (or is a segment of its own); either way it is not an event.
		{"crlf", "id: 1\r\ndata: a\r\n\r\nid: 2\r\ndata: b\r\n\r", 2,
			[]string{`"1"/true@5 "id: 1\r\ndata: a\r\n\r\n"`, `"2"/true@6 "id: 2\r\ndata: b\r\n\r"`}},
		{"crlf leading lf", "\nid: 1\r\ndata: a\r\n\r", 1,
			[]string{`"1"/true@5 "id: 1\r\ndata: a\r\n\r"`}},
		{"cr", "id: 1\rdata: a\r\rid: 2\rdata\r\r", 2,
			[]string{`"1"/true@5 "id: 1\rdata: a\r\r"`, `"2"/true@6 "id: 2\rdata\r\r"`}},
		// A payload starts mid-stream (the processor never records the
		// stream's BOM): a U+FEFF there is part of a field name, so its
		// event has no id even without the NUL that voids "3\x00".
		{"feff nul empty id", "\ufeffid: 3\x00\ndata: c\n\nid\n\nretry: 5\n\n", 2,
			[]string{`""/false@5 "\ufeffid: 3\x00\ndata: c\n\n"`, `""/true@6 "id\n\n"`}},
		{"feff before an id", "\ufeffid: 4\ndata: d\n\n", 1,
			[]string{`""/false@5 "\ufeffid: 4\ndata: d\n\n"`}},
		{"partial tail", "id: 1\ndata: a\n\ndata: partial\n", 1,
			[]string{`"1"/true@5 "id: 1\ndata: a\n\n"`}},
		{"count differs", "id: 1\ndata: a\n\nid: 2\ndata: b\n\n", 3,
			[]string{`"1"/true@7 "id: 1\ndata: a\n\n"`, `"2"/true@7 "id: 2\ndata: b\n\n"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := Batch{Session: "s", Stream: "t", Count: tc.count, FirstSeq: 5, LastSeq: 5 + uint64(tc.count) - 1, Data: []byte(tc.payload)}
			var got []string
			for ev := range b.Events() {
				data := strings.TrimPrefix(string(ev.Data), "\n")
				got = append(got, fmt.Sprintf("%q/%v@%d %q", ev.ID, ev.HasID, ev.Seq, data))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestBatchAfter trims a batch to the events after an id: the last event
// with that id counts, the sequence range and ids follow.
func TestBatchAfter(t *testing.T) {
	b := Batch{Count: 4, FirstSeq: 10, LastSeq: 13, FirstID: "a", LastID: "c",
		Data: []byte("id: a\ndata\n\nid: b\ndata\n\nid: a\ndata\n\nid: c\ndata\n\n")}
	rest, ok := b.after("a")
	if !ok || rest.Count != 1 || rest.FirstSeq != 12+1 || rest.FirstID != "c" || string(rest.Data) != "id: c\ndata\n\n" {
		t.Errorf("after a: %v %+v", ok, rest)
	}
	rest, ok = b.after("c")
	if !ok || rest.Count != 0 || len(rest.Data) != 0 || rest.FirstID != "" || rest.LastID != "" {
		t.Errorf("after c: %v %+v", ok, rest)
	}
	if _, ok := b.after("z"); ok {
		t.Error("after z: found")
	}
	if !b.has("b") || b.has("z") {
		t.Error("has")
	}
}

func TestDecode(t *testing.T) {
	good := header(Batch{Session: "s 1", Stream: "t", FirstID: "x", LastID: "y", Count: 2, FirstSeq: 3, LastSeq: 4})
	b, err := Decode(good, []byte("id: x\ndata\n\nid: y\ndata\n\n"))
	if err != nil || b.Session != "s 1" || b.Stream != "t" || b.FirstID != "x" || b.LastID != "y" || b.Count != 2 || b.FirstSeq != 3 || b.LastSeq != 4 {
		t.Errorf("decoded %+v, %v", b, err)
	}

	long := strings.Repeat("l", 2000)
	h := header(Batch{Session: "s", Count: 2, FirstSeq: 1, LastSeq: 2})
	h.Set(HeaderIDs, "payload")
	b, err = Decode(h, []byte("id: "+long+"\ndata\n\nid: short\ndata\n\n"))
	if err != nil || b.FirstID != long || b.LastID != "short" {
		t.Errorf("ids from the payload: first %d bytes, last %q, %v", len(b.FirstID), b.LastID, err)
	}

	for name, mutate := range map[string]func(nats.Header){
		"no session": func(h nats.Header) { h.Del(HeaderSession) },
		"bad count":  func(h nats.Header) { h.Set(HeaderCount, "x") },
		"bad seq":    func(h nats.Header) { h.Set(HeaderLastSeq, "-1") },
		"bad b64":    func(h nats.Header) { h.Set(HeaderStream, "b64:!!") },
	} {
		h := header(Batch{Session: "s", Count: 1, FirstSeq: 1, LastSeq: 1})
		mutate(h)
		if _, err := Decode(h, nil); !errors.Is(err, ErrBadBatch) {
			t.Errorf("%s: %v, want ErrBadBatch", name, err)
		}
	}
}

func TestHeaderValue(t *testing.T) {
	for _, v := range []string{"abc", "", " lead", "trail ", "a\r\nb", "b64:x", strings.Repeat("q", 600), "\xff", "ok id 1"} {
		enc := EncodeHeaderValue(v)
		if strings.ContainsAny(enc, "\r\n") {
			t.Errorf("EncodeHeaderValue(%q) = %q", v, enc)
		}
		got, err := DecodeHeaderValue(enc)
		if err != nil || got != v {
			t.Errorf("round trip %q: %q, %v", v, got, err)
		}
	}
}
