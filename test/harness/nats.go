package harness

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal"
)

// NATSServer is a nats-server process with JetStream and a file store. Stop and Start keep
// its client port and store directory, so a restart is the same server.
type NATSServer struct {
	// Name is the server's name (nats-server --server_name); "" lets the server pick one.
	Name     string
	bin      string
	port     int
	monitor  int
	storeDir string
	args     []string // further flags (a cluster's)
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

// MonitorURL returns the HTTP monitoring address (/healthz, /varz, /connz, /jsz):
// http://127.0.0.1:port.
func (n *NATSServer) MonitorURL() string { return "http://" + Addr(n.monitor) }

// Proc returns the running (or last) process.
func (n *NATSServer) Proc() *Process { return n.proc }

// Start starts the server (again) and waits until its /healthz, which covers JetStream
// (in a cluster: contact with the meta leader, and its streams current), answers 200.
func (n *NATSServer) Start(tb TB) {
	tb.Helper()
	n.launch()
	n.waitHealthy(tb)
}

// launch starts the process without waiting for it.
func (n *NATSServer) launch() {
	n.starts++
	name := "nats-server"
	if n.Name != "" {
		name += " " + n.Name
	}
	if n.starts > 1 {
		name += fmt.Sprintf(" (start %d)", n.starts)
	}
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-m", strconv.Itoa(n.monitor),
		"-js", "-sd", n.storeDir}
	if n.Name != "" {
		args = append(args, "--server_name", n.Name)
	}
	n.proc = Start(n.tb, name, exec.Command(n.bin, append(args, n.args...)...))
}

// waitHealthy waits until /healthz answers 200.
func (n *NATSServer) waitHealthy(tb TB) {
	tb.Helper()
	n.proc.WaitHTTP(tb, n.MonitorURL()+"/healthz")
}

// Stop stops the server (SIGTERM) and waits for it to exit.
func (n *NATSServer) Stop() { n.proc.Stop() }

// Kill kills the server (SIGKILL: no shutdown, no flush of its store) and waits for it to
// exit.
func (n *NATSServer) Kill() {
	if !n.proc.Exited() {
		_ = n.proc.Signal(syscall.SIGKILL)
	}
	<-n.proc.Done()
}

// JetStream connects a NATS client to url (with opts) for reading JetStream; it closes when tb
// ends.
func JetStream(tb TB, url string, opts ...nats.Option) jetstream.JetStream {
	tb.Helper()
	nc, err := nats.Connect(url, opts...)
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
	// Polled in loops: leave no consumer behind (the server refuses more
	// than 1,000 per stream by default).
	defer func() {
		if info := cons.CachedInfo(); info != nil {
			_ = js.DeleteConsumer(context.Background(), stream, info.Name)
		}
	}()
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
