package main

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestGCPercent(t *testing.T) {
	for _, c := range []struct {
		headroom, live uint64
		want           int
	}{
		{128 << 20, 32 << 20, 400},
		{128 << 20, 128 << 20, 100},
		{128 << 20, 1 << 30, 100}, // a large heap keeps Go's default
		{0, 32 << 20, 100},
		{math.MaxUint64, 1, math.MaxInt32},
	} {
		if got := gcPercent(c.headroom, c.live); got != c.want {
			t.Errorf("gcPercent(%d, %d) = %d, want %d", c.headroom, c.live, got, c.want)
		}
	}
}

// gogc reads the runtime's current GOGC.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// TestGCTunerFollowsLiveHeap runs the tuner with a headroom of 64 MiB over a live heap
// first above it (GOGC stays 100) and then far below it (GOGC rises), each read after
// collections, and checks that stop restores the GOGC it found.
func TestGCTunerFollowsLiveHeap(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	const headroom = 64 << 20
	stop := startGCTuner(headroom)
	defer stop()

	// waitGOGC collects until the tuner, run after a collection, has set ok's GOGC.
	waitGOGC := func(what string, ok func(int) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok(gogc()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: GOGC %d after 10 s of collections", what, gogc())
			}
			runtime.GC()
			time.Sleep(time.Millisecond)
		}
	}
	big := make([]byte, 2*headroom)
	for i := range big {
		big[i] = byte(i)
	}
	waitGOGC("live heap of twice the headroom", func(p int) bool { return p == 100 })
	runtime.KeepAlive(big)
	big = nil
	// Without the 128 MiB, the test binary's live heap is a few MiB: GOGC is
	// 100*headroom/live, well above 400.
	waitGOGC("live heap of a few MiB", func(p int) bool { return p > 400 })

	stop()
	if got := gogc(); got != 100 {
		t.Errorf("GOGC after stop = %d, want 100, what the tuner found", got)
	}
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
	if got := gogc(); got != 100 {
		t.Errorf("GOGC after stop and a collection = %d, want 100: the tuner still runs", got)
	}
}

func TestGCHeadroomUnderMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(256 << 20)
	defer debug.SetMemoryLimit(prev)
	if got := gcHeadroom(128 << 20); got != 64<<20 {
		t.Errorf("gcHeadroom(128 MiB) under GOMEMLIMIT 256 MiB = %d, want 64 MiB", got)
	}
	if got := gcHeadroom(32 << 20); got != 32<<20 {
		t.Errorf("gcHeadroom(32 MiB) under GOMEMLIMIT 256 MiB = %d, want 32 MiB", got)
	}
}
