package harness

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal"
)

// NATSServer is a nats-server process with JetStream and a file store. Stop and Start keep
// its client port and store directory, so a restart is the same server.
type NATSServer struct {
	bin      string
	port     int
	monitor  int
	storeDir string
	proc     *Process
	starts   int
	tb       TB // the TB that owns the processes
}

// StartNATSServer starts nats-server (built once per process, at the version go.mod pins)
// with JetStream on free ports; it stops when tb ends.
func StartNATSServer(tb TB) *NATSServer {
	tb.Helper()
	ports := FreePorts(tb, 2)
	n := &NATSServer{bin: natsServerBin(tb), port: ports[0], monitor: ports[1], storeDir: tb.TempDir(), tb: tb}
	n.Start(tb)
	return n
}

// URL returns the client URL, nats://127.0.0.1:port.
func (n *NATSServer) URL() string { return "nats://" + Addr(n.port) }

// Start starts the server (again) and waits until its /healthz, which covers JetStream,
// answers 200.
func (n *NATSServer) Start(tb TB) {
	tb.Helper()
	n.starts++
	name := "nats-server"
	if n.starts > 1 {
		name = fmt.Sprintf("nats-server (start %d)", n.starts)
	}
	p := Start(n.tb, name, exec.Command(n.bin,
		"-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-m", strconv.Itoa(n.monitor),
		"-js", "-sd", n.storeDir))
	p.WaitHTTP(tb, fmt.Sprintf("http://%s/healthz", Addr(n.monitor)))
	n.proc = p
}

// Stop stops the server (SIGTERM) and waits for it to exit.
func (n *NATSServer) Stop() { n.proc.Stop() }

// JetStream connects a NATS client to url for reading JetStream; it closes when tb ends.
func JetStream(tb TB, url string) jetstream.JetStream {
	tb.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		tb.Fatalf("connect to %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	return js
}

// ReadSubject returns the concatenated payloads stored on subject in stream, and the number
// of messages.
func ReadSubject(js jetstream.JetStream, stream, subject string) (data []byte, msgs int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		return nil, 0, err
	}
	for {
		batch, err := cons.FetchNoWait(256)
		if err != nil {
			return data, msgs, err
		}
		n := 0
		for msg := range batch.Messages() {
			data = append(data, msg.Data()...)
			n++
		}
		msgs += n
		if err := batch.Error(); err != nil {
			return data, msgs, err
		}
		if n == 0 {
			return data, msgs, nil
		}
	}
}

// StoredSession returns what the journal holds for a session with ssetrack's default stream
// and subject prefix: the concatenated payloads on its subject.
func StoredSession(tb TB, js jetstream.JetStream, sid string) []byte {
	tb.Helper()
	subject := journal.Subject(journal.DefaultSubjectPrefix, sid)
	data, _, err := ReadSubject(js, journal.DefaultStream, subject)
	if err != nil {
		tb.Fatalf("read %s from stream %s: %v", subject, journal.DefaultStream, err)
	}
	return data
}
