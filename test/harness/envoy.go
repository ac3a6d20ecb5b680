package harness

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// DefaultEnvoyVersion is the Envoy release used unless ENVOY_VERSION says otherwise.
const DefaultEnvoyVersion = "1.40.0"

// The ports the shipped configs in envoy/ use, which RenderEnvoyConfig rewrites.
const (
	PortListener = 10000 // the gateway's listener
	PortUpstream = 8080  // the upstream cluster
	PortExtProc  = 9001  // the ssetrack (ext_proc) cluster
	PortAdmin    = 9901  // Envoy's admin
)

// envoyBin returns the Envoy binary: $ENVOY_BIN, else
// <root>/.cache/envoy/<$ENVOY_VERSION or DefaultEnvoyVersion>/envoy.
func envoyBin() (string, error) {
	if bin := os.Getenv("ENVOY_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("ENVOY_BIN=%s: %w", bin, err)
		}
		return bin, nil
	}
	root, err := rootDir()
	if err != nil {
		return "", err
	}
	version := os.Getenv("ENVOY_VERSION")
	if version == "" {
		version = DefaultEnvoyVersion
	}
	bin := filepath.Join(root, ".cache", "envoy", version, "envoy")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("no Envoy %s at %s and ENVOY_BIN is not set", version, bin)
	}
	return bin, nil
}

// envoyVersion returns the first line of `envoy --version`.
func envoyVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w\n%s", bin, err, out)
	}
	return string(bytes.TrimSpace(out)), nil
}

// EnvoyBin returns the Envoy binary ($ENVOY_BIN, else the one envoy/install.sh put under
// .cache). Without one it skips tb with a loud message, or fails it when CI is set.
func EnvoyBin(tb TB) string {
	tb.Helper()
	bin, err := envoyBin()
	if err != nil {
		if ci() {
			tb.Fatalf("CI=true and no Envoy: %v", err)
		}
		tb.Skipf("SKIPPING: NO ENVOY: %v", err)
	}
	return bin
}

// ShippedEnvoyConfig returns the text of envoy/<name>.
func ShippedEnvoyConfig(tb TB, name string) string {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(Root(tb), "envoy", name))
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return string(b)
}

var portValue = regexp.MustCompile(`\bport_value:\s*(\d+)\b`)

// RenderEnvoyConfig rewrites the port_value of each port in ports (from → to) in an Envoy
// config. Each port to rewrite must occur exactly once, so that a change in a shipped config
// cannot silently escape the tests.
func RenderEnvoyConfig(cfg string, ports map[int]int) (string, error) {
	seen := map[int]int{}
	out := portValue.ReplaceAllStringFunc(cfg, func(m string) string {
		from, _ := strconv.Atoi(portValue.FindStringSubmatch(m)[1])
		to, ok := ports[from]
		if !ok {
			return m
		}
		seen[from]++
		return "port_value: " + strconv.Itoa(to)
	})
	var errs []error
	for from := range ports {
		if seen[from] != 1 {
			errs = append(errs, fmt.Errorf("envoy config: port %d occurs %d times, want once", from, seen[from]))
		}
	}
	return out, errors.Join(errs...)
}

// EnvoyOptions configures StartEnvoy.
type EnvoyOptions struct {
	// Config is the file in envoy/ to run; default envoy.yaml. It also names the rendered
	// copy.
	Config string
	// Source, if set, is the config text to run instead of the file's (for a config derived
	// from a shipped one); its ports are rewritten all the same.
	Source string
	// UpstreamPort and ExtProcPort are where the upstream and ssetrack clusters point.
	UpstreamPort, ExtProcPort int
	// Concurrency is Envoy's number of worker threads; default 2.
	Concurrency int
	// Bin is the Envoy binary; default EnvoyBin.
	Bin string
	// Name labels the process in logs; default "envoy".
	Name string
}

// Envoy is a running Envoy.
type Envoy struct {
	Proc *Process
	// ProxyURL is the listener, where clients connect (http://127.0.0.1:port).
	ProxyURL string
	// AdminURL is the admin interface.
	AdminURL string
}

// StartEnvoy renders the config (listener and admin on port 0: Envoy picks free ones and
// reports them), starts Envoy, waits until its admin says LIVE and reads the listener's
// address. Envoy stops when tb ends.
func StartEnvoy(tb TB, opts EnvoyOptions) *Envoy {
	tb.Helper()
	if opts.Config == "" {
		opts.Config = "envoy.yaml"
	}
	if opts.Source == "" {
		opts.Source = ShippedEnvoyConfig(tb, opts.Config)
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = 2
	}
	if opts.Bin == "" {
		opts.Bin = EnvoyBin(tb)
	}
	if opts.Name == "" {
		opts.Name = "envoy"
	}
	cfg, err := RenderEnvoyConfig(opts.Source, map[int]int{
		PortListener: 0,
		PortUpstream: opts.UpstreamPort,
		PortExtProc:  opts.ExtProcPort,
		PortAdmin:    0,
	})
	if err != nil {
		tb.Fatalf("%s: %v", opts.Config, err)
	}
	dir := tb.TempDir()
	cfgPath := filepath.Join(dir, opts.Config)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		tb.Fatalf("%v", err)
	}
	adminPath := filepath.Join(dir, "admin-address")
	level := os.Getenv("E2E_ENVOY_LOG_LEVEL")
	if level == "" {
		level = "warning"
	}
	p := Start(tb, opts.Name, exec.Command(opts.Bin,
		"-c", cfgPath,
		"--use-dynamic-base-id",
		"--admin-address-path", adminPath,
		"--concurrency", strconv.Itoa(opts.Concurrency),
		"--log-level", level,
	))
	e := &Envoy{Proc: p}
	err = poll(StartTimeout, func() error {
		b, err := os.ReadFile(adminPath)
		if err == nil && len(bytes.TrimSpace(b)) > 0 {
			e.AdminURL = "http://" + string(bytes.TrimSpace(b))
			return nil
		}
		if p.Exited() {
			return stop(fmt.Errorf("%s: %w (%v)", opts.Name, ErrExited, p.err))
		}
		return fmt.Errorf("%s wrote no admin address", opts.Name)
	})
	if err == nil {
		err = p.waitHTTP(e.AdminURL+"/ready", func(code int, body []byte) bool {
			return code == 200 && strings.TrimSpace(string(body)) == "LIVE"
		})
	}
	if err != nil {
		tb.Fatalf("%s not ready: %v\n%s", opts.Name, err, p.Output())
	}

	var listeners struct {
		ListenerStatuses []struct {
			LocalAddress struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"local_address"`
		} `json:"listener_statuses"`
	}
	body := e.Admin(tb, "/listeners?format=json")
	if err := json.Unmarshal(body, &listeners); err != nil || len(listeners.ListenerStatuses) != 1 {
		tb.Fatalf("%s /listeners: want one listener, got %s (%v)", opts.Name, body, err)
	}
	sa := listeners.ListenerStatuses[0].LocalAddress.SocketAddress
	e.ProxyURL = "http://" + net.JoinHostPort(sa.Address, strconv.Itoa(sa.PortValue))
	return e
}

// Admin fetches path from Envoy's admin interface.
func (e *Envoy) Admin(tb TB, path string) []byte {
	tb.Helper()
	b, err := Get(e.AdminURL + path)
	if err != nil {
		tb.Fatalf("envoy admin: %v", err)
	}
	return b
}

// extProcStatPrefix is the ext_proc filter's stats prefix in the shipped configs
// (stat_prefix ingress_http, filter stat_prefix ssetrack).
const extProcStatPrefix = "http.ingress_http.ext_proc.ssetrack."

// ExtProcStats returns Envoy's ext_proc counters for the ssetrack filter, keyed by the last
// part of their name (streams_started, stream_msgs_sent, ...). It fails tb if there are none.
func (e *Envoy) ExtProcStats(tb TB) Metrics {
	tb.Helper()
	b := e.Admin(tb, "/stats?filter=ext_proc")
	m := Metrics{}
	for line := range strings.Lines(string(b)) {
		name, val, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok || !strings.HasPrefix(name, extProcStatPrefix) {
			continue
		}
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			m[strings.TrimPrefix(name, extProcStatPrefix)] = v
		}
	}
	if _, ok := m["streams_started"]; !ok {
		tb.Fatalf("envoy stats: no %sstreams_started in\n%s", extProcStatPrefix, b)
	}
	return m
}

// FailOpenCounters are the ext_proc counters that grow when Envoy carried on without
// ssetrack (failure_mode_allow) or received something it did not expect. Fail-open would
// otherwise hide a broken ssetrack from a test that only compares bytes.
var FailOpenCounters = []string{"streams_failed", "failure_mode_allowed", "message_timeouts", "spurious_msgs_received"}

// CheckNoFailOpen fails tb if any of FailOpenCounters grew since before (ExtProcStats).
func (e *Envoy) CheckNoFailOpen(tb TB, before Metrics) {
	tb.Helper()
	after := e.ExtProcStats(tb)
	for _, c := range FailOpenCounters {
		if d := after.Sub(before, c); d != 0 {
			tb.Errorf("envoy ext_proc counter %s grew by %v: Envoy carried on without ssetrack", c, d)
		}
	}
}
