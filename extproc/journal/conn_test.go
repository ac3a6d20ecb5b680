package journal

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/ssetrack/ssetrack/test/testpki"
)

// TestConnectTLSAndNKey connects through the options ssetrack builds to a
// real nats-server that requires TLS and an nkey user.
func TestConnectTLSAndNKey(t *testing.T) {
	dir := t.TempDir()
	caFile := testpki.Write(t, dir, "nats")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "nats.pem"), filepath.Join(dir, "nats-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := runNATS(t, &server.Options{
		Host: "127.0.0.1", Port: -1,
		TLSConfig: tlsConf, TLS: true,
		Nkeys: []*server.NkeyUser{{Nkey: pub}},
	})
	url := "tls://" + ns.Addr().String()

	dial := func(c ConnConfig) error {
		opts, err := c.Options(nil)
		if err != nil {
			return err
		}
		// Fail at once instead of retrying in the background, so a refusal
		// is observable.
		nc, err := nats.Connect(url, append(opts, nats.RetryOnFailedConnect(false), nats.MaxReconnects(0))...)
		if err != nil {
			return err
		}
		defer nc.Close()
		return nc.Flush()
	}
	if err := dial(ConnConfig{URLs: []string{url}, TLSCAFile: caFile, NKeySeedFile: seedFile}); err != nil {
		t.Errorf("TLS + nkey: %v", err)
	}
	if err := dial(ConnConfig{URLs: []string{url}, NKeySeedFile: seedFile}); err == nil {
		t.Error("connected without trusting the server's CA")
	}
	if err := dial(ConnConfig{URLs: []string{url}, TLSCAFile: caFile}); err == nil {
		t.Error("connected without the nkey")
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://user:secret@host:4222": "nats://host:4222",
		"nats://host:4222":             "nats://host:4222",
		"tls://token@h":                "tls://h",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLeavesFrozenServer: a server that stops answering without closing
// the connection (a frozen process, a partition) is left for another one
// after two unanswered pings. The freeze is a TCP relay in front of a real
// nats-server that stops relaying and keeps both connections open.
func TestLeavesFrozenServer(t *testing.T) {
	a := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1})
	b := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var frozen atomic.Bool
	relay := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			for frozen.Load() {
				time.Sleep(10 * time.Millisecond) // holds the bytes, closes nothing
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", a.Addr().String())
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go relay(s, c)
			go relay(c, s)
		}
	}()
	viaRelay := "nats://" + ln.Addr().String()
	nc, err := dial(ConnConfig{URLs: []string{viaRelay, b.ClientURL()}, PingInterval: 100 * time.Millisecond},
		nil, connHooks{}, nats.DontRandomize())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil || nc.ConnectedUrl() != viaRelay {
		t.Fatalf("connected to %q (%v), want %q first", nc.ConnectedUrl(), err, viaRelay)
	}
	frozen.Store(true)
	deadline := time.Now().Add(10 * time.Second)
	for nc.ConnectedUrl() != b.ClientURL() || !nc.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatalf("still on %q (status %v) 10s after its server froze", nc.ConnectedUrl(), nc.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRetriesRefusedCredentials: a connection whose credentials the server
// stops accepting (an operator rotating accounts) keeps trying, where
// nats.go would close it at the second refusal, and connects again once the
// server accepts them: the journal comes back without a restart.
func TestRetriesRefusedCredentials(t *testing.T) {
	opts := func(port int, password string) *server.Options {
		return &server.Options{Host: "127.0.0.1", Port: port, Username: "ssetrack", Password: password}
	}
	ns := runNATS(t, opts(-1, "pw"))
	port := ns.Addr().(*net.TCPAddr).Port
	var refusals atomic.Int32
	nc, err := Connect(ConnConfig{URLs: []string{fmt.Sprintf("nats://ssetrack:pw@127.0.0.1:%d", port)}, ReconnectWait: 10 * time.Millisecond}, testLog(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if authError(err) {
				refusals.Add(1)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitFor(t, 10*time.Second, "connected", nc.IsConnected)
	ns.Shutdown()
	rotated := runNATS(t, opts(port, "rotated"))
	waitFor(t, 10*time.Second, "three refusals", func() bool { return refusals.Load() >= 3 })
	if nc.IsClosed() {
		t.Fatal("the connection closed after its credentials were refused")
	}
	rotated.Shutdown()
	runNATS(t, opts(port, "pw")) // the operator puts the password back
	waitFor(t, 10*time.Second, "connected again", nc.IsConnected)
}

// TestReadyNamesRefusedCredentials: a journal whose first connect the
// server refuses says why in its readiness error (and so in /readyz and
// the "starting degraded" log), not just that the connection is
// reconnecting.
func TestReadyNamesRefusedCredentials(t *testing.T) {
	ns := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1, Username: "ssetrack", Password: "right"})
	url := fmt.Sprintf("nats://ssetrack:wrong@127.0.0.1:%d", ns.Addr().(*net.TCPAddr).Port)
	j, err := Open(context.Background(), Options{Logger: testLog(), Conn: ConnConfig{URLs: []string{url}, ReconnectWait: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Shutdown(context.Background())
	// At once: Open logs it as it returns, before nats.go's callbacks ran.
	if err := j.Ready(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		t.Errorf("readiness as Open returns: %v; want it to name the refusal", err)
	}
}

// TestRepeatLog: a run of one error is logged at the higher level once per
// period, and a different error at once.
func TestRepeatLog(t *testing.T) {
	r := repeatLog{every: time.Hour}
	var got []bool
	for _, msg := range []string{"a", "a", "a", "b", "b", "a"} {
		got = append(got, r.noteMsg(msg))
	}
	if fmt.Sprint(got) != "[true false false true false true]" {
		t.Errorf("logged %v", got)
	}
	r0 := &repeatLog{}
	if first, second := r0.noteMsg("a"), r0.noteMsg("a"); !first || !second {
		t.Error("a period of 0 held back a repeat")
	}
}
