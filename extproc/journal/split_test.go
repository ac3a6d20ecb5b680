package journal

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// bigRecord is a record of events with the given data sizes, ids e-<seq>
// from seq 1; lead is prepended (the LF owed to an earlier CRLF).
func bigRecord(lead string, sizes ...int) session.Record {
	var b strings.Builder
	b.WriteString(lead)
	for i, n := range sizes {
		fmt.Fprintf(&b, "id: e-%d\r\ndata: %s\r\n\r\n", i+1, strings.Repeat("x", n))
	}
	return session.Record{Session: "s", Stream: "t", FirstSeq: 1, LastSeq: uint64(len(sizes)), Count: len(sizes),
		FirstID: "e-1", LastID: fmt.Sprintf("e-%d", len(sizes)), Data: []byte(b.String()), End: true}
}

func TestSplitRecord(t *testing.T) {
	rec := bigRecord("\n", 300, 300, 5000, 300, 300, 300)
	parts, tooLarge := splitRecord(rec, 1000)
	if tooLarge != 1 {
		t.Errorf("tooLarge %d, want 1", tooLarge)
	}
	var joined []byte
	var seqs []string
	for i, p := range parts {
		if len(p.Data) > 1000 {
			t.Errorf("part %d: %d bytes", i, len(p.Data))
		}
		if p.Count > 0 && (p.LastSeq-p.FirstSeq+1 != uint64(p.Count) || p.FirstID != fmt.Sprintf("e-%d", p.FirstSeq) || p.LastID != fmt.Sprintf("e-%d", p.LastSeq)) {
			t.Errorf("part %d: %+v", i, p)
		}
		if p.End != (i == len(parts)-1) {
			t.Errorf("part %d: End %v", i, p.End)
		}
		seqs = append(seqs, fmt.Sprintf("%d-%d", p.FirstSeq, p.LastSeq))
		joined = append(joined, p.Data...)
	}
	// Event 3 is left out, everything else kept in order, byte for byte.
	third := []byte(fmt.Sprintf("id: e-3\r\ndata: %s\r\n\r\n", strings.Repeat("x", 5000)))
	if want := bytes.Replace(rec.Data, third, nil, 1); !bytes.Equal(joined, want) {
		t.Errorf("parts joined differ from the record without event 3")
	}
	if got, want := strings.Join(seqs, " "), "1-2 4-6"; got != want {
		t.Errorf("parts %s, want %s", got, want)
	}
}

// TestRecordOverMaxPayloadIsSplit publishes a record larger than the
// server's max_payload: its events are stored in several batches, and an
// event larger than max_payload is counted, not lost silently with its
// neighbours.
func TestRecordOverMaxPayloadIsSplit(t *testing.T) {
	ns := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), MaxPayload: 64 << 10})
	nc := connect(t, ns.ClientURL())
	var lostMu sync.Mutex
	var lost []string
	cfg := Config{Lost: func(sessionID, stream string) {
		lostMu.Lock()
		lost = append(lost, sessionID+"/"+stream)
		lostMu.Unlock()
	}}
	p := newPublisher(t, nc, cfg)
	sizes := make([]int, 0, 12)
	for i := range 12 {
		sizes = append(sizes, 20<<10)
		if i == 5 {
			sizes[i] = 100 << 10 // over max_payload alone
		}
	}
	rec := bigRecord("", sizes...)
	p.Append(rec)
	waitFor(t, 10*time.Second, "11 events published", func() bool { return statsOf(t, p).Events == 11 })
	var stored []byte
	n := 0
	for _, b := range readAll(t, jsOf(t, nc), cfg, "s") {
		stored = append(stored, b.Data...)
		n += b.Count
	}
	sixth := []byte(fmt.Sprintf("id: e-6\r\ndata: %s\r\n\r\n", strings.Repeat("x", 100<<10)))
	if want := bytes.Replace(rec.Data, sixth, nil, 1); n != 11 || !bytes.Equal(stored, want) {
		t.Errorf("stored %d events, %d bytes; want 11 events, the record without event 6", n, len(stored))
	}
	if got := testutil.ToFloat64(p.m.dropped.WithLabelValues(dropTooLarge)); got != 1 {
		t.Errorf("too_large drops %v, want 1", got)
	}
	lostMu.Lock()
	if want := []string{"s/t"}; !slices.Equal(lost, want) {
		t.Errorf("Config.Lost told of %q, want %q", lost, want)
	}
	lostMu.Unlock()
	if h := p.held.Load(); h != 0 {
		t.Errorf("%d records still held", h)
	}

	// Two records that fit alone but not together with headers go in two
	// batches: a batch of several records is capped by max_payload too.
	half := bigRecord("", 32_700)
	half.Session, half.End = "s2", false
	p.Append(half)
	second := bigRecord("", 32_700)
	second.Session, second.FirstSeq, second.LastSeq, second.FirstID, second.LastID, second.End = "s2", 2, 2, "e-2", "e-2", false
	second.Data = bytes.Replace(second.Data, []byte("e-1"), []byte("e-2"), 1)
	p.Append(second)
	waitFor(t, 10*time.Second, "both records published", func() bool { return statsOf(t, p).Events == 13 })
	if got := testutil.ToFloat64(p.m.dropped.WithLabelValues(dropGaveUp)); got != 0 {
		t.Errorf("%v records lost to publish failures", got)
	}
}

// FuzzSplitRecord checks splitRecord on any bytes: parts stay within the
// limit unless they hold no event, and the parts joined are the record
// with the too-large events left out, in order.
func FuzzSplitRecord(f *testing.F) {
	f.Add([]byte("id: 1\ndata: a\n\nid: 2\ndata: bb\n\n"), 16)
	f.Add([]byte("\nid: 1\r\ndata: a\r\n\r\nid: 2\r\n\r\n: c\r\n"), 8)
	f.Add([]byte("data: x\r\rdata: y\r\r"), 9)
	f.Fuzz(func(t *testing.T, data []byte, limit int) {
		limit = 1 + abs(limit)%64
		rec := session.Record{Session: "s", Stream: "t", FirstSeq: 1, LastSeq: 100, Count: 100, Data: data}
		parts, tooLarge := splitRecord(rec, limit)
		var joined []byte
		count := 0
		for _, p := range parts {
			if len(p.Data) > limit && p.Count > 0 {
				t.Fatalf("part of %d events has %d bytes, limit %d", p.Count, len(p.Data), limit)
			}
			count += p.Count
			joined = append(joined, p.Data...)
		}
		if len(joined) > len(data) || (tooLarge == 0 && !bytes.Equal(joined, data)) {
			t.Fatalf("parts joined %q, record %q", joined, data)
		}
		if len(joined) == len(data) && tooLarge > 0 {
			t.Fatalf("%d events left out, yet every byte kept", tooLarge)
		}
	})
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// TestFlushPastTooLargeEvent: a record whose last event is larger than the
// server's max_payload never gets its last number stored; a Flush of the
// session must not wait for it (a replay would then wait its whole budget
// and answer incomplete for every stream of the session).
func TestFlushPastTooLargeEvent(t *testing.T) {
	ns := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), MaxPayload: 64 << 10})
	p := newPublisher(t, connect(t, ns.ClientURL()), Config{Batch: BatchConfig{MaxDelay: time.Hour}})
	p.Append(bigRecord("", 1<<10, 100<<10)) // seqs 1, 2; event 2 over max_payload
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Flush(ctx, "s"); err != nil {
		t.Fatalf("flush: %v; want it done once event 1 is stored and event 2 given up", err)
	}
	if got := testutil.ToFloat64(p.m.dropped.WithLabelValues(dropTooLarge)); got != 1 {
		t.Errorf("too_large drops %v, want 1", got)
	}
}
