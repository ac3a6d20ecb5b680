package extproc

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssetrack/ssetrack/extproc/session"
	"github.com/ssetrack/ssetrack/extproc/sse"
)

// playStream runs body through a fresh exchange of session "S" of srv, cut
// at the given offsets, and returns what the client gets.
func playStream(srv *Server, body []byte, cuts []int, resume string) []byte {
	x := newExchange(srv, context.Background())
	x.sseBody = true
	x.sessionID = "S"
	if resume != "" {
		x.lastEventID, x.hasLastEventID = resume, true
	}
	x.openStream(context.Background(), false)
	defer x.close()
	var out []byte
	prev := 0
	for i := 0; i <= len(cuts); i++ {
		end := len(body)
		if i < len(cuts) {
			end = cuts[i]
		}
		chunk := append([]byte(nil), body[prev:end]...)
		got, _ := x.process(chunk, i == len(cuts))
		out = append(out, got...)
		prev = end
	}
	return out
}

func newFuzzServer(t testing.TB) *Server { return newFuzzServerRecording(t, nil) }

// newFuzzServerRecording is newFuzzServer with rec as its journal, if not nil.
func newFuzzServerRecording(t testing.TB, rec *recorder) *Server {
	table := session.NewTable(session.Config{Window: 16})
	t.Cleanup(table.Close)
	cfg := Config{Sessions: table, Registerer: prometheus.NewRegistry(), MaxEventSize: 256}
	if rec != nil {
		cfg.Recorder = rec
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// FuzzProcessorSplit checks that where chunks are cut changes nothing: two
// streams of one session (the second a resume) give the client the same
// bytes, and the journal the same events, whether each arrives whole or cut
// at fuzzer-chosen offsets; every record the journal gets is consistent
// (recordsConsistent). It also checks that the first stream of a session is
// never shortened by more than what dedup may drop: with distinct ids, it is
// forwarded exactly.
func FuzzProcessorSplit(f *testing.F) {
	f.Add([]byte("id: 1\ndata: a\n\nid: 2\ndata: b\n\n"), []byte("id: 2\ndata: b\n\nid: 3\ndata: c\n\n"), []byte{3, 9, 17}, "1")
	f.Add([]byte("\xef\xbb\xbfid: 1\r\ndata: x\r\n\r\n: c\r\rid: 1\rdata: y\r\r"), []byte("id: 1\n\ndata\n\nid:\x00\n\n"), []byte{1, 2, 40}, "")
	f.Add([]byte("data: "+string(bytes.Repeat([]byte("z"), 300))+"\n\nid: 9\ndata: q\n\n"), []byte("id: 9\ndata: q\n\npartial"), []byte{100, 150, 55}, "9")
	f.Fuzz(func(t *testing.T, first, second, cutBytes []byte, resume string) {
		var wholeRec, cutRec recorder
		whole := newFuzzServerRecording(t, &wholeRec)
		cut := newFuzzServerRecording(t, &cutRec)
		cuts := func(n int) []int {
			var out []int
			prev := 0
			for _, c := range cutBytes {
				if n == 0 {
					break
				}
				p := prev + int(c)%(n+1)
				if p > n {
					break
				}
				out = append(out, p)
				prev = p
			}
			return out
		}
		a1 := playStream(whole, first, nil, "")
		b1 := playStream(cut, first, cuts(len(first)), "")
		if !bytes.Equal(a1, b1) {
			t.Fatalf("first stream: whole gave %q, cut gave %q", a1, b1)
		}
		a2 := playStream(whole, second, nil, resume)
		b2 := playStream(cut, second, cuts(len(second)), resume)
		if !bytes.Equal(a2, b2) {
			t.Fatalf("second stream: whole gave %q, cut gave %q", a2, b2)
		}
		if len(a2) > len(second) || len(a1) > len(first) {
			t.Fatalf("forwarded more than received")
		}
		if err := recordsConsistent(cutRec.recs); err != nil {
			t.Fatalf("cut: %v", err)
		}
		if w, c := journalEvents(wholeRec.recs), journalEvents(cutRec.recs); w != c {
			t.Fatalf("journal: whole got %s, cut got %s", w, c)
		}
	})
}

// journalEvents describes the events of recs in order: their bytes (a
// record may end in the CR of a CRLF whose LF opens the next), sequence
// numbers and ids.
func journalEvents(recs []session.Record) string {
	var data []byte
	var seqs []string
	for _, r := range recs {
		data = append(data, r.Data...)
		for i := range r.Count {
			seqs = append(seqs, strconv.FormatUint(r.FirstSeq+uint64(i), 10))
		}
	}
	return fmt.Sprintf("%q seqs %v", data, seqs)
}

// recordsConsistent checks each record against its bytes: Count events,
// numbered FirstSeq..LastSeq, the first and last non-empty ids FirstID and
// LastID, and numbers that follow on from the record before.
func recordsConsistent(recs []session.Record) error {
	var next uint64 = 1
	for i, r := range recs {
		if r.Count == 0 {
			continue // the LF of the last record's CRLF, or a stream's end
		}
		p := sse.Parser{MidStream: true} // a record never holds the stream's BOM
		p.Feed(r.Data)
		n, first, last := 0, "", ""
		for seg, ok := p.Next(); ok; seg, ok = p.Next() {
			if seg.Kind != sse.KindBlock || !seg.HasData && !seg.HasID {
				continue
			}
			n++
			if seg.HasID && len(seg.ID) > 0 {
				if first == "" {
					first = string(seg.ID)
				}
				last = string(seg.ID)
			}
		}
		if tail := p.Flush(); len(tail) > 0 {
			return fmt.Errorf("record %d ends inside an event: %q", i, tail)
		}
		if n != r.Count || r.FirstSeq != next || r.LastSeq != r.FirstSeq+uint64(n)-1 ||
			first != r.FirstID || last != r.LastID {
			return fmt.Errorf("record %d %q: count %d, seqs %d..%d, ids %q..%q; its bytes hold %d events from seq %d, ids %q..%q",
				i, r.Data, r.Count, r.FirstSeq, r.LastSeq, r.FirstID, r.LastID, n, next, first, last)
		}
		next = r.LastSeq + 1
	}
	return nil
}

// dedupStreams is a session of two SSE streams built from fuzz input, the
// second a resume of the first, with what the client must receive of each.
type dedupStreams struct {
	body, want [2][]byte
	resume     string // the second stream's Last-Event-ID; "" for none
}

// buildDedupStreams turns ops into two streams of one session. Each op is a
// kind byte and, when present, a parameter byte p; the low bits of p pick the
// line ending, the rest the variant. Kinds (op%8):
//
//	0, 1, 7  an event with a new id ("id: eN", "id:eN", fields reordered,
//	         an event field, a comment line inside the block, several data
//	         lines), data taken from the following p%16 op bytes
//	2        a repeat of an id the session delivered earlier, rendered anew
//	3        a comment line between blocks (a heartbeat), or (p odd) an
//	         event with a new id first and a delivered one last
//	4        an event without an id, or with an empty id (never dropped)
//	5        end of the first stream; the rest of ops is the second
//	6        a retry-only block, or (ending the stream) a partial event
//	         whose id is a repeat, which is forwarded as it is
//
// The want of each stream is its body minus the blocks the session must
// drop, following DESIGN.md "Dedup": a block whose id the session already
// delivered, except an id the resumed stream delivered after the client's
// Last-Event-ID, which the client says it lacks, delivered once more.
// resumeSel picks the second stream's Last-Event-ID: none, the first
// stream's last delivered id, or an earlier one.
func buildDedupStreams(ops []byte, resumeSel uint8) dedupStreams {
	const maxEvents = 400 // well under the session window (1024): nothing is evicted
	var d dedupStreams
	cur := 0
	delivered := map[string]bool{} // ids the session delivered
	var order []string             // ids in the order delivered, first stream and then second
	firstStream := 0               // len(order) at the end of the first stream
	redeliverable := map[string]bool{}
	fresh := 0
	emit := func(block string, drop bool) {
		d.body[cur] = append(d.body[cur], block...)
		if !drop {
			d.want[cur] = append(d.want[cur], block...)
		}
	}
	// deliver applies the dedup rule to id and reports whether it is dropped.
	deliver := func(id string) bool {
		switch {
		case !delivered[id]:
			delivered[id] = true
			order = append(order, id)
			return false
		case redeliverable[id]:
			delete(redeliverable, id)
			return false
		}
		return true
	}
	startSecond := func() {
		cur = 1
		firstStream = len(order)
		if firstStream == 0 {
			return
		}
		switch resumeSel % 3 {
		case 1:
			d.resume = order[firstStream-1]
		case 2:
			k := int(resumeSel/3) % firstStream
			d.resume = order[k]
			for _, id := range order[k+1 : firstStream] {
				redeliverable[id] = true
			}
		}
	}
	for i := 0; i < len(ops) && len(order) < maxEvents; {
		kind := ops[i] % 8
		i++
		var p byte
		if i < len(ops) {
			p = ops[i]
			i++
		}
		eol := []string{"\n", "\r\n", "\r"}[p%3]
		v := p / 3
		data := func() string {
			n := min(int(v%16), len(ops)-i)
			b := []byte(string(ops[i : i+n]))
			i += n
			for j, c := range b {
				if c == '\r' || c == '\n' {
					b[j] = '.'
				}
			}
			return string(b)
		}
		switch {
		case kind == 5 && cur == 0:
			startSecond()
		case kind == 0 || kind == 1 || kind == 7 || kind == 5:
			fresh++
			id := "e" + strconv.Itoa(fresh)
			var block string
			switch (v / 16) % 6 {
			case 0:
				block = "id: " + id + eol + "data: " + data() + eol
			case 1:
				block = "id:" + id + eol + "data:" + data() + eol
			case 2:
				block = "data: " + data() + eol + "id: " + id + eol
			case 3:
				block = "event: tick" + eol + "id: " + id + eol + "data: " + data() + eol
			case 4:
				block = "id: " + id + eol + ": inside the block" + eol + "data: " + data() + eol
			default:
				block = "id: " + id + eol + "data: " + data() + eol + "data" + eol + "data: 2" + eol
			}
			emit(block+eol, deliver(id))
		case kind == 2 && len(order) > 0:
			id := order[int(v)%len(order)]
			emit("id: "+id+eol+"data: again "+data()+eol+eol, deliver(id))
		case kind == 3 && v%2 == 1 && len(order) > 0:
			// A new id first, a delivered one last: the first decides (as
			// it does before the block ends), so it goes on, and both ids
			// are the session's latest, the last one the client's
			// lastEventId; a repeat of either is a duplicate.
			fresh++
			first := "n" + strconv.Itoa(fresh)
			id := order[int(v/2)%len(order)]
			block := "id: " + first + eol + "data: " + data() + eol + "id: " + id + eol + eol
			deliver(first)
			order = append(slices.DeleteFunc(order, func(o string) bool { return o == id }), id)
			delete(redeliverable, id)
			emit(block, false)
		case kind == 2 || kind == 3:
			emit(":"+data()+eol, false)
		case kind == 4 && v%2 == 0:
			emit("data: "+data()+eol+eol, false)
		case kind == 4:
			emit("id"+eol+"data: "+data()+eol+eol, false)
		case kind == 6 && v%2 == 0:
			emit("retry: "+strconv.Itoa(int(v))+eol+eol, false)
		default: // kind 6: a partial event ends the stream
			id := "x"
			if len(order) > 0 {
				id = order[int(v)%len(order)]
			}
			emit("id: "+id+eol+"data: cut "+data(), false)
			if cur == 1 {
				return d
			}
			startSecond()
		}
	}
	if cur == 0 {
		startSecond()
	}
	return d
}

// offsets turns chunk sizes (1+c%32 bytes each, the rest in a last chunk)
// into cut offsets for playStream, consuming sizes from *cuts.
func offsets(n int, cuts *[]byte) []int {
	var out []int
	at := 0
	for len(*cuts) > 0 && at < n {
		at = min(at+1+int((*cuts)[0]%32), n)
		*cuts = (*cuts)[1:]
		out = append(out, at)
	}
	return out
}

// FuzzProcessorDedup builds two streams of one session (the second a resume
// that repeats ids the session already delivered; see buildDedupStreams),
// plays them through the processor whole and cut into fuzzer-chosen chunks,
// and checks that the client gets exactly each stream minus its duplicate
// blocks, byte for byte.
func FuzzProcessorDedup(f *testing.F) {
	// Stream 1: e1, e2, a comment, an event without id. Stream 2: e1 and e2
	// again, new e3, e3 again, a retry block, a partial event repeating e2.
	// Without Last-Event-ID, after the last id (e2), after e1 (e2 may come again).
	ops := []byte{0, 3, 'a', 0, 55, 'b', 'c', 3, 0, 4, 0, 5, 0, 2, 0, 2, 4, 'q', 0, 2, 2, 6, 'r', 's', 6, 0, 6, 3, 'z'}
	for _, resume := range []uint8{0, 1, 2} {
		f.Add(ops, []byte{1, 2, 3}, resume)
	}
	// Every kind and variant, CR line endings, one byte per chunk.
	f.Add([]byte{0, 2, 0, 50, 0, 98, 0, 146, 0, 194, 7, 242, 2, 2, 4, 2, 4, 5, 'i', 3, 2, 6, 2, 5, 0, 2, 2, 2, 5, 'j', 6, 5, 'k'}, make([]byte, 200), uint8(5))
	f.Fuzz(func(t *testing.T, ops, cuts []byte, resumeSel uint8) {
		d := buildDedupStreams(ops, resumeSel)
		newServer := func() *Server {
			table := session.NewTable(session.Config{Window: 1024})
			t.Cleanup(table.Close)
			srv, err := New(Config{Sessions: table, Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			return srv
		}
		whole, cut := newServer(), newServer()
		for s, resume := range []string{"", d.resume} {
			if got := playStream(whole, d.body[s], nil, resume); !bytes.Equal(got, d.want[s]) {
				t.Fatalf("stream %d whole (Last-Event-ID %q): client got\n%q\nwant\n%q\nof\n%q", s+1, resume, got, d.want[s], d.body[s])
			}
			at := offsets(len(d.body[s]), &cuts)
			if got := playStream(cut, d.body[s], at, resume); !bytes.Equal(got, d.want[s]) {
				t.Fatalf("stream %d cut at %v (Last-Event-ID %q): client got\n%q\nwant\n%q\nof\n%q", s+1, at, resume, got, d.want[s], d.body[s])
			}
		}
	})
}
