package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

// transportWaits is what a Go execution trace of an ext_proc server process (runtime/trace,
// as net/http/pprof's /debug/pprof/trace serves it) says about where the messages of its
// streams waited before its handlers got them. gRPC-Go's server transport
// (google.golang.org/grpc/internal/transport) runs, per HTTP/2 connection, one reader
// goroutine, which reads every frame the client (Envoy) sends and hands each stream its
// DATA at once, and one writer goroutine (loopyWriter), which writes the answers and the
// flow-control window updates; each stream runs its handler in a goroutine of its own.
//
// A reader blocks on the network only once a read finds its socket empty, having handed
// every stream what it read. HTTP/2 keeps a connection's frames in order, so when Envoy
// gives up on a message (message_timeout) its RST_STREAM comes after any of that message's
// DATA it had written. A stream whose handler waited longer than message_timeout for its
// next message and then was reset (Abandoned) was woken by its reader reading the reset: if the
// reader had found its socket empty G before, the message had not been written to the
// connection G before the end, and so spent at least message_timeout - G in Envoy.
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
	// HandlerIdleMax is the longest a handler waited for its stream's next message.
	HandlerIdleMax time.Duration
	// Abandoned counts the streams whose handler waited longer than messageTimeout for
	// their next message, was woken by its connection's reader reading the stream's
	// RST_STREAM, and ended without another message. AbandonedGapMax is, over them, the
	// longest time from the reader's last block on its empty socket during the wait to
	// its reading the reset (the whole wait if it never blocked).
	Abandoned       int
	AbandonedGapMax time.Duration
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
	w.HandlerIdleMax = max(w.HandlerIdleMax, o.HandlerIdleMax)
	w.Abandoned += o.Abandoned
	w.AbandonedGapMax = max(w.AbandonedGapMax, o.AbandonedGapMax)
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

// wokenByReset reports whether ev, a goroutine's wakeup, was made by gRPC's server
// transport reading an RST_STREAM frame: the stack is the waker's.
func wokenByReset(ev trace.Event) bool {
	for f := range ev.Stack().Frames() {
		if strings.HasSuffix(f.Func, "transport.(*http2Server).handleRSTStream") {
			return true
		}
	}
	return false
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
	type goState struct {
		since    trace.Time
		network  bool
		recvWait bool
		// ended: a wait of over messageTimeout for the next message ended at end, the
		// goroutine woken by waker; cleared when it waits for a message again.
		ended      bool
		start, end trace.Time
		waker      trace.GoID
	}
	type abandon struct {
		start, end trace.Time
		waker      trace.GoID
	}
	var (
		first, last trace.Time
		now         = map[trace.GoID]*goState{}
		kinds       = map[trace.GoID]int{}
		spans       = map[trace.GoID][]goSpan{}
		emptied     = map[trace.GoID][]trace.Time{} // when each goroutine blocked on the network
		abandons    []abandon
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
		cur := now[g]
		if cur != nil {
			d := ev.Time().Sub(cur.since)
			spans[g] = append(spans[g], goSpan{state: from, network: cur.network, recvWait: cur.recvWait, dur: d})
			if from == trace.GoWaiting && cur.recvWait && d > messageTimeout && wokenByReset(ev) {
				cur.ended, cur.start, cur.end, cur.waker = true, cur.since, ev.Time(), ev.Goroutine()
			}
		} else {
			cur = &goState{}
			now[g] = cur
		}
		if to == trace.GoNotExist && cur.ended {
			abandons = append(abandons, abandon{start: cur.start, end: cur.end, waker: cur.waker})
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
				if cur.recvWait {
					cur.ended = false // it got a message after all
				}
			}
		}
	}
	w := transportWaits{Span: last.Sub(first)}
	for g, k := range kinds {
		for _, s := range spans[g] {
			if s.state == trace.GoRunnable {
				switch k {
				case kindReader:
					w.ReaderRunnableMax = max(w.ReaderRunnableMax, s.dur)
				case kindWriter:
					w.WriterRunnableMax = max(w.WriterRunnableMax, s.dur)
				case kindHandler:
					w.HandlerRunnableMax = max(w.HandlerRunnableMax, s.dur)
				}
			}
			switch k {
			case kindReader:
				w.ReaderTime += s.dur
				if s.state == trace.GoWaiting && s.network {
					w.ReaderIdleTime += s.dur
				}
			case kindHandler:
				if s.state == trace.GoWaiting && s.recvWait {
					w.HandlerIdleMax = max(w.HandlerIdleMax, s.dur)
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
		if kinds[a.waker] != kindReader {
			continue // ended otherwise (a server stop, a handler's own error)
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
// BenchmarkPerf runs.
const messageTimeout = 200 * time.Millisecond

// traceRounds and traceSeconds: the traced run has traceRounds rounds, each setup in turn
// in each, and traces all of each round's envoy-ssetrack setup (its sizing runs included,
// at -benchtime 1s): Envoy's timeouts come in bursts, some rounds have none.
const (
	traceRounds  = 3
	traceSeconds = 12
)

// traced is what tracedRun measured.
type traced struct {
	rs     results // the run's benchmark lines, parsed
	raw    string  // and as printed
	traces int
	waits  transportWaits // over all traces
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
	args := []string{"test", "-run", "^$", "-bench", "^BenchmarkPerf$/^mcp$/^envoy-(noop|ssetrack)(#[0-9]+)?$",
		"-benchtime", perfTime(benchtime), "-timeout", "30m", "./test/"}
	out, err := goTest(root, args, []string{"PERF_TRACE_DIR=" + dir, "PERF_TRACE_SECONDS=" + strconv.Itoa(traceSeconds),
		"PERF_ROUNDS=" + strconv.Itoa(traceRounds)})
	if err != nil {
		return traced{}, err
	}
	t := traced{rs: parse(out), raw: benchLines(out)}
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
	fmt.Fprintf(md, "`BenchmarkPerf`'s mcp workload once more, %d rounds of envoy-noop and envoy-ssetrack in turn, with a Go execution trace of ssetrack's process over each round's envoy-ssetrack setup (%d s from its start; `PERF_TRACE_DIR`; test/bench/trace.go reads them) and Envoy's dispatcher stats on (`enable_dispatcher_stats`). Both cost CPU, so this run's figures are not in the tables above. ", traceRounds, traceSeconds)
	fmt.Fprintf(md, "Envoy's message timer runs from a message's send to its answer (`message_timeout`, %v here); when it fires, Envoy resets the ext_proc stream. gRPC-Go's server reads each HTTP/2 connection with one goroutine, which hands every stream its data as it reads it and blocks on the network only once its socket is empty; HTTP/2 keeps a connection's frames in order, so a reset comes after any of the awaited message Envoy had written. ", messageTimeout)
	fmt.Fprintf(md, "For a stream reset after its handler had waited longer than `message_timeout` for its next message, the trace gives the time from its reader's last block on an empty socket during that wait to its reading the reset: the awaited message had not reached ssetrack's socket by then.\n\n")
	fmt.Fprintf(md, "| | envoy-noop | envoy-ssetrack |\n|---|--:|--:|\n")
	fmt.Fprintf(md, "| Envoy's ext_proc `message_timeouts` (the rounds' reported runs) | %s | %s |\n", count(t.rs.sum(noop, "msg-timeouts")), count(t.rs.sum(sse, "msg-timeouts")))
	fmt.Fprintf(md, "| streams ssetrack saw end while it had waited longer than `message_timeout` for their next message (same runs) | - | %s |\n", count(t.rs.sum(sse, "abandoned-idle-200ms+")))
	fmt.Fprintf(md, "| longest event-loop iteration of an Envoy worker, ms | %s | %s |\n", num(t.rs.max(noop, "envoy-loop-max-ms")), num(t.rs.max(sse, "envoy-loop-max-ms")))
	fmt.Fprintf(md, "| longest poll delay of an Envoy worker, ms | %s | %s |\n\n", num(t.rs.max(noop, "envoy-poll-delay-max-ms")), num(t.rs.max(sse, "envoy-poll-delay-max-ms")))
	idle := 0.0
	if w.ReaderTime > 0 {
		idle = float64(w.ReaderIdleTime) / float64(w.ReaderTime)
	}
	fmt.Fprintf(md, "| ssetrack's process, from the traces | |\n|---|--:|\n")
	fmt.Fprintf(md, "| traces, s traced in all | %d, %s |\n", t.traces, num(w.Span.Seconds(), true))
	fmt.Fprintf(md, "| gRPC connections (a reader and a writer goroutine each), stream handlers, in all | %d, %d |\n", w.Readers, w.Handlers)
	fmt.Fprintf(md, "| share of the readers' time blocked on an empty socket | %.0f%% |\n", 100*idle)
	fmt.Fprintf(md, "| longest a reader, a writer, a handler waited for a CPU, ms | %s, %s, %s |\n", ms(w.ReaderRunnableMax), ms(w.WriterRunnableMax), ms(w.HandlerRunnableMax))
	fmt.Fprintf(md, "| longest a handler waited for its stream's next message, ms | %s |\n", ms(w.HandlerIdleMax))
	fmt.Fprintf(md, "| streams reset after their handler had waited longer than `message_timeout` for their next message | %d |\n", w.Abandoned)
	fmt.Fprintf(md, "| longest, among them, from the reader's last block on an empty socket to its reading the reset, ms | %s |\n\n", ms(w.AbandonedGapMax))
	loop, _ := t.rs.max(sse, "envoy-loop-max-ms")
	switch {
	case w.Abandoned == 0:
		fmt.Fprintf(md, "No stream of ssetrack's was reset after its handler had waited longer than `message_timeout` while traced.\n\n")
	case w.AbandonedGapMax < messageTimeout/2:
		which := fmt.Sprintf("each of the %d messages those streams awaited", w.Abandoned)
		if w.Abandoned == 1 {
			which = "the message that stream awaited"
		}
		fmt.Fprintf(md, "So %s spent at least %s ms of its %v in Envoy before it reached ssetrack's socket, if it ever did; Envoy's workers meanwhile never stalled longer than %s ms (their longest event-loop iteration).\n\n",
			which, ms(messageTimeout-w.AbandonedGapMax), messageTimeout, num(loop, true))
	default:
		fmt.Fprintf(md, "This run does not place the waits: a reader's last empty socket during a handler's wait came up to %s ms before the reset, against a `message_timeout` of %v.\n\n",
			ms(w.AbandonedGapMax), messageTimeout)
	}
	fmt.Fprintf(md, "<details><summary>go test -bench output of the traced run</summary>\n\n```\n%s```\n\n</details>\n\n", t.raw)
}
