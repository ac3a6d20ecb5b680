package history

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestReader(t *testing.T) {
	js, st := testStream(t, jetstream.StreamConfig{})
	w := &writer{t: t, js: js, sid: "rd"}
	w.write("s", 1, 4)
	w.write("t", 1, 2) // another stream of the session: seq 5, 6
	w.write("s", 5, 4) // seq 7..10
	w.write("s", 9, 2) // seq 11, 12
	time.Sleep(20 * time.Millisecond)
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	w.write("s", 11, 5) // seq 13..17
	other := &writer{t: t, js: js, sid: "other"}
	other.write("s", 1, 3)
	r := NewReader(st, "")

	// The events of stream s numbered as written above.
	s := func(from int) []string {
		var out []string
		for k := from; k <= 15; k++ {
			seq := k
			if k > 4 {
				seq += 2
			}
			out = append(out, fmt.Sprintf("s-%d@%d", k, seq))
		}
		return out
	}
	all := append(append(s(1)[:4:4], "t-1@5", "t-2@6"), s(5)...)
	tests := []struct {
		name string
		opts ReadOptions
		want []string
		err  error
	}{
		{"all", ReadOptions{}, all, nil},
		{"stream", ReadOptions{Stream: "s"}, s(1), nil},
		{"from-id first", ReadOptions{FromID: "s-1"}, all[1:], nil},
		{"from-id mid batch", ReadOptions{FromID: "s-6"}, s(7), nil},
		{"from-id batch end", ReadOptions{FromID: "s-8"}, s(9), nil},
		{"from-id other stream", ReadOptions{FromID: "t-1"}, append([]string{"t-2@6"}, s(5)...), nil},
		{"from-id in stream", ReadOptions{FromID: "s-3", Stream: "s"}, s(4), nil},
		{"from-id last", ReadOptions{FromID: "s-15"}, nil, nil},
		{"since", ReadOptions{Since: mid}, s(11), nil},
		{"since future", ReadOptions{Since: time.Now().Add(time.Hour)}, nil, nil},
		{"from-id unknown", ReadOptions{FromID: "nope"}, nil, ErrEventNotFound},
		{"from-id not in stream", ReadOptions{FromID: "t-1", Stream: "s"}, nil, ErrEventNotFound},
		{"conflict", ReadOptions{FromID: "s-1", Since: mid}, nil, ErrConflictingOptions},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := collect(t, r, "rd", tc.opts)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}

	t.Run("no session", func(t *testing.T) {
		for _, opts := range []ReadOptions{{}, {Since: mid}} {
			if got, err := collect(t, r, "none", opts); err != nil || len(got) != 0 {
				t.Errorf("%+v: %v, %v", opts, got, err)
			}
		}
		if _, err := collect(t, r, "none", ReadOptions{FromID: "s-1"}); !errors.Is(err, ErrEventNotFound) {
			t.Errorf("from-id: %v", err)
		}
	})

	t.Run("follow", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got := make(chan string, 100)
		errc := make(chan error, 1)
		go func() {
			for ev, err := range r.Events(ctx, "rd", ReadOptions{FromID: "s-14", Follow: true}) {
				if err != nil {
					errc <- err
					return
				}
				got <- ev.ID
			}
			errc <- nil
		}()
		w.write("s", 16, 5)
		for i := 15; i <= 20; i++ {
			select {
			case id := <-got:
				if id != fmt.Sprintf("s-%d", i) {
					t.Fatalf("followed %s, want s-%d", id, i)
				}
			case <-ctx.Done():
				t.Fatal("follow timed out")
			}
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("follow ended with %v", err)
		}
	})
}

// TestReaderFarBack reads from ids at every depth of a session whose
// batches are spread over a stream shared with another session and a
// message that is not a batch: the backward search must find each id
// whichever round (direct gets, then an ordered consumer) reaches it.
func TestReaderFarBack(t *testing.T) {
	js, st := testStream(t, jetstream.StreamConfig{})
	w := &writer{t: t, js: js, sid: "far"}
	noise := &writer{t: t, js: js, sid: "noise"}
	const n = 120
	for k := 1; k <= n; k++ {
		w.write("s", k, 1)
		if k%3 == 0 {
			noise.write("s", k, 1)
		}
		if k == 50 {
			if _, err := js.Publish(context.Background(), Subject("", "far"), []byte("not a batch")); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Consumer requests, as the API sees them: the reader with batched
	// direct gets makes none; the plain one, past maxGets batches a round,
	// does.
	creates, err := js.Conn().SubscribeSync("$JS.API.CONSUMER.>")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Reader{NewReader(st, "", WithDirectBatches(js)), NewReader(st, "")} {
		for _, from := range []int{1, 2, 17, 40, 64, 100, 118, 119, 120} {
			got, err := collect(t, r, "far", ReadOptions{FromID: fmt.Sprintf("s-%d", from)})
			if err != nil {
				t.Fatalf("from s-%d (direct batches %v): %v", from, r.js != nil, err)
			}
			if w := want("s", from+1, n, 0); fmt.Sprint(got) != fmt.Sprint(w) {
				t.Errorf("from s-%d (direct batches %v): got %d events %.80v, want %d", from, r.js != nil, len(got), got, len(w))
			}
		}
		if err := js.Conn().Flush(); err != nil {
			t.Fatal(err)
		}
		n, _, err := creates.Pending()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case r.js != nil && n != 0:
			t.Errorf("reads with batched direct gets made %d consumer requests, want none", n)
		case r.js == nil && n == 0:
			t.Error("the plain reader made no consumer request: the count sees nothing")
		}
		for n > 0 {
			if _, err := creates.NextMsg(time.Second); err != nil {
				t.Fatal(err)
			}
			n--
		}
	}
}

// TestStreamOf names the stream that carried an id, however far back, and
// fails with ErrEventNotFound for an id the session never stored.
func TestStreamOf(t *testing.T) {
	js, st := testStream(t, jetstream.StreamConfig{})
	w := &writer{t: t, js: js, sid: "so"}
	w.write("s", 1, 4)
	w.write("t", 1, 2)
	for k := 5; k <= 100; k++ {
		w.write("s", k, 1)
	}
	(&writer{t: t, js: js, sid: "other"}).write("u", 1, 3)
	r := NewReader(st, "")
	for id, want := range map[string]string{"s-2": "s", "t-2": "t", "s-100": "s", "s-50": "s"} {
		if got, err := r.StreamOf(context.Background(), "so", id); err != nil || got != want {
			t.Errorf("StreamOf(%s) = %q, %v; want %q", id, got, err, want)
		}
	}
	for _, c := range []struct{ sid, id string }{{"so", "u-1"}, {"so", "nope"}, {"none", "s-1"}} {
		if got, err := r.StreamOf(context.Background(), c.sid, c.id); !errors.Is(err, ErrEventNotFound) {
			t.Errorf("StreamOf(%s, %s) = %q, %v; want ErrEventNotFound", c.sid, c.id, got, err)
		}
	}
}

// TestReaderLargeHistory reads from an id whose later batches hold more
// than the search keeps in memory: they are read again, from that batch.
func TestReaderLargeHistory(t *testing.T) {
	js, st := testStream(t, jetstream.StreamConfig{})
	pad := strings.Repeat("x", 256<<10)
	var seq uint64
	const n = 24 // 24 x 256 KiB > keepBytes
	for k := 1; k <= n; k++ {
		seq++
		b := Batch{Session: "big", Stream: "s", Count: 1, FirstSeq: seq, LastSeq: seq, FirstID: fmt.Sprint(k), LastID: fmt.Sprint(k)}
		msg := &nats.Msg{Subject: Subject("", "big"), Header: header(b), Data: fmt.Appendf(nil, "id: %d\ndata: %s\n\n", k, pad)}
		if _, err := js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(st, "")
	for _, from := range []int{1, 3, n - 1} {
		var got []string
		for ev, err := range r.Events(context.Background(), "big", ReadOptions{FromID: fmt.Sprint(from)}) {
			if err != nil {
				t.Fatalf("from %d: %v", from, err)
			}
			if len(ev.Data) < len(pad) {
				t.Fatalf("event %s: %d bytes", ev.ID, len(ev.Data))
			}
			got = append(got, ev.ID)
		}
		if len(got) != n-from || got[0] != fmt.Sprint(from+1) {
			t.Errorf("from %d: got %v", from, got)
		}
	}
	// Past keepBytes the search keeps no batches, and still names the stream.
	if got, err := r.StreamOf(context.Background(), "big", "1"); err != nil || got != "s" {
		t.Errorf("StreamOf(1) = %q, %v; want s", got, err)
	}
}

// TestReaderPurged: history cut by the stream's limits is never delivered
// in part.
func TestReaderPurged(t *testing.T) {
	js, st := testStream(t, jetstream.StreamConfig{MaxMsgsPerSubject: 3})
	w := &writer{t: t, js: js, sid: "cut"}
	for k := 1; k <= 6; k++ { // keeps the batches of s-3..s-6 (seq 4..6 kept)
		w.write("s", 2*k-1, 2)
	}
	r := NewReader(st, "")
	tests := []struct {
		name string
		opts ReadOptions
		want []string
		err  error
	}{
		{"from purged id", ReadOptions{FromID: "s-2"}, nil, ErrEventNotFound},
		{"from kept id", ReadOptions{FromID: "s-8"}, want("s", 9, 12, 0), nil},
		{"since before the oldest kept", ReadOptions{Since: time.Now().Add(-time.Hour)}, nil, ErrPurged},
		{"all that is kept", ReadOptions{}, want("s", 7, 12, 0), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := collect(t, r, "cut", tc.opts)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}

	// A session whose oldest batch is its first is whole from any time.
	whole := &writer{t: t, js: js, sid: "whole"}
	whole.write("s", 1, 2)
	if got, err := collect(t, r, "whole", ReadOptions{Since: time.Now().Add(-time.Hour)}); err != nil || len(got) != 2 {
		t.Errorf("whole session since an hour ago: %v, %v", got, err)
	}
}

// TestReaderRepeatedID: a read from an id that was stored twice starts
// after the most recent one (a resumed stream's client has that one).
func TestReaderRepeatedID(t *testing.T) {
	js, st := testStream(t, jetstream.StreamConfig{})
	w := &writer{t: t, js: js, sid: "rep"}
	w.write("s", 1, 2) // s-1@1 s-2@2
	w.write("s", 1, 1) // s-1@3 again
	w.write("s", 3, 1) // s-3@4
	w.write("s", 4, 1) // s-4@5
	got, err := collect(t, NewReader(st, ""), "rep", ReadOptions{FromID: "s-1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := want("s", 3, 4, 1); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestReadsLeaveNoConsumers: every read through an ordered consumer deletes
// it, so a burst of resumes never meets the server's consumer limit (1,000
// per stream by default); with nats.go's default they would linger for 5
// minutes each.
func TestReadsLeaveNoConsumers(t *testing.T) {
	js, st := testStream(t, jetstream.StreamConfig{})
	w := &writer{t: t, js: js, sid: "burst"}
	w.write("s", 1, 4)
	r := NewReader(st, "")
	for range 20 {
		if _, err := collect(t, r, "burst", ReadOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Consumers == 0 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%d consumers left after 20 reads", info.State.Consumers)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
