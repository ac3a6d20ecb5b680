package history

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// testStream starts an in-process JetStream server on a random port and
// creates a stream laid out as ssetrack's (one subject per session,
// direct gets allowed). The tests here cannot use package journal (it
// imports this one), so they write batches by hand; the Example writes
// them through journal.
func testStream(t testing.TB, cfg jetstream.StreamConfig) (jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name == "" {
		cfg.Name = DefaultStream
	}
	cfg.Subjects = []string{DefaultSubjectPrefix + ".>"}
	cfg.AllowDirect = true
	st, err := js.CreateStream(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return js, st
}

// sseEvents renders events with ids "<tag>-<first>".."<tag>-<first+n-1>"
// and line ending eol, as the processor records them.
func sseEvents(tag string, first, n int, eol string) []byte {
	var b strings.Builder
	for i := first; i < first+n; i++ {
		fmt.Fprintf(&b, "id: %s-%d%sdata: {\"n\":%d}%s%s", tag, i, eol, i, eol, eol)
	}
	return []byte(b.String())
}

// header builds a batch message's headers by hand.
func header(b Batch) nats.Header {
	h := nats.Header{}
	h.Set(HeaderSession, EncodeHeaderValue(b.Session))
	h.Set(HeaderStream, EncodeHeaderValue(b.Stream))
	if b.FirstID != "" {
		h.Set(HeaderFirstID, EncodeHeaderValue(b.FirstID))
	}
	if b.LastID != "" {
		h.Set(HeaderLastID, EncodeHeaderValue(b.LastID))
	}
	h.Set(HeaderCount, strconv.Itoa(b.Count))
	h.Set(HeaderFirstSeq, strconv.FormatUint(b.FirstSeq, 10))
	h.Set(HeaderLastSeq, strconv.FormatUint(b.LastSeq, 10))
	return h
}

// writer publishes a session's batches with per-session sequence numbers,
// as one publisher would.
type writer struct {
	t   testing.TB
	js  jetstream.JetStream
	sid string
	seq uint64
}

// write stores n events of stream numbered from first (ids "<stream>-<k>").
func (w *writer) write(stream string, first, n int) {
	w.t.Helper()
	b := Batch{
		Session: w.sid, Stream: stream, Count: n,
		FirstID: fmt.Sprintf("%s-%d", stream, first), LastID: fmt.Sprintf("%s-%d", stream, first+n-1),
		FirstSeq: w.seq + 1, LastSeq: w.seq + uint64(n),
	}
	w.seq += uint64(n)
	msg := &nats.Msg{Subject: Subject("", w.sid), Header: header(b), Data: sseEvents(stream, first, n, "\n")}
	if _, err := w.js.PublishMsg(context.Background(), msg); err != nil {
		w.t.Fatal(err)
	}
}

// collect reads the session's events as "id@seq" strings.
func collect(t testing.TB, r *Reader, sid string, opts ReadOptions) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []string
	for ev, err := range r.Events(ctx, sid, opts) {
		if err != nil {
			return out, err
		}
		out = append(out, fmt.Sprintf("%s@%d", ev.ID, ev.Seq))
	}
	return out, nil
}

// want lists "<stream>-<k>@<k+off>" for k in from..to.
func want(stream string, from, to int, off int) []string {
	var out []string
	for k := from; k <= to; k++ {
		out = append(out, fmt.Sprintf("%s-%d@%d", stream, k, k+off))
	}
	return out
}
