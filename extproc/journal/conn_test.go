package journal

import (
	"crypto/tls"
	"os"
	"path/filepath"
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
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		TLSConfig: tlsConf, TLS: true,
		Nkeys: []*server.NkeyUser{{Nkey: pub}},
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
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
