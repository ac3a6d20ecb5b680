package journal

import "testing"

// TestBatchBuffersAreKept checks that the batcher takes back the buffer of
// an acknowledged batch whatever its size up to twice Batch.MaxBytes: paced
// streams make small batches, and a buffer of theirs not kept would be
// allocated, and grown, again by the next batch.
func TestBatchBuffersAreKept(t *testing.T) {
	const maxBytes = 60 << 10
	b := &batcher{p: &Publisher{cfg: Config{Batch: BatchConfig{MaxBytes: maxBytes}}, maxRecord: 1 << 20}}

	small := append(b.buffer(600), make([]byte, 5000)...) // a paced batch's, grown once
	b.recycle(&pending{owned: true, Batch: Batch{Data: small}})
	if got := b.buffer(600); cap(got) != cap(small) || &got[:1][0] != &small[0] {
		t.Errorf("a small batch's buffer (cap %d) was not reused: got a new one of cap %d", cap(small), cap(got))
	}

	huge := make([]byte, 0, 2*maxBytes+1)
	b.recycle(&pending{owned: true, Batch: Batch{Data: huge}})
	notOurs := make([]byte, 0, 8<<10) // a lone record's bytes: the processor's
	b.recycle(&pending{owned: false, Batch: Batch{Data: notOurs}})
	if len(b.buffers) != 0 {
		t.Errorf("kept %d buffers, want none: one above twice Batch.MaxBytes, one not the batcher's", len(b.buffers))
	}
}
