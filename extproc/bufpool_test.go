package extproc

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/mem"
)

func TestBufferPool(t *testing.T) {
	var p BufferPool
	for _, tc := range []struct{ length, cap int }{
		{0, 256}, {1, 256}, {256, 256}, {257, 512},
		{16 << 10, 16 << 10}, {16<<10 + 9, 32 << 10}, {40 << 10, 64 << 10},
		{4 << 20, 4 << 20}, {4<<20 + 1, 4<<20 + 1},
	} {
		b := p.Get(tc.length)
		if len(*b) != tc.length || cap(*b) != tc.cap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", tc.length, len(*b), cap(*b), tc.length, tc.cap)
		}
		p.Put(b)
	}

	// A buffer put back is handed out again, at the length asked for, whatever it
	// held: gRPC overwrites what it asks for before reading it.
	b := p.Get(40 << 10)
	(*b)[0] = 0xAB
	p.Put(b)
	found := false
	for range 100 { // sync.Pool may drop a buffer; it keeps most
		c := p.Get(33 << 10)
		if len(*c) != 33<<10 || cap(*c) != 64<<10 {
			t.Fatalf("Get(33 KiB): len %d cap %d", len(*c), cap(*c))
		}
		if &(*c)[0] == &(*b)[0] {
			found = true
			break
		}
		p.Put(c)
		p.Put(b)
	}
	if !found {
		t.Error("a buffer put back was never handed out again")
	}

	// A buffer whose capacity is not a size of the pool is dropped, never handed out
	// as a larger one than it is.
	odd := make([]byte, 3000)
	p.Put(&odd)
	for range 100 {
		if c := p.Get(2048); cap(*c) != 2048 {
			t.Fatalf("Get(2048) handed out a buffer of capacity %d", cap(*c))
		}
	}
}

// BenchmarkBufferPool gets and puts back one buffer per op of a body chunk's size, from
// grpc-go's default pool (which zeroes the whole buffer on Get and hands a 1 MiB buffer
// for anything over 32 KiB) and from BufferPool. gRPC does this at least twice for each
// message it receives (a frame's buffer, the assembled message's) and once per answer.
//
//	go test -run '^$' -bench BufferPool ./extproc/
func BenchmarkBufferPool(b *testing.B) {
	for _, size := range []int{512, 8 << 10, 16<<10 + 16, 40 << 10, 256 << 10} {
		for _, pool := range []struct {
			name string
			p    mem.BufferPool
		}{{"grpc-default", mem.DefaultBufferPool()}, {"ssetrack", new(BufferPool)}} {
			b.Run(fmt.Sprintf("size=%d/%s", size, pool.name), func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					buf := pool.p.Get(size)
					(*buf)[0] = 1
					pool.p.Put(buf)
				}
			})
		}
	}
}
