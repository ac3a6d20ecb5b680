package extproc

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// Buffer sizes BufferPool keeps: every power of two from 2^minPoolShift
// (256 B) to 2^maxPoolShift (4 MiB). A larger buffer is allocated for its
// one use and left to the garbage collector.
const (
	minPoolShift = 8
	maxPoolShift = 22
)

// BufferPool is a grpc-go buffer pool (mem.BufferPool) for an ext_proc
// server; cmd/ssetrack passes it to grpc.NewServer with
// google.golang.org/grpc/experimental.BufferPool. gRPC reads every frame
// and every message it receives into a buffer from its pool and marshals
// every answer into one.
//
// It differs from grpc-go's default pool (mem.DefaultBufferPool, v1.85) in
// two ways, both for Envoy's body chunks, which are as large as Envoy's
// buffers make them (often 16 KiB to 1 MiB when a stream is flat out):
//   - Get does not zero the buffer. gRPC writes every byte of the length it
//     asks for (io.ReadFull into a frame's buffer, a copy of the message's
//     frames, a marshal) before anything reads it. grpc-go itself takes
//     unzeroed buffers where it overwrites them: its transport's read and
//     write buffers (internal/transport's ioBufferPool) and its ALTS
//     record reader.
//   - Sizes are every power of two up to 4 MiB, so a buffer is less than
//     twice the length asked for. The default pool's sizes are 256 B,
//     4 KiB, 16 KiB, 32 KiB and 1 MiB: a 40 KiB body chunk gets a 1 MiB
//     buffer, which it zeroes whole.
//
// Its zero value is ready to use. It is safe for concurrent use.
type BufferPool struct {
	pools [maxPoolShift - minPoolShift + 1]sync.Pool // pools[i] holds buffers of capacity 1<<(i+minPoolShift)
}

var _ mem.BufferPool = (*BufferPool)(nil)

// Get returns a buffer of the given length whose contents are undefined.
func (p *BufferPool) Get(length int) *[]byte {
	shift := max(minPoolShift, bits.Len(uint(max(length, 1)-1)))
	if shift > maxPoolShift {
		b := make([]byte, length)
		return &b
	}
	if buf, ok := p.pools[shift-minPoolShift].Get().(*[]byte); ok {
		*buf = (*buf)[:length]
		return buf
	}
	b := make([]byte, length, 1<<shift)
	return &b
}

// Put returns buf, which Get returned (or a prefix of it), to the pool. A
// buffer whose capacity is not one of the pool's sizes is dropped.
func (p *BufferPool) Put(buf *[]byte) {
	c := cap(*buf)
	shift := bits.Len(uint(c)) - 1
	if c == 0 || c != 1<<shift || shift < minPoolShift || shift > maxPoolShift {
		return
	}
	p.pools[shift-minPoolShift].Put(buf)
}
