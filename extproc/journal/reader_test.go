package journal

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestReader(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{Batch: BatchConfig{MaxEvents: 4, MaxDelay: 5 * time.Millisecond}}
	p := newPublisher(t, nc, cfg)
	for i := 1; i <= 10; i++ {
		p.Append(record("rd", "s", i, 1, false))
	}
	waitFor(t, 5*time.Second, "first acks", func() bool { return statsOf(t, p).Events == 10 })
	time.Sleep(20 * time.Millisecond)
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	for i := 11; i <= 15; i++ {
		p.Append(record("rd", "s", i, 1, false))
	}
	waitFor(t, 5*time.Second, "second acks", func() bool { return statsOf(t, p).Events == 15 })
	r := NewReader(jsOf(t, nc), cfg)

	ids := func(opts ReadOptions) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var out []string
		err := r.ReadEvents(ctx, "rd", opts, func(ev Event) error {
			out = append(out, fmt.Sprintf("%s@%d", ev.ID, ev.Seq))
			return nil
		})
		return out, err
	}
	tests := []struct {
		name  string
		opts  ReadOptions
		first int
		err   error
	}{
		{"all", ReadOptions{}, 1, nil},
		{"from-id mid batch", ReadOptions{FromID: "s-6"}, 7, nil},
		{"from-id batch end", ReadOptions{FromID: "s-8"}, 9, nil},
		{"from-id last", ReadOptions{FromID: "s-15"}, 16, nil},
		{"since", ReadOptions{Since: mid}, 11, nil},
		{"from-id unknown", ReadOptions{FromID: "nope"}, 0, ErrEventNotFound},
		{"conflict", ReadOptions{FromID: "s-1", Since: mid}, 0, ErrConflictingOptions},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ids(tc.opts)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if tc.err != nil {
				return
			}
			var want []string
			for i := tc.first; i <= 15; i++ {
				want = append(want, fmt.Sprintf("s-%d@%d", i, i))
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}

	t.Run("follow", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got := make(chan string, 100)
		errc := make(chan error, 1)
		go func() {
			errc <- r.ReadEvents(ctx, "rd", ReadOptions{FromID: "s-14", Follow: true}, func(ev Event) error {
				got <- ev.ID
				return nil
			})
		}()
		for i := 16; i <= 20; i++ {
			p.Append(record("rd", "s", i, 1, false))
		}
		for i := 15; i <= 20; i++ {
			select {
			case id := <-got:
				if id != fmt.Sprintf("s-%d", i) {
					t.Fatalf("followed %s, want s-%d", id, i)
				}
			case <-ctx.Done():
				t.Fatal("follow timed out")
			}
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("follow ended with %v", err)
		}
	})
}

func TestScanEvents(t *testing.T) {
	in := "\ufeffid: 1\ndata: a\n\n: comment\r\n\r\nid: 2\rdata\r\rid:3\x00\ndata: c\n\nid\n\ndata: partial\n"
	var got []string
	scanEvents([]byte(in), func(ev sseEvent) bool {
		got = append(got, fmt.Sprintf("%q/%v/%v", ev.ID, ev.HasID, ev.HasData))
		return true
	})
	want := `["1"/true/true ""/false/false "2"/true/true ""/false/true ""/true/false]`
	if fmt.Sprint(got) != want {
		t.Errorf("got %v\nwant %s", got, want)
	}
}
