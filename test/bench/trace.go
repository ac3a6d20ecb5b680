package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

// transportWaits is what a Go execution trace of an ext_proc server process (runtime/trace,
// as net/http/pprof's /debug/pprof/trace serves it) says about where its streams' messages
// waited. gRPC-Go's server transport (google.golang.org/grpc/internal/transport) runs, per
// HTTP/2 connection, one reader goroutine, which reads the frames the client (Envoy) sends
// and hands each stream its DATA as it reads it, and one writer goroutine (loopyWriter),
// which writes the answers and the flow-control window updates; each stream runs its
// handler in a goroutine of its own.
//
// A reader blocks on the network only when a read finds its socket empty, so whatever had
// reached the socket before such a block has been handed on (whole frames of it; frames are
// never reordered). HTTP/2 keeps a connection's frames in order, so when Envoy resets a
// stream (on a message timeout it ends the stream and resets it), the reset follows any of
// the stream's data Envoy had written. A stream whose handler waited longer than
// message_timeout for its next message and was then woken by its reader reading the reset
// (Abandoned) had nothing of it, neither a message nor the reset, in ssetrack's socket
// until the reader's last block on its empty socket during that wait: the time from that
// block to the reset (the gap) is all of the handler's wait that can have been spent
// inside ssetrack's process or socket.
type transportWaits struct {
	// Span is the length of the trace.
	Span time.Duration
	// Readers, Writers and Handlers count the goroutines of each kind the trace shows
	// blocking at least once.
	Readers, Writers, Handlers int
	// ReaderTime is the readers' traced time, ReaderIdleTime the part of it they spent
	// blocked on an empty socket.
	ReaderTime, ReaderIdleTime time.Duration
	// ReaderRunnableMax, WriterRunnableMax and HandlerRunnableMax are the longest a
	// reader, a writer or a handler was ready to run and waited for a CPU.
	ReaderRunnableMax, WriterRunnableMax, HandlerRunnableMax time.Duration
	// WriterBlockedMax is the longest a writer blocked on a full socket (the client not
	// reading).
	WriterBlockedMax time.Duration
	// HandlerIdleMax is the longest a handler waited for its stream's next message.
	HandlerIdleMax time.Duration
	// Abandoned counts the streams whose handler waited longer than messageTimeout for
	// their next message, was woken by its connection's reader reading the stream's
	// RST_STREAM, and ended without another message. AbandonedGapMax is, over them, the
	// longest time from the reader's last block on its empty socket during the wait to
	// its reading the reset (the whole wait if it never blocked).
	Abandoned       int
	AbandonedGapMax time.Duration
	// LateMessages and LateEnds count the other waits of over messageTimeout for a next
	// message: woken by the reader reading data, then another message came (LateMessages)
	// or the stream ended (LateEnds).
	LateMessages, LateEnds int
}

// add merges o, another trace's, into w: counts and times add up, longest waits are
// the longest of both.
func (w *transportWaits) add(o transportWaits) {
	w.Span += o.Span
	w.Readers += o.Readers
	w.Writers += o.Writers
	w.Handlers += o.Handlers
	w.ReaderTime += o.ReaderTime
	w.ReaderIdleTime += o.ReaderIdleTime
	w.ReaderRunnableMax = max(w.ReaderRunnableMax, o.ReaderRunnableMax)
	w.WriterRunnableMax = max(w.WriterRunnableMax, o.WriterRunnableMax)
	w.HandlerRunnableMax = max(w.HandlerRunnableMax, o.HandlerRunnableMax)
	w.WriterBlockedMax = max(w.WriterBlockedMax, o.WriterBlockedMax)
	w.HandlerIdleMax = max(w.HandlerIdleMax, o.HandlerIdleMax)
	w.Abandoned += o.Abandoned
	w.AbandonedGapMax = max(w.AbandonedGapMax, o.AbandonedGapMax)
	w.LateMessages += o.LateMessages
	w.LateEnds += o.LateEnds
}

// Goroutine kinds, told apart by the functions on the stack a goroutine blocks with.
const (
	kindOther = iota
	kindReader
	kindWriter
	kindHandler
)

// kindOf returns the kind of goroutine whose own stack, when it blocked, was frames.
func kindOf(frames string) int {
	switch {
	case strings.Contains(frames, "_ExternalProcessor_Process_Handler"):
		return kindHandler
	case strings.Contains(frames, "transport.(*loopyWriter).run") && strings.Contains(frames, "transport.NewServerTransport"):
		return kindWriter // a server's: a client's starts elsewhere
	case strings.Contains(frames, "transport.(*http2Server).HandleStreams"):
		return kindReader
	}
	return kindOther
}

// Why a long wait for a message ended, from the waker's stack.
const (
	wokenOther = iota
	wokenByReset
	wokenByData
)

// wokenBy tells, from ev, a goroutine's wakeup (whose stack is the waker's), whether gRPC's
// server transport woke it reading an RST_STREAM frame or a DATA frame.
func wokenBy(ev trace.Event) int {
	for f := range ev.Stack().Frames() {
		switch {
		case strings.HasSuffix(f.Func, "transport.(*http2Server).handleRSTStream"):
			return wokenByReset
		case strings.HasSuffix(f.Func, "transport.(*http2Server).handleData"):
			return wokenByData
		}
	}
	return wokenOther
}

// goSpan is a stretch of time a goroutine spent in one state.
type goSpan struct {
	state    trace.GoState
	network  bool // waiting, blocked on the network
	recvWait bool // waiting in gRPC's stream receive buffer: for its next message
	dur      time.Duration
}

// readTransportWaits reads a Go execution trace from r and returns its transportWaits. It
// fails if r is not a trace this package's golang.org/x/exp/trace can read.
func readTransportWaits(r io.Reader) (transportWaits, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return transportWaits{}, fmt.Errorf("trace: %w", err)
	}
	// longWait is a wait of over messageTimeout for a next message, and how it ended.
	type longWait struct {
		g          trace.GoID
		start, end trace.Time
		waker      trace.GoID
		by         int // wokenBy
	}
	type goState struct {
		since    trace.Time
		network  bool
		recvWait bool
		long     *longWait // the last long wait, until the goroutine waits for a message again
	}
	var (
		first, last trace.Time
		now         = map[trace.GoID]*goState{}
		kinds       = map[trace.GoID]int{}
		spans       = map[trace.GoID][]goSpan{}
		emptied     = map[trace.GoID][]trace.Time{} // when each goroutine blocked on the network
		abandons    []*longWait
		w           transportWaits
	)
	for {
		ev, err := tr.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return transportWaits{}, fmt.Errorf("trace: %w", err)
		}
		if first == 0 {
			first = ev.Time()
		}
		last = ev.Time()
		if ev.Kind() != trace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		if st.Resource.Kind != trace.ResourceGoroutine {
			continue
		}
		g := st.Resource.Goroutine()
		from, to := st.Goroutine()
		if from == to && now[g] != nil {
			// The trace restating a goroutine's state, as it does at each of its
			// generations (about every second): no transition, and no span ends.
			continue
		}
		cur := now[g]
		if cur != nil {
			d := ev.Time().Sub(cur.since)
			spans[g] = append(spans[g], goSpan{state: from, network: cur.network, recvWait: cur.recvWait, dur: d})
			if from == trace.GoWaiting && cur.recvWait && d > messageTimeout {
				cur.long = &longWait{g: g, start: cur.since, end: ev.Time(), waker: ev.Goroutine(), by: wokenBy(ev)}
			}
		} else {
			cur = &goState{}
			now[g] = cur
		}
		if to == trace.GoNotExist && cur.long != nil {
			switch cur.long.by {
			case wokenByReset:
				abandons = append(abandons, cur.long)
			case wokenByData:
				w.LateEnds++
			}
		}
		cur.since, cur.network, cur.recvWait = ev.Time(), false, false
		if from == trace.GoRunning && to != trace.GoRunning {
			// The event's stack is the goroutine's own only when it stops running; on
			// a creation or a wakeup it is the creator's or the waker's.
			var frames strings.Builder
			for f := range ev.Stack().Frames() {
				frames.WriteString(f.Func)
				frames.WriteByte('\n')
			}
			if k := kindOf(frames.String()); k != kindOther {
				kinds[g] = k
			}
			if to == trace.GoWaiting {
				cur.network = st.Reason == "network"
				cur.recvWait = strings.Contains(frames.String(), "transport.(*recvBufferReader)")
				if cur.network {
					emptied[g] = append(emptied[g], ev.Time())
				}
				if cur.recvWait && cur.long != nil {
					// It waits for a message again: the long wait ended with one.
					if cur.long.by == wokenByData {
						w.LateMessages++
					}
					cur.long = nil
				}
			}
		}
	}
	w.Span = last.Sub(first)
	for g, k := range kinds {
		for _, s := range spans[g] {
			switch {
			case s.state == trace.GoRunnable && k == kindReader:
				w.ReaderRunnableMax = max(w.ReaderRunnableMax, s.dur)
			case s.state == trace.GoRunnable && k == kindWriter:
				w.WriterRunnableMax = max(w.WriterRunnableMax, s.dur)
			case s.state == trace.GoRunnable && k == kindHandler:
				w.HandlerRunnableMax = max(w.HandlerRunnableMax, s.dur)
			case s.state == trace.GoWaiting && s.network && k == kindWriter:
				w.WriterBlockedMax = max(w.WriterBlockedMax, s.dur)
			case s.state == trace.GoWaiting && s.recvWait && k == kindHandler:
				w.HandlerIdleMax = max(w.HandlerIdleMax, s.dur)
			}
			if k == kindReader {
				w.ReaderTime += s.dur
				if s.state == trace.GoWaiting && s.network {
					w.ReaderIdleTime += s.dur
				}
			}
		}
		switch k {
		case kindReader:
			w.Readers++
		case kindWriter:
			w.Writers++
		case kindHandler:
			w.Handlers++
		}
	}
	for _, a := range abandons {
		if kinds[a.g] != kindHandler || kinds[a.waker] != kindReader {
			continue // not an ext_proc stream's, or ended otherwise (a server stop)
		}
		// The reader's last block on its empty socket, while the handler waited, before
		// it read the reset; without one, the whole wait is unaccounted for.
		gap := a.end.Sub(a.start)
		ts := emptied[a.waker]
		if i, _ := slices.BinarySearch(ts, a.end); i > 0 && ts[i-1] >= a.start {
			gap = a.end.Sub(ts[i-1])
		}
		w.Abandoned++
		w.AbandonedGapMax = max(w.AbandonedGapMax, gap)
	}
	return w, nil
}

// messageTimeout is the ext_proc filter's message_timeout in envoy/envoy.yaml, the config
// BenchmarkPerf runs (TestMessageTimeoutMatchesEnvoyConfig checks it).
const messageTimeout = 200 * time.Millisecond

// traceRounds is the traced run's rounds, each setup in turn in each, every round's
// envoy-ssetrack setup traced: Envoy's timeouts come in bursts, and some rounds have none.
const traceRounds = 3

// traceSeconds is how long a trace runs from the setup's first (sizing) run on: long
// enough for all of it, about 8 times the benchmark time (12 s at 1s).
func traceSeconds(benchtime string) int {
	d, err := time.ParseDuration(perfTime(benchtime))
	if err != nil { // a count of runs (-benchtime 100x): short ones
		return 12
	}
	return max(12, int(math.Ceil(8*d.Seconds()))+4)
}

// traced is what tracedRun measured.
type traced struct {
	rs      results // the run's benchmark lines, parsed
	raw     string  // and as printed
	seconds int     // traceSeconds
	traces  int
	waits   transportWaits // over all traces
}

// tracedRun runs BenchmarkPerf's mcp workload, envoy-noop and envoy-ssetrack taking turns,
// with traces of ssetrack's process and Envoy's dispatcher stats (PERF_TRACE_DIR), and
// reads the traces.
func tracedRun(root, benchtime string) (traced, error) {
	dir, err := os.MkdirTemp("", "ssetrack-bench-trace-")
	if err != nil {
		return traced{}, err
	}
	defer os.RemoveAll(dir)
	secs := traceSeconds(benchtime)
	args := []string{"test", "-run", "^$", "-bench", "^BenchmarkPerf$/^mcp$/^envoy-(noop|ssetrack)(#[0-9]+)?$",
		"-benchtime", perfTime(benchtime), "-timeout", "30m", "./test/"}
	stdout, err := goTest(root, args, []string{"PERF_TRACE_DIR=" + dir, "PERF_TRACE_SECONDS=" + strconv.Itoa(secs),
		"PERF_ROUNDS=" + strconv.Itoa(traceRounds)})
	if err != nil {
		return traced{}, err
	}
	t := traced{rs: parse(stdout), raw: benchLines(stdout), seconds: secs}
	files, _ := filepath.Glob(filepath.Join(dir, "trace-mcp-*.out"))
	if len(files) == 0 {
		return traced{}, errors.New("the traced run wrote no trace")
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return traced{}, err
		}
		w, err := readTransportWaits(f)
		f.Close()
		if err != nil {
			return traced{}, fmt.Errorf("%s: %w", filepath.Base(name), err)
		}
		t.waits.add(w)
		t.traces++
	}
	return t, nil
}

// traceSection writes BENCHMARKS.md's section on the traced run.
func traceSection(md *strings.Builder, t traced) {
	const noop, sse = "BenchmarkPerf/mcp/envoy-noop", "BenchmarkPerf/mcp/envoy-ssetrack"
	w := t.waits
	ms := func(d time.Duration) string { return num(float64(d)/1e6, true) }
	count := func(v float64, ok bool) string {
		if !ok {
			return "-"
		}
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	fmt.Fprintf(md, "## Where Envoy's message timeouts wait\n\n")
	fmt.Fprintf(md, "`BenchmarkPerf`'s mcp workload once more, %d rounds of envoy-noop and envoy-ssetrack in turn, with a Go execution trace of ssetrack's process over each round's envoy-ssetrack setup (%d s from its first, sizing run on; `PERF_TRACE_DIR`; test/bench/trace.go reads them) and Envoy's dispatcher stats on (`enable_dispatcher_stats`). Both cost CPU, so this run's figures are not in the tables above, and it is slower than they are. ", traceRounds, t.seconds)
	fmt.Fprintf(md, "With STREAMED bodies Envoy starts its message timer at each message it sends and stops it at each answer (`message_timeout`, %v here); when it fires, Envoy ends the ext_proc stream and resets it. ", messageTimeout)
	fmt.Fprintf(md, "gRPC-Go's server reads each HTTP/2 connection with one goroutine, which hands every stream its data as it reads it and blocks on the network only when its socket is empty; HTTP/2 keeps a connection's frames in order, so a reset comes after any of the stream's data Envoy had written. ")
	fmt.Fprintf(md, "For a stream reset after its handler had answered all it got and then waited longer than `message_timeout` for a next message, the trace gives the time from the reader's last block on its empty socket during that wait to its reading the reset: before that block nothing of the stream, neither a message nor the reset, had reached ssetrack's socket.\n\n")
	fmt.Fprintf(md, "| | envoy-noop | envoy-ssetrack |\n|---|--:|--:|\n")
	fmt.Fprintf(md, "| Envoy's ext_proc `message_timeouts` (the rounds' reported runs) | %s | %s |\n", count(t.rs.sum(noop, "msg-timeouts")), count(t.rs.sum(sse, "msg-timeouts")))
	fmt.Fprintf(md, "| streams ssetrack saw end while it had waited longer than `message_timeout` for their next message (same runs) | - | %s |\n", count(t.rs.sum(sse, "abandoned-idle-200ms+")))
	fmt.Fprintf(md, "| longest event-loop iteration of an Envoy worker, ms | %s | %s |\n", num(t.rs.max(noop, "envoy-loop-max-ms")), num(t.rs.max(sse, "envoy-loop-max-ms")))
	fmt.Fprintf(md, "| longest poll delay of an Envoy worker, ms | %s | %s |\n\n", num(t.rs.max(noop, "envoy-poll-delay-max-ms")), num(t.rs.max(sse, "envoy-poll-delay-max-ms")))
	idle := 0.0
	if w.ReaderTime > 0 {
		idle = float64(w.ReaderIdleTime) / float64(w.ReaderTime)
	}
	fmt.Fprintf(md, "| ssetrack's process, from the traces (sizing runs included) | |\n|---|--:|\n")
	fmt.Fprintf(md, "| traces, s traced in all | %d, %s |\n", t.traces, num(w.Span.Seconds(), true))
	fmt.Fprintf(md, "| gRPC connections (a reader and a writer goroutine each), stream handlers, in all | %d, %d |\n", w.Readers, w.Handlers)
	fmt.Fprintf(md, "| share of the readers' time blocked on an empty socket | %.0f%% |\n", 100*idle)
	fmt.Fprintf(md, "| longest a reader, a writer, a handler waited for a CPU, ms | %s, %s, %s |\n", ms(w.ReaderRunnableMax), ms(w.WriterRunnableMax), ms(w.HandlerRunnableMax))
	fmt.Fprintf(md, "| longest a writer blocked on a full socket (Envoy not reading), ms | %s |\n", ms(w.WriterBlockedMax))
	fmt.Fprintf(md, "| longest a handler waited for its stream's next message, ms | %s |\n", ms(w.HandlerIdleMax))
	fmt.Fprintf(md, "| waits of over `message_timeout` for a next message that ended with data: then a message, then the stream's end | %d, %d |\n", w.LateMessages, w.LateEnds)
	fmt.Fprintf(md, "| streams reset after their handler had waited longer than `message_timeout` for a next message | %d |\n", w.Abandoned)
	fmt.Fprintf(md, "| longest, among them, from the reader's last block on an empty socket to its reading the reset, ms | %s |\n\n", ms(w.AbandonedGapMax))
	loop, loopOK := t.rs.max(sse, "envoy-loop-max-ms")
	switch {
	case w.Abandoned == 0:
		fmt.Fprintf(md, "No stream of ssetrack's was reset after its handler had waited longer than `message_timeout` while traced.\n\n")
	case w.AbandonedGapMax < messageTimeout/2:
		which := fmt.Sprintf("each of these %d streams", w.Abandoned)
		if w.Abandoned == 1 {
			which = "this stream"
		}
		fmt.Fprintf(md, "So for %s, all but at most %s ms of a wait of over %v passed with nothing of the stream in ssetrack's socket or process: what Envoy waited for, the stream's next message or its reading ssetrack's last answer (which left ssetrack's writer within the CPU and socket waits above), was on Envoy's side of the connection.",
			which, ms(w.AbandonedGapMax), messageTimeout)
		if loopOK && loop > 0 {
			fmt.Fprintf(md, " Envoy's workers meanwhile never stalled longer than %s ms (their longest event-loop iteration).", num(loop, true))
		}
		fmt.Fprintf(md, "\n\n")
	default:
		fmt.Fprintf(md, "This run does not place the waits: a reader's last empty socket during a handler's wait came up to %s ms before the reset, against a `message_timeout` of %v.\n\n",
			ms(w.AbandonedGapMax), messageTimeout)
	}
	fmt.Fprintf(md, "<details><summary>go test -bench output of the traced run</summary>\n\n```\n%s```\n\n</details>\n\n", t.raw)
}
