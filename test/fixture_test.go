package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// fixture is one running system: the test upstream, an ssetrack process and an Envoy
// process configured from one of the shipped Envoy configs.
type fixture struct {
	up       *harness.Upstream
	ssetrack *harness.Ssetrack
	envoy    *harness.Envoy
	client   *http.Client
}

// startFixture starts the system with envoy/<config> and ssetrack's embedded NATS; it
// stops when t ends, and the processes' logs are printed if t failed.
func startFixture(t *testing.T, config string) *fixture {
	t.Helper()
	return newFixture(t, config, harness.SsetrackOptions{})
}

// newFixture is startFixture with ssetrack options (an external NATS, extra flags).
func newFixture(t *testing.T, config string, opts harness.SsetrackOptions) *fixture {
	t.Helper()
	harness.EnvoyBin(t) // skip before starting anything
	fx := &fixture{up: harness.StartUpstream(t)}
	fx.ssetrack = harness.StartSsetrack(t, opts)
	fx.envoy = harness.StartEnvoy(t, harness.EnvoyOptions{Config: config, UpstreamPort: fx.up.Port, ExtProcPort: fx.ssetrack.GRPCPort})
	fx.client = newClient(t)
	return fx
}

// newClient returns the tests' HTTP client: it compares the bytes as sent (no transparent
// gzip) and keeps many connections open for concurrent streams.
// sourceFixture is a fixture around an upstream and a ssetrack already running, with an
// Envoy on config text derived from a shipped one (src), its copy named name.
func sourceFixture(t *testing.T, up *harness.Upstream, sset *harness.Ssetrack, name, src string) *fixture {
	t.Helper()
	return &fixture{up: up, ssetrack: sset, client: newClient(t), envoy: harness.StartEnvoy(t, harness.EnvoyOptions{
		Config: name, Source: src, UpstreamPort: up.Port, ExtProcPort: sset.GRPCPort,
	})}
}

// withH2Upstream is src with HTTP/2 (h2c, prior knowledge) to the upstream, whose
// responses can then end with trailers.
func withH2Upstream(t *testing.T, src string) string {
	t.Helper()
	const anchor = "  - name: upstream\n    type: STATIC\n    connect_timeout: 5s\n"
	if !strings.Contains(src, anchor) {
		t.Fatalf("envoy.yaml: upstream cluster not found by %q", anchor)
	}
	return strings.Replace(src, anchor, anchor+`    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
`, 1)
}

func newClient(t *testing.T) *http.Client {
	c := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 200}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// openRead sends a GET through Envoy and reads the first n bytes of its body; the response
// stays open (the client reads no more of it: a half-open last mile) until t ends.
func (fx *fixture) openRead(t *testing.T, path string, header http.Header, n int) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	resp, err := fx.open(ctx, http.MethodGet, path, header, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	b := make([]byte, n)
	if _, err := io.ReadFull(resp.Body, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// get sends a GET through Envoy and reads the whole body; it fails t unless the status is
// 200.
func (fx *fixture) get(t *testing.T, path string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := fx.fetch(path, header)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// fetch is get for use off the test goroutine.
func (fx *fixture) fetch(path string, header http.Header) (*http.Response, []byte, error) {
	return fx.do(http.MethodGet, path, header, nil)
}

// do sends a request through Envoy and reads the whole response body; a status other than
// 200 is an error.
func (fx *fixture) do(method, path string, header http.Header, body []byte) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := fx.open(ctx, method, path, header, body)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, b, fmt.Errorf("%s %s: reading body after %d bytes: %w", method, path, len(b), err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp, b, fmt.Errorf("%s %s: %s: %.200q", method, path, resp.Status, b)
	}
	return resp, b, nil
}

// open sends a request through Envoy and returns the response with its body unread.
func (fx *fixture) open(ctx context.Context, method, path string, header http.Header, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, fx.envoy.ProxyURL+path, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := fx.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return resp, nil
}
