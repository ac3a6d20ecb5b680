package session

import (
	"strconv"
	"testing"
)

// BenchmarkDeliver is the per-event dedup cost: new ids, one after another,
// through a full window of the default size (the common case: nothing is a
// duplicate, every id goes in and the oldest goes out).
func BenchmarkDeliver(b *testing.B) {
	tb := NewTable(Config{Window: 1024})
	defer tb.Close()
	s, err := tb.AcquireNew("bench")
	if err != nil {
		b.Fatal(err)
	}
	st := s.OpenStream(Resume{})
	ids := make([][]byte, 4096)
	for i := range ids {
		ids[i] = []byte("evt-" + strconv.Itoa(i))
	}
	// 4096 distinct ids cycle through a 1024-id window: never duplicates.
	b.ReportAllocs()
	b.ResetTimer()
	d := st.Begin()
	for i := range b.N {
		if _, dup := d.Deliver(ids[i%len(ids)], true); dup {
			b.Fatal("duplicate")
		}
	}
	d.End()
}
