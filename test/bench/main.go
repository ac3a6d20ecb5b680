// Command bench runs ssetrack's benchmarks side by side with their baselines and writes the
// results, as ratios against a baseline measured in the same run, to BENCHMARKS.md.
//
// `make bench` runs it from this directory (a module of its own, so that the parser it is
// compared with, github.com/tmaxmax/go-sse, stays out of ssetrack's go.mod):
//
//	go run . -benchtime 1s -out ../../BENCHMARKS.md
//
// It runs, one after the other, each with `go test -run '^$' -bench`:
//
//	BenchmarkParser          (this directory)     extproc/sse vs go-sse vs a raw block scan
//	BenchmarkChunkRoundTrip  (./extproc)          ssetrack vs the do-nothing ext_proc, gRPC
//	BenchmarkPersist         (./extproc/journal)  the journal Publisher vs raw async publishes
//	BenchmarkReplay          (./extproc/journal)  replay against 100 .. 1,000,000 stored events
//	BenchmarkPerf            (./test)             through a real Envoy ($ENVOY_BIN)
//
// and then BenchmarkPerf's mcp workload once more, envoy-noop and envoy-ssetrack only, with
// a Go execution trace of ssetrack and Envoy's dispatcher stats (PERF_TRACE_DIR), to show
// where the messages Envoy timed out on had waited (trace.go).
//
// -benchtime goes to every benchmark except BenchmarkPersist, whose op is a fixed 100,000
// events each way and which runs -persist-rounds ops, and BenchmarkPerf, which gets at least
// 1s: its first round of one event per setup, connections included, would otherwise end a
// shorter run. The benchmarks report; nothing here
// checks a figure.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// result is a benchmark's metrics by unit (ns/op, events/s, ...): one value per line of
// the run (several with -count).
type result map[string][]float64

// results are the benchmark lines of a run by name, without the GOMAXPROCS suffix.
type results map[string]result

func main() {
	benchtime := flag.String("benchtime", "1s", "go test -benchtime for every benchmark but BenchmarkPersist")
	persistRounds := flag.Int("persist-rounds", 3, "ops of BenchmarkPersist (100,000 events each way per op)")
	out := flag.String("out", "../../BENCHMARKS.md", "the markdown file to write")
	flag.Parse()
	if err := run(*benchtime, *persistRounds, *out); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(benchtime string, persistRounds int, out string) error {
	envoy := os.Getenv("ENVOY_BIN")
	if envoy == "" {
		return fmt.Errorf("ENVOY_BIN is not set: run `make bench`, which installs Envoy first")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		return err
	}
	start := time.Now()
	load0 := loadAvg()
	var raw bytes.Buffer
	all := results{}
	for _, r := range []struct {
		dir, pkg, bench, benchtime string
		rounds                     int // PERF_ROUNDS; the tables show each metric's median
	}{
		{".", ".", "^BenchmarkParser$", benchtime, 0},
		{root, "./extproc/", "^BenchmarkChunkRoundTrip$", benchtime, 0},
		{root, "./extproc/journal/", "^BenchmarkPersist$", fmt.Sprintf("%dx", persistRounds), 0},
		{root, "./extproc/journal/", "^BenchmarkReplay$", benchtime, 0},
		{root, "./test/", "^BenchmarkProcessor$", processorEvents(benchtime), 3},
		{root, "./test/", "^BenchmarkPerf$", perfTime(benchtime), 3},
	} {
		args := []string{"test", "-run", "^$", "-bench", r.bench, "-benchtime", r.benchtime,
			"-benchmem", "-timeout", "30m", r.pkg}
		var env []string
		if r.rounds > 0 {
			env = []string{"PERF_ROUNDS=" + strconv.Itoa(r.rounds)}
		}
		stdout, err := goTest(r.dir, args, env)
		if err != nil {
			return err
		}
		maps.Copy(all, parse(stdout))
		raw.WriteString(benchLines(stdout))
	}
	traced, err := tracedRun(root, benchtime)
	if err != nil {
		return err
	}
	load1 := loadAvg()

	var md strings.Builder
	fmt.Fprintf(&md, "# Benchmarks\n\n")
	fmt.Fprintf(&md, "Written by `make bench BENCHTIME=%s` (test/bench/main.go) on %s, in %s.\n",
		benchtime, start.UTC().Format("2006-01-02 15:04 MST"), time.Since(start).Round(time.Second))
	fmt.Fprintf(&md, "Every ratio compares two rows of this one run; timings are reported, never checked. ")
	fmt.Fprintf(&md, "`BenchmarkProcessor` and `BenchmarkPerf` run three rounds (`PERF_ROUNDS=3`), every setup in turn in each: their figures are the median of the three, and their ratios the median of each round's ratio.\n\n")
	fmt.Fprintf(&md, "| machine | |\n|---|---|\n")
	fmt.Fprintf(&md, "| CPU | %s |\n", cpuModel())
	fmt.Fprintf(&md, "| cores | %d |\n", runtime.NumCPU())
	fmt.Fprintf(&md, "| memory | %s |\n", memTotal())
	fmt.Fprintf(&md, "| Go | %s |\n", goVersion())
	fmt.Fprintf(&md, "| Envoy | %s |\n", envoyVersion(envoy))
	fmt.Fprintf(&md, "| load average (1, 5, 15 min) | %s at the start, %s at the end |\n\n", load0, load1)
	parserTable(&md, all)
	chunkTable(&md, all)
	persistTable(&md, all)
	processorTable(&md, all)
	perfTable(&md, all)
	replayTable(&md, all)
	traceSection(&md, traced)
	fmt.Fprintf(&md, "## Raw results\n\n<details><summary>go test -bench output</summary>\n\n```\n%s```\n\n</details>\n", raw.String())
	return os.WriteFile(out, []byte(md.String()), 0o644)
}

// goTest runs `go args...` in dir with env added, its output echoed to stderr, and
// returns its standard output.
func goTest(dir string, args, env []string) ([]byte, error) {
	fmt.Fprintf(os.Stderr, "bench: %s go %s\n", strings.Join(env, " "), strings.Join(args, " "))
	var buf bytes.Buffer
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.Stdout = io.MultiWriter(os.Stderr, &buf)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return buf.Bytes(), nil
}

// benchLines returns the benchmark result lines of go test's output out.
func benchLines(out []byte) string {
	var sb strings.Builder
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "Benchmark") {
			sb.WriteString(line)
		}
	}
	return sb.String()
}

// perfTime is benchtime for BenchmarkPerf: at least 1s, if benchtime is a duration.
func perfTime(benchtime string) string {
	if d, err := time.ParseDuration(benchtime); err == nil && d < time.Second {
		return "1s"
	}
	return benchtime
}

// processorEvents is benchtime for BenchmarkProcessor, a fixed event count: 3,000,000 (a few
// seconds per server) for a benchtime of 1s or more, 500,000 below.
func processorEvents(benchtime string) string {
	if d, err := time.ParseDuration(benchtime); err == nil && d < time.Second {
		return "500000x"
	}
	return "3000000x"
}

// benchLine is a result line of `go test -bench`: name-GOMAXPROCS, iterations, then value
// and unit pairs.
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)

// roundSuffix is the #NN go test appends to a repeated sub-benchmark name.
var roundSuffix = regexp.MustCompile(`#\d+(/|$)`)

func parse(out []byte) results {
	rs := results{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		// A sub-benchmark run again in a later round is name#01, name#02, ...: one name.
		name := roundSuffix.ReplaceAllString(m[1], "$1")
		r := rs[name]
		if r == nil {
			r = result{}
			rs[name] = r
		}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				r[f[i+1]] = append(r[f[i+1]], v)
			}
		}
	}
	return rs
}

// get returns the metric unit of benchmark name, the median of its values (the lower middle
// one of an even count), and whether the run has it.
func (rs results) get(name, unit string) (float64, bool) { return median(rs[name][unit]) }

// sum returns the total of the metric unit of benchmark name over the run's rounds, and
// whether the run has it.
func (rs results) sum(name, unit string) (float64, bool) {
	vs := rs[name][unit]
	t := 0.0
	for _, v := range vs {
		t += v
	}
	return t, len(vs) > 0
}

// max returns the largest value of the metric unit of benchmark name over the run's
// rounds, and whether the run has it.
func (rs results) max(name, unit string) (float64, bool) {
	vs := rs[name][unit]
	if len(vs) == 0 {
		return 0, false
	}
	return slices.Max(vs), true
}

// times formats a ratio r as "1.23x"; "-" if missing.
func times(r float64, ok bool) string {
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.2fx", r)
}

// num formats v with about three significant digits; "-" if missing.
func num(v float64, ok bool) string {
	if !ok {
		return "-"
	}
	switch av := max(v, -v); {
	case av == 0:
		return "0"
	case av >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case av >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case av >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

// ratio formats a/b as "1.23x"; "-" if either is missing or b is 0.
func ratio(a float64, aok bool, b float64, bok bool) string {
	if !aok || !bok || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func parserTable(md *strings.Builder, rs results) {
	fmt.Fprintf(md, "## SSE parser\n\n")
	fmt.Fprintf(md, "`BenchmarkParser` (test/bench): about 1 MiB of an MCP stream (progress notifications, now and then a 2-12 KiB tool result, a `: ping` every 20 events), read in 64 B, 512 B or 16 KiB reads, with LF, CR or CRLF line endings; one op parses all of it with a new parser. ")
	fmt.Fprintf(md, "**ssetrack** is extproc/sse's `Parser` (`Feed` each read, `Next` until false); **go-sse** is github.com/tmaxmax/go-sse's `sse.Read` (its public parsing entry point: an `io.Reader` in, `Event`s out, which copies each event's data into a string); **scan** appends each read to a buffer and finds block ends (`\\n\\n`, `\\r\\r` or `\\r\\n\\r\\n`) with a `bytes.Index` loop, the floor of any SSE framing. events/s counts the same events for all three.\n\n")
	fmt.Fprintf(md, "| ending | read | ssetrack events/s | go-sse events/s | scan events/s | ssetrack / go-sse | ssetrack / scan | ssetrack allocs/ev | go-sse allocs/ev | scan allocs/ev |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, ending := range []string{"LF", "CR", "CRLF"} {
		for _, read := range []string{"64B", "512B", "16KiB"} {
			base := "BenchmarkParser/" + ending + "/read=" + read + "/"
			s, sok := rs.get(base+"ssetrack", "events/s")
			g, gok := rs.get(base+"go-sse", "events/s")
			c, cok := rs.get(base+"scan", "events/s")
			fmt.Fprintf(md, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", ending, read, num(s, sok), num(g, gok), num(c, cok),
				ratio(s, sok, g, gok), ratio(s, sok, c, cok),
				num(rs.get(base+"ssetrack", "allocs/ev")), num(rs.get(base+"go-sse", "allocs/ev")), num(rs.get(base+"scan", "allocs/ev")))
		}
	}
	fmt.Fprintf(md, "\n")
}

func chunkTable(md *strings.Builder, rs results) {
	fmt.Fprintf(md, "## Per chunk over gRPC\n\n")
	fmt.Fprintf(md, "`BenchmarkChunkRoundTrip` (extproc): SSE response chunks (an MCP stream cut every 512 B or 16 KiB, events split anywhere) sent over real gRPC on an in-memory listener (bufconn), each chunk waiting for its answer as Envoy does, over 1, 16 or 256 concurrent ext_proc streams of 256 chunks each. ")
	fmt.Fprintf(md, "**noop** is the do-nothing ext_proc server of extproc/bench_test.go; **ssetrack** is extproc's server with a session per response and records built for a journal that drops them. ")
	fmt.Fprintf(md, "CPU per chunk is the user + system time of the whole benchmark process (getrusage), so it includes the gRPC client, the same for both; p99 is a chunk's round trip.\n\n")
	fmt.Fprintf(md, "| chunk | streams | noop CPU µs/chunk | ssetrack CPU µs/chunk | CPU ssetrack / noop | noop p99 µs | ssetrack p99 µs | p99 ssetrack / noop |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, size := range []string{"512B", "16KiB"} {
		for _, streams := range []string{"1", "16", "256"} {
			base := "BenchmarkChunkRoundTrip/chunk=" + size + "/streams=" + streams + "/"
			nc, ncok := rs.get(base+"noop", "cpu-us/chunk")
			sc, scok := rs.get(base+"ssetrack", "cpu-us/chunk")
			np, npok := rs.get(base+"noop", "p99-us")
			sp, spok := rs.get(base+"ssetrack", "p99-us")
			fmt.Fprintf(md, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", size, streams, num(nc, ncok), num(sc, scok), ratio(sc, scok, nc, ncok),
				num(np, npok), num(sp, spok), ratio(sp, spok, np, npok))
		}
	}
	fmt.Fprintf(md, "\n")
}

func persistTable(md *strings.Builder, rs results) {
	const name = "BenchmarkPersist"
	fmt.Fprintf(md, "## Persistence\n\n")
	fmt.Fprintf(md, "`BenchmarkPersist` (extproc/journal): 100,000 one-event records over 16 sessions per op, handed over flat out, against an embedded nats-server. **journal** is the `Publisher` (`Append`, batched publishes, KV state); **raw** is one jetstream `PublishMsgAsync` per event to the same server, acks awaited in order by a second goroutine. ")
	fmt.Fprintf(md, "Event to ack is from `Append` (or the publish call) to the ack of the message that holds the event; flat out, it is mostly time spent queued.\n\n")
	b, bok := rs.get(name, "batched-events/s")
	r, rok := rs.get(name, "raw-events/s")
	bp, bpok := rs.get(name, "batched-p99-ms")
	rp, rpok := rs.get(name, "raw-p99-ms")
	bm, bmok := rs.get(name, "batched-p50-ms")
	rm, rmok := rs.get(name, "raw-p50-ms")
	fmt.Fprintf(md, "| | journal | raw | journal / raw |\n|---|--:|--:|--:|\n")
	fmt.Fprintf(md, "| persisted events/s | %s | %s | %s |\n", num(b, bok), num(r, rok), ratio(b, bok, r, rok))
	fmt.Fprintf(md, "| event to ack p50, ms | %s | %s | %s |\n", num(bm, bmok), num(rm, rmok), ratio(bm, bmok, rm, rmok))
	fmt.Fprintf(md, "| event to ack p99, ms | %s | %s | %s |\n\n", num(bp, bpok), num(rp, rpok), ratio(bp, bpok, rp, rpok))
}

func processorTable(md *strings.Builder, rs results) {
	fmt.Fprintf(md, "## The ext_proc process alone\n\n")
	fmt.Fprintf(md, "`BenchmarkProcessor` (test/processor_bench_test.go): the test process plays Envoy over real gRPC on loopback, 64 concurrent ext_proc streams (a new session each) of 8 KiB body chunks, 32 MCP notifications of 256 B per chunk, each chunk answered before the next; no Envoy, upstream or HTTP client shares the measurement. ")
	fmt.Fprintf(md, "CPU per event is the server process's (user + system, from /proc); **noop** is the do-nothing server of perf_test.go; **noop-journal** the same, which also publishes each body chunk, as received, to a JetStream stream of its own embedded nats-server (file storage, in-process connection, asynchronous publishes, no message id, GOGC=400 for about ssetrack's memory): the floor of any ext_proc that persists the stream through JetStream; **ssetrack** the built binary with its embedded JetStream journal (its NATS server's CPU included), **ssetrack-nojournal** with `--journal=false`. ")
	fmt.Fprintf(md, "The servers take turns in every round; the ratios are the medians of each round's ratio. Peak RSS is the process's over the whole run.\n\n")
	fmt.Fprintf(md, "| server | events/s | CPU µs/ev | CPU / noop | CPU / noop-journal | peak RSS MiB |\n|---|--:|--:|--:|--:|--:|\n")
	for _, s := range []string{"noop", "noop-journal", "ssetrack", "ssetrack-nojournal"} {
		name := "BenchmarkProcessor/" + s
		c, cok := rs.get(name, "server-cpu-us/ev")
		ns, nsok := rs.get(name, "ns/op")
		xn, xnok := rs.get(name, "xnoop-cpu")
		xf, xfok := rs.get(name, "xfloor-cpu")
		switch s {
		case "noop":
			xn, xnok = 1, true
		case "noop-journal":
			xf, xfok = 1, true
		}
		rss, rssok := rs.max(name, "peak-rss-MiB")
		fmt.Fprintf(md, "| %s | %s | %s | %s | %s | %s |\n", s, num(1e9/ns, nsok), num(c, cok), times(xn, xnok), times(xf, xfok), num(rss, rssok))
	}
	fmt.Fprintf(md, "\n")
}

func perfTable(md *strings.Builder, rs results) {
	fmt.Fprintf(md, "## End to end through Envoy\n\n")
	fmt.Fprintf(md, "`BenchmarkPerf` (test/perf_test.go; its doc comment has the details): a client and an SSE upstream in the test process, one Envoy per setup. ")
	fmt.Fprintf(md, "**envoy** has no ext_proc filter; **envoy-noop** runs the do-nothing ext_proc server (its own process, same mode_override as ssetrack); **envoy-noop-journal** the do-nothing server that also publishes each body chunk to a JetStream stream of its own embedded nats-server, the floor of persisting the stream through JetStream (see the table above); **envoy-ssetrack** runs the built ssetrack with its embedded JetStream journal; **envoy-ssetrack-nojournal** the same with `--journal=false`. ")
	fmt.Fprintf(md, "Workloads: **tokens** one stream of 100 B events flat out; **tokens-paced** the same at one event per ms; **mcp** 64 streams of 256 B events flat out; **large** one stream of 64 KiB events. ")
	fmt.Fprintf(md, "CPU µs/ev is Envoy's plus the ext_proc process's (a journal's NATS server included) per event; p99 is an event's upstream write to client read. ")
	fmt.Fprintf(md, "The setups take turns in every round; a figure is the median over the rounds, a ratio the median of each round's ratio. Timeouts are Envoy's ext_proc `message_timeouts`, summed over the rounds; **abandoned** counts, for ssetrack, the streams Envoy ended while ssetrack waited for their next message (`ssetrack_responses_abandoned_seconds`; the client never leaves early), and in parentheses those where ssetrack had received nothing on the stream for longer than the filter's `message_timeout` (200 ms): what Envoy gave up waiting for was on its side.\n\n")
	fmt.Fprintf(md, "| workload | setup | events/s | events/s / envoy | events/s / envoy-noop | p99 µs | p99 / envoy-noop | CPU µs/ev | CPU / envoy | CPU / envoy-noop | CPU / envoy-noop-journal | ext_proc CPU / noop's | timeouts | abandoned |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, w := range []string{"tokens", "tokens-paced", "mcp", "large"} {
		bench := func(setup string) string { return "BenchmarkPerf/" + w + "/" + setup }
		// cpu is Envoy's plus the ext_proc process's CPU per event, one value per round.
		cpu := func(setup string) []float64 {
			e, x := rs[bench(setup)]["envoy-cpu-us/ev"], rs[bench(setup)]["xp-cpu-us/ev"]
			out := slices.Clone(e)
			for i := range min(len(e), len(x)) {
				out[i] += x[i]
			}
			return out
		}
		for _, s := range []string{"envoy", "envoy-noop", "envoy-noop-journal", "envoy-ssetrack", "envoy-ssetrack-nojournal"} {
			name := bench(s)
			of := func(unit string) []float64 { return rs[name][unit] }
			ev, p99, c := of("events/s"), of("p99-us"), cpu(s)
			abandoned := "-"
			if a, ok := rs.sum(name, "abandoned"); ok {
				late, _ := rs.sum(name, "abandoned-idle-200ms+")
				abandoned = fmt.Sprintf("%s (%s)", num(a, true), num(late, true))
			}
			fmt.Fprintf(md, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", w, s,
				num(median(ev)), times(pairedRatio(ev, rs[bench("envoy")]["events/s"])), times(pairedRatio(ev, rs[bench("envoy-noop")]["events/s"])),
				num(median(p99)), times(pairedRatio(p99, rs[bench("envoy-noop")]["p99-us"])),
				num(median(c)), times(pairedRatio(c, cpu("envoy"))), times(pairedRatio(c, cpu("envoy-noop"))), times(pairedRatio(c, cpu("envoy-noop-journal"))),
				times(pairedRatio(of("xp-cpu-us/ev"), rs[bench("envoy-noop")]["xp-cpu-us/ev"])), num(rs.sum(name, "msg-timeouts")), abandoned)
		}
	}
	fmt.Fprintf(md, "\nEnvoy's CPU is sampled from /proc in 10 ms ticks: at small event counts the CPU columns are coarse.\n\n")
}

// median returns the median of vs (the lower middle one of an even count), and whether
// there is one.
func median(vs []float64) (float64, bool) {
	if len(vs) == 0 {
		return 0, false
	}
	vs = slices.Clone(vs)
	slices.Sort(vs)
	return vs[(len(vs)-1)/2], true
}

// pairedRatio returns the median over rounds of a[i]/b[i] (the rounds both have), and
// whether there is one: with setups taking turns, each round's ratio compares two
// measurements made minutes apart at most.
func pairedRatio(a, b []float64) (float64, bool) {
	var rs []float64
	for i := range min(len(a), len(b)) {
		if b[i] != 0 {
			rs = append(rs, a[i]/b[i])
		}
	}
	return median(rs)
}

func replayTable(md *strings.Builder, rs results) {
	fmt.Fprintf(md, "## Replay\n\n")
	fmt.Fprintf(md, "`BenchmarkReplay` (extproc/journal): the `Publisher`'s replay of the last 5, 200 or 5,000 events of a session whose stream holds 100, 10,000 or 1,000,000 events (stored as 64-event batch messages), against an embedded nats-server; the ratio is against the same replay with 100 stored events (10,000 for 200 and 5,000 missed).\n\n")
	fmt.Fprintf(md, "| missed | stored | replay ms | / smallest history |\n|--:|--:|--:|--:|\n")
	for _, missed := range []string{"5", "200", "5000"} {
		var base float64
		var baseOK bool
		for _, stored := range []string{"100", "10000", "1000000"} {
			ns, ok := rs.get("BenchmarkReplay/stored="+stored+"/missed="+missed, "ns/op")
			if !ok {
				continue
			}
			if !baseOK {
				base, baseOK = ns, true
			}
			fmt.Fprintf(md, "| %s | %s | %s | %s |\n", missed, stored, num(ns/1e6, true), ratio(ns, true, base, baseOK))
		}
	}
	fmt.Fprintf(md, "\n")
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// memTotal returns MemTotal of /proc/meminfo in GiB.
func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "MemTotal:" {
			if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
				return fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	return "unknown"
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func goVersion() string {
	out, err := exec.Command("go", "version").Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "go version ")
}

// envoyVersion returns the version part of `envoy --version`.
func envoyVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	s := strings.TrimSpace(string(out))
	if _, v, ok := strings.Cut(s, "version: "); ok {
		s = v
	}
	if i := slices.Index(strings.Split(s, "/"), "Clean"); i > 0 {
		s = strings.Join(strings.Split(s, "/")[:i], "/")
	}
	return s
}
