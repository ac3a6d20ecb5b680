package journal

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestTakeoverNotices: a takeover notice one writer sends reaches the
// others' Config.TakenOver with its session, stream and Last-Event-ID, ids
// of any bytes included, and not the sender's own; a malformed notice is
// dropped and counted.
func TestTakeoverNotices(t *testing.T) {
	s := startTestServer(t)
	type call struct{ session, stream, lei string }
	var mu sync.Mutex
	calls := map[string][]call{}
	cfg := func(name string) Config {
		return Config{TakenOver: func(session, stream, lei string) bool {
			mu.Lock()
			defer mu.Unlock()
			calls[name] = append(calls[name], call{session, stream, lei})
			return stream == "superseded"
		}}
	}
	// Each writer on a connection of its own, as replicas are.
	a := newPublisher(t, connect(t, s.ClientURL()), cfg("a"))
	b := newPublisher(t, connect(t, s.ClientURL()), cfg("b"))
	hostile := "s.*.>\x00\xff\r\n" + string(make([]byte, 300))
	b.Takeover(hostile, "superseded", "e-7\x00")
	b.Takeover("S", "other", "e-9")
	b.Takeover("S", "other", "") // no Last-Event-ID: nothing to announce
	if err := b.js.Conn().Publish(a.takeoverSubj, []byte{0x05, 'x'}); err != nil {
		t.Fatal(err)
	}
	got := func(name string) []call {
		mu.Lock()
		defer mu.Unlock()
		return append([]call(nil), calls[name]...)
	}
	waitFor(t, 5*time.Second, "a's notices", func() bool {
		return statsOf(t, a).Takeovers["malformed"] == 1 && len(got("a")) == 2
	})
	want := []call{{hostile, "superseded", "e-7\x00"}, {"S", "other", "e-9"}}
	if fmt.Sprintf("%q", got("a")) != fmt.Sprintf("%q", want) {
		t.Errorf("a was told %q, want %q", got("a"), want)
	}
	if st := statsOf(t, a).Takeovers; st["superseded"] != 1 || st["ignored"] != 1 {
		t.Errorf("a counted %d superseded and %d ignored notices, want 1 and 1", st["superseded"], st["ignored"])
	}
	if n := statsOf(t, b).Takeovers["sent"]; n != 2 {
		t.Errorf("b counted %d notices sent, want 2", n)
	}
	time.Sleep(100 * time.Millisecond) // b's own notices would have come back by now
	if c := got("b"); len(c) != 0 {
		t.Errorf("b was told of its own notices: %q", c)
	}
}

func TestNoticeEncoding(t *testing.T) {
	n := notice{writer: "w", session: "\x00s\xff", stream: "", lastEventID: "id"}
	b := encodeNotice(n)
	if got, err := decodeNotice(b); err != nil || got != n {
		t.Errorf("decode(encode(%q)) = %q, %v", n, got, err)
	}
	for i := range b {
		if _, err := decodeNotice(b[:i]); err == nil {
			t.Errorf("a notice cut at %d bytes decoded", i)
		}
	}
	if _, err := decodeNotice(append(b, 0)); err == nil {
		t.Error("a notice with a trailing byte decoded")
	}
}
