package history_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal"
	"github.com/ssetrack/ssetrack/extproc/journal/history"
	"github.com/ssetrack/ssetrack/extproc/session"
)

// Example reads a session's events the way a consumer would, from a
// JetStream that a journal publisher (what `ssetrack serve` runs) filled.
func Example() {
	ctx := context.Background()
	nc, stop := exampleJournal(ctx)
	defer stop()

	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	stream, err := js.Stream(ctx, history.DefaultStream)
	if err != nil {
		log.Fatal(err)
	}
	r := history.NewReader(stream, "")

	// What a client that has event 1 of session s1 missed.
	for ev, err := range r.Events(ctx, "s1", history.ReadOptions{FromID: "1"}) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("stream %s, event %s, #%d: %q\n", ev.Stream, ev.ID, ev.Seq, ev.Data)
	}

	// An id that is not stored: nothing is delivered, not even part.
	for _, err := range r.Events(ctx, "s1", history.ReadOptions{FromID: "0"}) {
		if errors.Is(err, history.ErrEventNotFound) {
			fmt.Println("from 0:", err)
		}
	}

	// Any JetStream consumer can decode what it receives.
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{history.Subject("", "s1")},
	})
	if err != nil {
		log.Fatal(err)
	}
	msg, err := cons.Next()
	if err != nil {
		log.Fatal(err)
	}
	b, err := history.DecodeMsg(msg)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("batch of %d events, #%d..#%d, ids %s..%s\n", b.Count, b.FirstSeq, b.LastSeq, b.FirstID, b.LastID)
	// Output:
	// stream a, event 2, #2: "id: 2\ndata: two\n\n"
	// stream a, event 3, #3: "id: 3\ndata: three\n\n"
	// from 0: history: event id not found
	// batch of 3 events, #1..#3, ids 1..3
}

// exampleJournal starts an embedded JetStream server and stores three
// events of session s1 through a journal publisher.
func exampleJournal(ctx context.Context) (*nats.Conn, func()) {
	dir, err := os.MkdirTemp("", "history-example")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := journal.StartServer(journal.ServerConfig{Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	p, err := journal.New(ctx, nc, journal.Config{}, nil, nil)
	if err != nil {
		log.Fatal(err)
	}
	p.Append(session.Record{
		Session: "s1", Stream: "a", Count: 3, FirstSeq: 1, LastSeq: 3, FirstID: "1", LastID: "3",
		Data: []byte("id: 1\ndata: one\n\nid: 2\ndata: two\n\nid: 3\ndata: three\n\n"),
	})
	if err := p.Shutdown(ctx); err != nil { // publishes and waits for the ack
		log.Fatal(err)
	}
	return nc, func() {
		nc.Close()
		_ = srv.Shutdown(ctx)
		_ = os.RemoveAll(dir)
	}
}
