package main

import (
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
)

// DefaultGCHeadroom is the default of --gc-headroom: 64 MiB.
const DefaultGCHeadroom = 64 << 20

// gcTuner sets the garbage collector's target (GOGC) after every cycle so
// that the heap may grow by at least headroom bytes past the heap the cycle
// left live: GOGC = max(100, 100*headroom/live).
//
// Go's default, GOGC=100, collects whenever the heap has doubled. ssetrack
// keeps a small live heap (sessions, windows, batch buffers: tens of MiB)
// and allocates at the rate of the SSE bytes it sees: gRPC unmarshals every
// body chunk into a new slice, and the embedded NATS server copies every
// batch it stores twice. Flat out on 64 streams that was about 30
// collections a second; with the default headroom it is about 7, for a
// sixth less CPU per event and 40 to 65 MiB more resident. A heap large
// enough for the headroom not to matter (a million sessions) keeps Go's
// default rate; a small one trades at most headroom bytes of memory for
// fewer collections. GOMEMLIMIT, when set, still caps the heap: the runtime
// collects at the limit whatever GOGC says. Under a memory limit the
// headroom is at most a quarter of it (gcHeadroom).
type gcTuner struct {
	headroom uint64
	sample   []metrics.Sample
	prev     int // GOGC before the tuner, restored by stop

	mu      sync.Mutex // orders a tune after a collection with stop
	stopped bool
}

// gcSentinel is garbage whose finalizer runs after each collection: it
// holds a pointer, so it is never a tiny allocation, which may not be
// finalized.
type gcSentinel struct{ t *gcTuner }

// gcHeadroom is headroom, at most a quarter of the process's memory limit:
// GOMEMLIMIT's, or else a container's (the cgroup v2 memory.max, or v1's
// memory.limit_in_bytes).
func gcHeadroom(headroom uint64) uint64 {
	limit := uint64(math.MaxInt64)
	if l := debug.SetMemoryLimit(-1); l > 0 && l < math.MaxInt64 {
		limit = uint64(l)
	} else {
		for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			// v2 writes "max" when unlimited, v1 a number near 2^63.
			if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
				limit = v
			}
			break
		}
	}
	return min(headroom, limit/4)
}

// startGCTuner starts a gcTuner for headroom bytes and returns its stop,
// which restores the GOGC it found. The first target, before any
// collection, takes the live heap as 4 MiB, the runtime's own minimum.
func startGCTuner(headroom uint64) (stop func()) {
	t := &gcTuner{headroom: headroom, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.prev = debug.SetGCPercent(t.percent())
	t.arm()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.stopped {
			t.stopped = true
			debug.SetGCPercent(t.prev)
		}
	}
}

// arm makes the next collection call tune.
func (t *gcTuner) arm() {
	runtime.SetFinalizer(&gcSentinel{t: t}, func(s *gcSentinel) { s.t.tune() })
}

// tune runs on the finalizer goroutine after a collection.
func (t *gcTuner) tune() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	debug.SetGCPercent(t.percent())
	t.arm()
}

// percent is GOGC for the live heap the last collection measured.
func (t *gcTuner) percent() int {
	metrics.Read(t.sample)
	live := uint64(4 << 20)
	if s := t.sample[0]; s.Value.Kind() == metrics.KindUint64 {
		live = max(live, s.Value.Uint64())
	}
	return gcPercent(t.headroom, live)
}

// gcPercent is max(100, 100*headroom/live), at most math.MaxInt32.
func gcPercent(headroom, live uint64) int {
	if live == 0 || headroom/live >= math.MaxInt32/100 {
		return math.MaxInt32
	}
	return int(max(100, 100*headroom/live))
}
