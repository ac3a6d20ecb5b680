package e2e

// Checks of docker-compose.yml, the Dockerfile and the Envoy configs in envoy/ that need no
// Docker engine: the compose file's structure, that every file it mounts exists, that the
// hosts and ports in each Envoy config agree with the compose services, and that the real
// Envoy accepts every config (`envoy --mode validate`).

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/ssetrack/ssetrack/test/harness"
)

// composeFile is the part of the compose specification these checks read.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       *composeBuild     `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

// loadCompose parses docker-compose.yml. Only the long forms used there are accepted (list
// commands, map environments, map depends_on): a change to another form fails loudly here.
func loadCompose(t *testing.T) composeFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(harness.Root(t), "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return cf
}

// dockerfileEnv returns the ENV settings of the Dockerfile's last stage (the runtime image).
func dockerfileEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, then read ENV KEY=VALUE ... instructions.
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") && cur.Len() == 0 {
			continue
		}
		if s, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	env := map[string]string{}
	for _, line := range lines {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			clear(env) // a new stage starts with its own environment
		case "ENV":
			for _, f := range fields[1:] {
				if k, v, ok := strings.Cut(f, "="); ok {
					env[k] = strings.Trim(v, `"`)
				}
			}
		}
	}
	return env
}

// flagValue returns the value of --name (or -name) in args, "--name=v" or "--name v".
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		for _, p := range []string{"--" + name, "-" + name} {
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				return v, true
			}
			if a == p && i+1 < len(args) {
				return args[i+1], true
			}
		}
	}
	return "", false
}

// listenAddr returns the address a service built from the Dockerfile listens on for the
// given flag: its command line, else the compose environment, else the image's ENV, else
// the flag's default.
func listenAddr(svc composeService, imageEnv map[string]string, flagName, def string) string {
	if v, ok := flagValue(svc.Command, flagName); ok {
		return v
	}
	env := "SSETRACK_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
	if v, ok := svc.Environment[env]; ok {
		return v
	}
	if v, ok := imageEnv[env]; ok {
		return v
	}
	return def
}

func splitPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return host, p
}

// containerPorts returns the container side of a service's published ports
// ("127.0.0.1:10000:10000", "10000:10000", "10000", optionally "/tcp").
func containerPorts(t *testing.T, ports []string) []int {
	t.Helper()
	var out []int
	for _, p := range ports {
		p, _, _ = strings.Cut(p, "/")
		parts := strings.Split(p, ":")
		n, err := strconv.Atoi(parts[len(parts)-1])
		if err != nil {
			t.Errorf("port mapping %q: %v", p, err)
			continue
		}
		out = append(out, n)
	}
	return out
}

// TestComposeStructure checks the services, their images or builds, commands, ordering,
// health checks and mounted files.
func TestComposeStructure(t *testing.T) {
	cf := loadCompose(t)

	want := []string{"envoy", "nats", "ssetrack", "upstream"}
	var got []string
	for name := range cf.Services {
		got = append(got, name)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}

	for name, svc := range cf.Services {
		t.Run(name, func(t *testing.T) {
			if svc.Image == "" && svc.Build == nil {
				t.Errorf("neither image nor build")
			}
			if svc.Build != nil {
				ctx := filepath.Join(harness.Root(t), svc.Build.Context)
				df := svc.Build.Dockerfile
				if df == "" {
					df = "Dockerfile"
				}
				if _, err := os.Stat(filepath.Join(ctx, df)); err != nil {
					t.Errorf("build: %v", err)
				}
			}
			if svc.Healthcheck == nil && name != "envoy" {
				t.Errorf("no healthcheck (others wait for it with depends_on)")
			}
			for dep, d := range svc.DependsOn {
				other, ok := cf.Services[dep]
				if !ok {
					t.Errorf("depends_on %q: no such service", dep)
					continue
				}
				if d.Condition == "service_healthy" && other.Healthcheck == nil {
					t.Errorf("depends_on %q healthy, but it has no healthcheck", dep)
				}
			}
			for _, v := range svc.Volumes {
				src, _, ok := strings.Cut(v, ":")
				if !ok {
					continue // anonymous volume
				}
				if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
					if _, ok := cf.Volumes[src]; !ok {
						t.Errorf("volume %q is not declared under volumes:", src)
					}
					continue
				}
				if strings.HasPrefix(src, "/") {
					t.Errorf("mount %q: use a path inside the repository", v)
					continue
				}
				if _, err := os.Stat(filepath.Join(harness.Root(t), src)); err != nil {
					t.Errorf("mounted file: %v", err)
				}
			}
		})
	}

	nats := cf.Services["nats"]
	if !strings.HasPrefix(nats.Image, "nats:") {
		t.Errorf("nats image %q, want the official nats image", nats.Image)
	}
	if !slices.Contains(nats.Command, "-js") && !slices.Contains(nats.Command, "--jetstream") {
		t.Errorf("nats command %q does not enable JetStream (-js)", nats.Command)
	}

	sse := cf.Services["ssetrack"]
	if sse.Build == nil {
		t.Errorf("ssetrack is not built from the Dockerfile")
	}
	if len(sse.Command) == 0 || sse.Command[0] != "serve" {
		t.Errorf("ssetrack command %q, want serve ...", sse.Command)
	}
	if u, _ := flagValue(sse.Command, "nats-url"); u != "nats://nats:4222" {
		t.Errorf("ssetrack --nats-url %q, want nats://nats:4222", u)
	}
	if sse.DependsOn["nats"].Condition != "service_healthy" {
		t.Errorf("ssetrack does not wait for nats to be healthy")
	}
	if hc := sse.Healthcheck; hc == nil || !strings.Contains(strings.Join(hc.Test, " "), "/readyz") {
		t.Errorf("ssetrack healthcheck does not probe /readyz")
	}

	up := cf.Services["upstream"]
	if up.Image != sse.Image {
		t.Errorf("upstream image %q, want ssetrack's %q", up.Image, sse.Image)
	}
	if len(up.Command) == 0 || up.Command[0] != "demo-upstream" {
		t.Errorf("upstream command %q, want demo-upstream ...", up.Command)
	}

	env := cf.Services["envoy"]
	if !strings.HasPrefix(env.Image, "envoyproxy/envoy:") {
		t.Errorf("envoy image %q, want envoyproxy/envoy", env.Image)
	}
	for _, dep := range []string{"ssetrack", "upstream"} {
		if _, ok := env.DependsOn[dep]; !ok {
			t.Errorf("envoy does not depend on %s", dep)
		}
	}
	cfgPath, ok := flagValue(env.Command, "c")
	if !ok {
		t.Fatalf("envoy command %q has no -c", env.Command)
	}
	mounted := false
	for _, v := range env.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == cfgPath {
			mounted = true
			if filepath.Clean(parts[0]) != filepath.Join("envoy", "envoy-compose.yaml") {
				t.Errorf("envoy mounts %s as its config, want ./envoy/envoy-compose.yaml", parts[0])
			}
		}
	}
	if !mounted {
		t.Errorf("envoy -c %s: no volume mounts that path", cfgPath)
	}

	// The runtime image: non-root, CGO off, listeners on all interfaces, ports exposed.
	df, err := os.ReadFile(filepath.Join(harness.Root(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0", "USER ", "EXPOSE 9001 9090 4222", `CMD ["serve"]`, "VOLUME"} {
		if !bytes.Contains(df, []byte(want)) {
			t.Errorf("Dockerfile: no %q", want)
		}
	}
	if e := dockerfileEnv(t, filepath.Join(harness.Root(t), "Dockerfile")); e["SSETRACK_LISTEN"] == "" || e["SSETRACK_METRICS_LISTEN"] == "" {
		t.Errorf("Dockerfile: runtime stage sets no SSETRACK_LISTEN / SSETRACK_METRICS_LISTEN (got %v)", e)
	}
}

// envoyConfig is the part of an Envoy bootstrap these checks read.
type envoyConfig struct {
	StaticResources struct {
		Listeners []struct {
			Name    string       `yaml:"name"`
			Address envoyAddress `yaml:"address"`
		} `yaml:"listeners"`
		Clusters []envoyCluster `yaml:"clusters"`
	} `yaml:"static_resources"`
	Admin struct {
		Address envoyAddress `yaml:"address"`
	} `yaml:"admin"`
}

type envoyCluster struct {
	Name           string `yaml:"name"`
	Type           string `yaml:"type"`
	LoadAssignment struct {
		Endpoints []struct {
			LbEndpoints []struct {
				Endpoint struct {
					Address envoyAddress `yaml:"address"`
				} `yaml:"endpoint"`
			} `yaml:"lb_endpoints"`
		} `yaml:"endpoints"`
	} `yaml:"load_assignment"`
}

type envoyAddress struct {
	SocketAddress struct {
		Address   string `yaml:"address"`
		PortValue int    `yaml:"port_value"`
	} `yaml:"socket_address"`
}

func (a envoyAddress) String() string {
	return net.JoinHostPort(a.SocketAddress.Address, strconv.Itoa(a.SocketAddress.PortValue))
}

func envoyConfigs(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(harness.Root(t), "envoy", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no envoy/*.yaml: %v", err)
	}
	return files
}

// TestComposeEnvoyConfigsAgree checks every Envoy config's hosts and ports against the
// compose services: the compose config names the services and their container ports; the
// local configs use loopback and the same ports, so one port map serves both setups.
func TestComposeEnvoyConfigsAgree(t *testing.T) {
	cf := loadCompose(t)
	imageEnv := dockerfileEnv(t, filepath.Join(harness.Root(t), "Dockerfile"))

	grpcHost, grpcPort := splitPort(t, listenAddr(cf.Services["ssetrack"], imageEnv, "listen", "127.0.0.1:9001"))
	upHost, upPort := splitPort(t, listenAddr(cf.Services["upstream"], imageEnv, "listen", "127.0.0.1:8080"))
	for what, host := range map[string]string{"ssetrack --listen": grpcHost, "upstream --listen": upHost} {
		if host != "0.0.0.0" && host != "" && host != "::" {
			t.Errorf("%s binds %q: other containers cannot reach it", what, host)
		}
	}
	// Cluster name → the compose service and container port it must reach.
	clusters := map[string]struct {
		service string
		port    int
	}{
		"ssetrack":          {"ssetrack", grpcPort},
		"upstream":          {"upstream", upPort},
		"existing_upstream": {"upstream", upPort}, // filter-snippet.yaml's stand-in gateway
	}
	envoyPorts := containerPorts(t, cf.Services["envoy"].Ports)

	for _, f := range envoyConfigs(t) {
		name := filepath.Base(f)
		compose := name == "envoy-compose.yaml"
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var ec envoyConfig
			if err := yaml.Unmarshal(b, &ec); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			sr := ec.StaticResources
			if len(sr.Listeners) == 0 || len(sr.Clusters) == 0 {
				t.Fatalf("no static listeners or clusters")
			}
			if !slices.ContainsFunc(sr.Clusters, func(c envoyCluster) bool { return c.Name == "ssetrack" }) {
				t.Errorf("no cluster named ssetrack")
			}

			for _, l := range sr.Listeners {
				a := l.Address.SocketAddress
				if a.PortValue != 10000 {
					t.Errorf("listener %s on %s, want port 10000 (the documented gateway port)", l.Name, l.Address)
				}
				if compose {
					if a.Address != "0.0.0.0" {
						t.Errorf("listener %s on %s: inside a container it must bind 0.0.0.0", l.Name, l.Address)
					}
					if !slices.Contains(envoyPorts, a.PortValue) {
						t.Errorf("listener port %d is not published by the envoy service (ports %v)", a.PortValue, envoyPorts)
					}
				} else if a.Address != "127.0.0.1" {
					t.Errorf("listener %s on %s: local configs bind loopback", l.Name, l.Address)
				}
			}
			if adm := ec.Admin.Address.SocketAddress; adm.PortValue != 0 {
				if compose && !slices.Contains(envoyPorts, adm.PortValue) {
					t.Errorf("admin port %d is not published by the envoy service (ports %v)", adm.PortValue, envoyPorts)
				}
				if !compose && adm.Address != "127.0.0.1" {
					t.Errorf("admin on %s: keep it on loopback", ec.Admin.Address)
				}
			}

			for _, c := range sr.Clusters {
				want, known := clusters[c.Name]
				if !known {
					t.Errorf("cluster %q: unknown to this check (add it to the map above)", c.Name)
					continue
				}
				n := 0
				for _, e := range c.LoadAssignment.Endpoints {
					for _, lb := range e.LbEndpoints {
						n++
						a := lb.Endpoint.Address.SocketAddress
						if a.PortValue != want.port {
							t.Errorf("cluster %s → %s: port %d, but compose service %s listens on %d",
								c.Name, lb.Endpoint.Address, a.PortValue, want.service, want.port)
						}
						switch {
						case compose:
							if a.Address != want.service {
								t.Errorf("cluster %s → %s: want the compose service %q", c.Name, lb.Endpoint.Address, want.service)
							}
							if _, ok := cf.Services[a.Address]; !ok {
								t.Errorf("cluster %s → %s: no such compose service", c.Name, lb.Endpoint.Address)
							}
							if c.Type != "STRICT_DNS" && c.Type != "LOGICAL_DNS" {
								t.Errorf("cluster %s names a host but has type %q, want STRICT_DNS", c.Name, c.Type)
							}
						case net.ParseIP(a.Address) == nil || !net.ParseIP(a.Address).IsLoopback():
							t.Errorf("cluster %s → %s: local configs use loopback", c.Name, lb.Endpoint.Address)
						}
					}
				}
				if n == 0 {
					t.Errorf("cluster %s has no endpoints", c.Name)
				}
			}
		})
	}
}

// TestComposeEnvoyValidate runs `envoy --mode validate` on every config in envoy/, including
// envoy-compose.yaml, whose STRICT_DNS hosts do not resolve outside compose: validation
// checks the config without resolving names or binding ports.
func TestComposeEnvoyValidate(t *testing.T) {
	bin := harness.EnvoyBin(t) // with CI=true, a missing Envoy fails
	for _, f := range envoyConfigs(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			out := validateEnvoyConfig(t, bin, f)
			if !bytes.Contains(out, []byte("OK")) {
				t.Fatalf("envoy --mode validate -c %s: no OK in its output:\n%s", f, out)
			}
			t.Logf("%s", bytes.TrimSpace(out))
		})
	}
}

// validateEnvoyConfig runs `envoy --mode validate` on the config file f and returns its
// output; it fails t if Envoy rejects the config.
func validateEnvoyConfig(t *testing.T, bin, f string) []byte {
	t.Helper()
	out, err := exec.Command(bin, "--mode", "validate", "-c", f,
		"--use-dynamic-base-id", "--log-level", "warning").CombinedOutput()
	if err != nil {
		t.Fatalf("envoy --mode validate -c %s: %v\n%s", f, err, out)
	}
	return out
}
