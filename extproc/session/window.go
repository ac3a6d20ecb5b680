package session

import "math/bits"

// window is a session's bounded dedup window: the last n delivered event
// ids, in delivery order, with an O(1) lookup by id hash.
//
// Ids are kept as 64-bit keyed hashes (see Table), never as strings, so the
// memory per session is fixed by the window size: 12 bytes per slot plus a
// 2-byte index cell per slot times two. A hash collision would drop an event
// that is not a duplicate; with a per-process random key and at most 64Ki ids
// per window the chance is below 2^-32 per session lifetime.
//
// Slot i of the ring holds the event delivered at absolute position p with
// p%size == i; positions count every id ever recorded in the session.
type window struct {
	hashes  []uint64 // ring: id hash per slot
	streams []uint32 // ring: stream number per slot; 0 = slot unused
	index   []uint16 // open addressing, linear probing: slot+1, 0 = empty
	next    uint64   // absolute position of the next record
}

func newWindow(size int) window {
	if size < 1 {
		size = 1
	}
	if size > 1<<15 {
		size = 1 << 15
	}
	n := 1 << bits.Len(uint(2*size-1)) // power of two >= 2*size
	return window{
		hashes:  make([]uint64, size),
		streams: make([]uint32, size),
		index:   make([]uint16, n),
	}
}

// bytes reports the window's heap footprint.
func (w *window) bytes() int {
	return cap(w.hashes)*8 + cap(w.streams)*4 + cap(w.index)*2
}

// find returns the ring slot holding hash h, or -1.
func (w *window) find(h uint64) int {
	mask := uint64(len(w.index) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		c := w.index[i]
		if c == 0 {
			return -1
		}
		if w.hashes[c-1] == h && w.streams[c-1] != 0 {
			return int(c - 1)
		}
	}
}

// position returns the absolute position of the record in ring slot s.
func (w *window) position(s int) uint64 {
	size := uint64(len(w.hashes))
	last := w.next - 1 // position of the newest record
	back := (last%size + size - uint64(s)) % size
	return last - back
}

// add records hash h, delivered on stream st (st > 0), at the next position.
func (w *window) add(h uint64, st uint32) {
	if old := w.find(h); old >= 0 {
		w.unindex(old)
		w.streams[old] = 0
	}
	size := uint64(len(w.hashes))
	s := int(w.next % size)
	if w.next >= size && w.streams[s] != 0 {
		w.unindex(s)
	}
	w.hashes[s] = h
	w.streams[s] = st
	w.next++
	mask := uint64(len(w.index) - 1)
	i := h & mask
	for w.index[i] != 0 {
		i = (i + 1) & mask
	}
	w.index[i] = uint16(s + 1)
}

// unindex removes ring slot s from the index (backward-shift deletion, so
// probe chains stay intact without tombstones).
func (w *window) unindex(s int) {
	mask := uint64(len(w.index) - 1)
	i := w.hashes[s] & mask
	for w.index[i] != uint16(s+1) {
		if w.index[i] == 0 {
			return // not indexed
		}
		i = (i + 1) & mask
	}
	for {
		w.index[i] = 0
		j := i
		for {
			j = (j + 1) & mask
			c := w.index[j]
			if c == 0 {
				return
			}
			home := w.hashes[c-1] & mask
			// Move c back to the hole at i unless its home lies in (i, j].
			if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
				w.index[i] = c
				i = j
				break
			}
		}
	}
}
