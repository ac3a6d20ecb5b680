package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// syncBuffer is a bytes.Buffer safe for the server's log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServeHelpListsEveryFlag(t *testing.T) {
	var out syncBuffer
	err := Main(context.Background(), []string{"serve", "--help"}, &out, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v, want flag.ErrHelp", err)
	}
	fs, _ := serveFlags(&bytes.Buffer{})
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(out.String(), "--"+f.Name) || !strings.Contains(out.String(), "$"+envName(f.Name)) {
			t.Errorf("help lacks --%s or $%s", f.Name, envName(f.Name))
		}
	})
	for _, want := range []string{"(default 127.0.0.1:9001)", "(default 1024)", "SSETRACK_NATS_URL"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

func TestInvalidConfigListsEveryProblem(t *testing.T) {
	t.Setenv("SSETRACK_LOG_FORMAT", "xml")
	var out syncBuffer
	err := Main(context.Background(), []string{"serve", "--dedup-window", "0", "--replicas", "5", "--tls-cert", "x.pem"}, &out, &out)
	if err == nil {
		t.Fatal("invalid configuration accepted")
	}
	for _, want := range []string{"--dedup-window 0", "--replicas 5", "--log-format \"xml\"", "--tls-cert and --tls-key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestEnvTwinLosesToFlag(t *testing.T) {
	t.Setenv("SSETRACK_DEDUP_WINDOW", "0")
	fs, c := serveFlags(&bytes.Buffer{})
	if err := parseFlags(fs, []string{"--dedup-window", "64"}); err != nil {
		t.Fatal(err)
	}
	if c.dedupWindow != 64 {
		t.Errorf("dedup window %d, want the flag's 64", c.dedupWindow)
	}
	t.Setenv("SSETRACK_SESSION_HEADER", "x-session, x-conversation")
	fs, c = serveFlags(&bytes.Buffer{})
	if err := parseFlags(fs, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.sessionHeaders.values, "|"); got != "x-session|x-conversation" {
		t.Errorf("session headers %q from the environment", got)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startServe runs `ssetrack serve` in-process until the test ends and
// waits for /readyz.
func startServe(t *testing.T, args ...string) (metrics string, logs *syncBuffer) {
	t.Helper()
	metrics = freeAddr(t)
	logs = &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, append([]string{"serve", "--metrics-listen", metrics}, args...), logs, logs)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if t.Failed() {
			t.Logf("serve logs:\n%s", logs.String())
		}
	})
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return metrics, logs
			}
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// writeCerts makes a CA and a server and a client certificate signed by it.
func writeCerts(t *testing.T, dir string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	for i, name := range []string{"server", "client"} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		write(name+".pem", "CERTIFICATE", der)
		write(name+"-key.pem", "EC PRIVATE KEY", keyDER)
	}
}

func TestServeMutualTLS(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	listen := freeAddr(t)
	startServe(t, "--journal=false", "--listen", listen,
		"--tls-cert", filepath.Join(dir, "server.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"),
		"--tls-client-ca", filepath.Join(dir, "ca.pem"))

	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	clientCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	check := func(tc *tls.Config) error {
		conn, err := grpc.NewClient(listen, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: procv3.ExternalProcessor_ServiceDesc.ServiceName})
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return errors.New(resp.GetStatus().String())
		}
		return nil
	}
	if err := check(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{clientCert}}); err != nil {
		t.Errorf("health over mTLS: %v", err)
	}
	if err := check(&tls.Config{RootCAs: pool}); err == nil {
		t.Error("a client without a certificate was served")
	}
}

// TestServeJournalAndTail drives serve's gRPC as Envoy would, then reads the
// session back with `ssetrack tail` from the embedded NATS server.
func TestServeJournalAndTail(t *testing.T) {
	listen, nats := freeAddr(t), freeAddr(t)
	metrics, logs := startServe(t, "--listen", listen, "--nats-listen", nats, "--data-dir", t.TempDir(), "--batch-delay", "5ms")

	conn, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := procv3.NewExternalProcessorClient(conn)
	const sid = "tail.*>session"
	body := "id: 1\ndata: one\n\n: comment\n\nid: 2\nevent: note\ndata: two\ndata: lines\n\n"
	for round := 0; round < 2; round++ { // the second round is all duplicates
		stream, err := client.Process(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		hm := func(kv ...string) *corev3.HeaderMap {
			m := &corev3.HeaderMap{}
			for i := 0; i < len(kv); i += 2 {
				m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
			}
			return m
		}
		msgs := []*procv3.ProcessingRequest{
			{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{Headers: hm(":method", "GET", "mcp-session-id", sid)}}},
			{Request: &procv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &procv3.HttpHeaders{Headers: hm(":status", "200", "content-type", "text/event-stream")}}},
			{Request: &procv3.ProcessingRequest_ResponseBody{ResponseBody: &procv3.HttpBody{Body: []byte(body), EndOfStream: true}}},
		}
		for _, m := range msgs {
			if err := stream.Send(m); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
		}
		stream.CloseSend()
		stream.Recv()
	}

	var out syncBuffer
	var events []eventJSON
	for try := 0; len(events) < 2 && try < 1000; try++ { // bounded: the batch is published asynchronously
		out = syncBuffer{}
		if err := Main(context.Background(), []string{"tail", "--session", sid, "--nats-url", "nats://" + nats, "--json"}, &out, &out); err != nil {
			t.Fatalf("tail: %v\n%s", err, out.String())
		}
		events = nil
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if line == "" {
				continue
			}
			var ev eventJSON
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("tail line %q: %v", line, err)
			}
			events = append(events, ev)
		}
		if len(events) < 2 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if len(events) != 2 {
		t.Fatalf("tail gave %d events, want 2 (duplicates are not persisted):\n%s", len(events), out.String())
	}
	if e := events[1]; e.ID == nil || *e.ID != "2" || e.Event != "note" || e.Data != "two\nlines" || e.Session != sid || e.Seq != 2 {
		t.Errorf("second event %+v", e)
	}
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m bytes.Buffer
	m.ReadFrom(resp.Body)
	for _, want := range []string{"ssetrack_events_deduplicated_total 2", "ssetrack_journal_events_published_total 2"} {
		if !strings.Contains(m.String(), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(logs.String(), sid) {
		t.Error("logs print the raw session id")
	}
}

func TestEventFields(t *testing.T) {
	tests := []struct{ in, event, data string }{
		{"id: 1\ndata: a\n\n", "", "a"},
		{"\nevent: x\r\ndata: a\r\ndata:b\r\n\r", "x", "a\nb"},
		{": c\ndata\n\n", "", ""},
		{"data:  two spaces\n\n", "", " two spaces"},
	}
	for _, tt := range tests {
		if ev, data := eventFields([]byte(tt.in)); ev != tt.event || data != tt.data {
			t.Errorf("eventFields(%q) = %q, %q; want %q, %q", tt.in, ev, data, tt.event, tt.data)
		}
	}
}
