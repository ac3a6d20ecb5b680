package history

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestReadRange reads a session's batches with batched direct gets and with
// an ordered consumer and gets the same batches, in stored order: more of
// them than one request asks for (rangeBatch), some larger than a
// request's byte bound together (rangeBatchBytes), with other sessions'
// batches and a message that is not a batch in between; from the middle;
// and stopping when fn fails.
func TestReadRange(t *testing.T) {
	js, st := testStream(t, jetstream.StreamConfig{})
	w := &writer{t: t, js: js, sid: "S"}
	other := &writer{t: t, js: js, sid: "T"}
	big := strings.Repeat("x", 256<<10)
	for i := range 600 {
		w.write("s", int(w.seq)+1, 2)
		if i%3 == 0 {
			other.write("o", int(other.seq)+1, 1)
		}
		if i == 100 {
			if _, err := js.Publish(context.Background(), Subject("", "S"), []byte("not a batch")); err != nil {
				t.Fatal(err)
			}
		}
		if i >= 500 && i < 520 { // 20 x 256 KiB: over one request's bytes
			w.seq++
			msg := &nats.Msg{Subject: Subject("", "S"), Data: []byte("id: s-" + fmt.Sprint(w.seq) + "\ndata: " + big + "\n\n"),
				Header: header(Batch{Session: "S", Stream: "s", Count: 1, FirstSeq: w.seq, LastSeq: w.seq})}
			if _, err := js.PublishMsg(context.Background(), msg); err != nil {
				t.Fatal(err)
			}
		}
	}
	subj := Subject("", "S")
	last, err := LastMessage(context.Background(), st, subj)
	if err != nil {
		t.Fatal(err)
	}
	read := func(js jetstream.JetStream, from uint64, stopAfter int) ([]uint64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var seqs []uint64
		stop := errors.New("stop")
		read := ReadRange // nil js: an ordered consumer
		if js != nil {
			read = readBatches // no fallback
		}
		err := read(ctx, js, st, subj, from, last.Sequence, func(b Batch) error {
			seqs = append(seqs, b.FirstSeq)
			if len(seqs) == stopAfter {
				return stop
			}
			return nil
		})
		if errors.Is(err, stop) {
			err = nil
		}
		return seqs, err
	}
	for _, tc := range []struct {
		name      string
		from      uint64
		stopAfter int
	}{{"whole", 1, 0}, {"from the middle", last.Sequence / 2, 0}, {"stopped", 1, 300}} {
		direct, err := read(js, tc.from, tc.stopAfter)
		if err != nil {
			t.Fatalf("%s: batched direct gets: %v", tc.name, err)
		}
		consumer, err := read(nil, tc.from, tc.stopAfter)
		if err != nil {
			t.Fatalf("%s: ordered consumer: %v", tc.name, err)
		}
		if !slices.Equal(direct, consumer) {
			t.Errorf("%s: batched direct gets read %d batches, the consumer %d; first difference at %d",
				tc.name, len(direct), len(consumer), firstDiff(direct, consumer))
		}
		if !slices.IsSorted(direct) || len(direct) == 0 {
			t.Errorf("%s: read %d batches, not in order", tc.name, len(direct))
		} else if tc.stopAfter == 0 && direct[len(direct)-1] != w.seq-1 {
			t.Errorf("%s: the last batch read starts at %d, want %d", tc.name, direct[len(direct)-1], w.seq-1)
		}
		if tc.name == "whole" && len(direct) != 620 {
			t.Errorf("whole: read %d batches, want 620", len(direct))
		}
		if tc.stopAfter > 0 && len(direct) != tc.stopAfter {
			t.Errorf("stopped: fn called %d times after failing at %d", len(direct), tc.stopAfter)
		}
	}
}

func firstDiff(a, b []uint64) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestReadAnswer feeds readAnswer the answers a server sends: a batch and
// its end, a late answer to an earlier try, no message, and the one plain
// message of a server that predates batched direct gets.
func TestReadAnswer(t *testing.T) {
	stored := func(reply string, seq uint64, pending bool) *nats.Msg {
		h := header(Batch{Session: "S", Stream: "s", Count: 1, FirstSeq: seq, LastSeq: seq})
		h.Set(jetstream.SequenceHeader, fmt.Sprint(seq))
		h.Set(jetstream.SubjectHeader, "ssetrack.events.S")
		h.Set(jetstream.TimeStampHeaer, time.Now().UTC().Format(time.RFC3339Nano))
		if pending {
			h.Set(numPendingHeader, "0")
		}
		return &nats.Msg{Subject: reply, Header: h, Data: []byte("data: x\n\n")}
	}
	status := func(reply, code string) *nats.Msg {
		return &nats.Msg{Subject: reply, Header: nats.Header{"Status": []string{code}}}
	}
	run := func(first bool, msgs ...*nats.Msg) (taken []uint64, next uint64, again bool, err error) {
		nextMsg := func() (*nats.Msg, error) {
			if len(msgs) == 0 {
				return nil, context.DeadlineExceeded // the try ran out
			}
			m := msgs[0]
			msgs = msgs[1:]
			return m, nil
		}
		next, again, err = readAnswer(nextMsg, "r.1", 7, &first, func(m *jetstream.RawStreamMsg) (bool, error) {
			taken = append(taken, m.Sequence)
			return false, nil
		})
		return taken, next, again, err
	}
	taken, next, again, err := run(true, stored("r.0", 3, true), stored("r.1", 7, true), stored("r.1", 9, true), status("r.1", "204"))
	if err != nil || fmt.Sprint(taken) != "[7 9]" || next != 10 || again {
		t.Errorf("a batch: took %v, next %d, again %v, err %v; want [7 9], 10, false, nil", taken, next, again, err)
	}
	taken, next, again, err = run(true, status("r.1", "404"))
	if err != nil || len(taken) != 0 || next != 7 || !again {
		t.Errorf("no message: took %v, next %d, again %v, err %v; want none, 7, true, nil", taken, next, again, err)
	}
	taken, next, again, err = run(true, stored("r.1", 7, true))
	if err != nil || fmt.Sprint(taken) != "[7]" || next != 8 || !again {
		t.Errorf("an answer cut short: took %v, next %d, again %v, err %v; want [7], 8, true, nil", taken, next, again, err)
	}
	if _, _, _, err = run(true, stored("r.1", 7, false)); !errors.Is(err, errNoBatches) {
		t.Errorf("one plain message: err %v, want errNoBatches", err)
	}
	// A server before 2.11 in a cluster being upgraded: its plain message is
	// the whole answer.
	if taken, next, again, err = run(false, stored("r.1", 7, false)); err != nil || fmt.Sprint(taken) != "[7]" || next != 8 || again {
		t.Errorf("a plain message after batches were answered: took %v, next %d, again %v, err %v; want [7], 8, false, nil", taken, next, again, err)
	}
}

// TestReadRangeNoResponder: a direct get nobody answers (nats.go turns the
// server's 503 into nats.ErrNoResponders) is asked again until the read's
// budget ends, as a replica's subscription may not have reached the
// client's server yet.
func TestReadRangeNoResponder(t *testing.T) {
	js, _ := testStream(t, jetstream.StreamConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	asked := 0
	err := readRange(ctx, js.Conn(), "$JS.API.DIRECT.GET.NOSUCH", "ssetrack.events.S", 1, 10, func(*jetstream.RawStreamMsg) (bool, error) {
		asked++
		return false, nil
	})
	if !errors.Is(err, context.DeadlineExceeded) || asked != 0 {
		t.Errorf("err %v after %d messages, want the budget's end and none", err, asked)
	}
}

// TestReadRangeSlowLink reads through a link that delays what the server
// sends by 20 ms a write: answers take longer than a try's minimum share,
// and a read without a deadline must still get every batch.
func TestReadRangeSlowLink(t *testing.T) {
	js, st := testStream(t, jetstream.StreamConfig{})
	w := &writer{t: t, js: js, sid: "S"}
	for range 20 {
		w.write("s", int(w.seq)+1, 2)
	}
	slow := delayingProxy(t, js.Conn().ConnectedUrl(), 20*time.Millisecond)
	nc, err := nats.Connect(slow)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sjs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	subj := Subject("", "S")
	last, err := LastMessage(context.Background(), st, subj)
	if err != nil {
		t.Fatal(err)
	}
	for _, budget := range []time.Duration{0, 2 * time.Second} {
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if budget > 0 {
			ctx, cancel = context.WithTimeout(ctx, budget)
		}
		var n atomic.Int32
		done := make(chan error, 1)
		go func() {
			done <- readBatches(ctx, sjs, st, subj, 1, last.Sequence, func(Batch) error { n.Add(1); return nil })
		}()
		select {
		case err := <-done:
			if err != nil || n.Load() != 20 {
				t.Errorf("budget %v: read %d of 20 batches, err %v", budget, n.Load(), err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("budget %v: the read had not ended after 20 s, with %d of 20 batches", budget, n.Load())
		}
		cancel()
	}
}

// delayingProxy forwards TCP connections to the NATS server at url,
// holding each write from the server for delay, and returns its URL.
func delayingProxy(t *testing.T, url string, delay time.Duration) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	target := strings.TrimPrefix(url, "nats://")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go func() { _, _ = io.Copy(s, c) }()
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						time.Sleep(delay)
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return "nats://" + l.Addr().String()
}
