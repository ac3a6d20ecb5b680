package session

import "math/bits"

// window is a session's bounded dedup window: the last n delivered event
// ids, in delivery order, with an O(1) lookup by id hash.
//
// Each ring slot is one word: the top 56 bits of the id's keyed hash and an
// 8-bit stream tag (see tagOf); 0 marks a slot whose id was delivered again
// later (or never used). A mark (see mark) is a slot with a tag and no
// hash, never indexed. Ids are never kept as strings, so the memory per
// session is fixed by the window size: 8 bytes per slot, plus an index of
// two cells per slot, one byte each up to 127 slots and two bytes above.
//
// A hash collision would drop an event that is not a duplicate. With a
// per-process random key, 56 bits and at most 32768 ids per window, the
// chance is below 2^-41 per event.
//
// Slot i of the ring holds the id recorded at absolute position p with
// p%size == i; positions count every id ever recorded in the session.
type window struct {
	slots []uint64 // ring: hash56<<8 | tag
	index []byte   // open addressing, linear probing: slot+1, 0 = empty
	next  uint64   // absolute position of the next record
}

// wide reports that the index cells are two bytes (little endian): slot+1
// does not fit in one. Derived, not stored: a flag would cost every
// session eight bytes of padding.
func (w *window) wide() bool { return len(w.slots) > 0xff/2 }

// maxWindow bounds a window: index cells must hold slot+1.
const maxWindow = 1 << 15

func newWindow(size int) window {
	size = min(max(size, 1), maxWindow)
	cells := 1 << bits.Len(uint(2*size-1)) // power of two >= 2*size
	w := window{slots: make([]uint64, size)}
	if w.wide() {
		w.index = make([]byte, 2*cells)
	} else {
		w.index = make([]byte, cells)
	}
	return w
}

// tagOf maps a stream number to its 8-bit tag, never 0. A session remembers
// at most 32 streams, and numbers a new one so that its tag differs from
// theirs (Session.newStreamNum).
func tagOf(stream uint32) uint64 { return uint64(stream%255) + 1 }

// bytes reports the window's heap footprint.
func (w *window) bytes() int { return cap(w.slots)*8 + cap(w.index) }

func (w *window) cells() uint64 {
	if w.wide() {
		return uint64(len(w.index) / 2)
	}
	return uint64(len(w.index))
}

func (w *window) cell(i uint64) int {
	if w.wide() {
		return int(w.index[2*i]) | int(w.index[2*i+1])<<8
	}
	return int(w.index[i])
}

func (w *window) setCell(i uint64, c int) {
	if w.wide() {
		w.index[2*i], w.index[2*i+1] = byte(c), byte(c>>8)
		return
	}
	w.index[i] = byte(c)
}

// home is the index cell where a lookup for hash h starts.
func (w *window) home(h uint64) uint64 { return (h >> 8) & (w.cells() - 1) }

// find returns the ring slot holding hash h, or -1.
func (w *window) find(h uint64) int {
	key := h >> 8
	mask := w.cells() - 1
	for i := w.home(h); ; i = (i + 1) & mask {
		c := w.cell(i)
		if c == 0 {
			return -1
		}
		if v := w.slots[c-1]; v>>8 == key && v&0xff != 0 {
			return c - 1
		}
	}
}

// tag returns the stream tag of ring slot s.
func (w *window) tag(s int) uint64 { return w.slots[s] & 0xff }

// position returns the absolute position of the record in ring slot s.
func (w *window) position(s int) uint64 {
	size := uint64(len(w.slots))
	last := w.next - 1 // position of the newest record
	back := (last%size + size - uint64(s)) % size
	return last - back
}

// add records hash h, delivered on stream st, at the next position.
func (w *window) add(h uint64, st uint32) { w.move(h, st, w.find(h)) }

// move is add for a caller that just looked h up: old is find(h).
func (w *window) move(h uint64, st uint32, old int) {
	if old >= 0 {
		w.unindex(old)
		w.slots[old] = 0
	}
	s := w.push(h>>8<<8 | tagOf(st))
	mask := w.cells() - 1
	i := w.home(h)
	for w.cell(i) != 0 {
		i = (i + 1) & mask
	}
	w.setCell(i, s+1)
}

// push stores v in the ring at the next position, evicting the oldest
// record, and returns its slot; the caller indexes it.
func (w *window) push(v uint64) int {
	size := uint64(len(w.slots))
	s := int(w.next % size)
	if w.next >= size && w.slots[s] != 0 {
		w.unindex(s)
	}
	w.slots[s] = v
	w.next++
	return s
}

// mark records, at the next position, an event delivered on stream st
// that has no id to look up (one delivered untracked, Delivery.Untracked):
// a slot holding the stream's tag and no hash, which find never returns (an
// id whose 56-bit hash is 0 would read as a mark: the replay it spans is
// refused, nothing is lost).
func (w *window) mark(st uint32) { w.push(tagOf(st)) }

// untrackedAfter reports whether stream st delivered an event untracked
// at a position from from on: the window holds a mark of st (see mark)
// there. A client resuming from an id before it missed that event, even
// when no event with an id followed it (the stream's last id is then
// before it), since a stream delivers in order. It reads the window's
// records from from on, at most its size.
func (w *window) untrackedAfter(st uint32, from uint64) bool {
	size := uint64(len(w.slots))
	if w.next > size {
		from = max(from, w.next-size)
	}
	tag := tagOf(st)
	for p := from; p < w.next; p++ {
		if v := w.slots[p%size]; v&0xff == tag && v>>8 == 0 {
			return true
		}
	}
	return false
}

// unindex removes ring slot s from the index (backward-shift deletion, so
// probe chains stay intact without tombstones).
func (w *window) unindex(s int) {
	mask := w.cells() - 1
	i := w.home(w.slots[s])
	for w.cell(i) != s+1 {
		if w.cell(i) == 0 {
			return // not indexed
		}
		i = (i + 1) & mask
	}
	for {
		w.setCell(i, 0)
		j := i
		for {
			j = (j + 1) & mask
			c := w.cell(j)
			if c == 0 {
				return
			}
			home := w.home(w.slots[c-1])
			// Move c back to the hole at i unless its home lies in (i, j].
			if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
				w.setCell(i, c)
				i = j
				break
			}
		}
	}
}
