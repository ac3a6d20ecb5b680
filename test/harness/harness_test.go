package harness

import (
	"strings"
	"testing"
)

func TestRenderEnvoyConfig(t *testing.T) {
	cfg := "a:\n  port_value: 10000\nb:\n  port_value: 9001\nc:\n  port_value: 90010\n"
	got, err := RenderEnvoyConfig(cfg, map[int]int{10000: 0, 9001: 4242})
	if err != nil {
		t.Fatal(err)
	}
	want := "a:\n  port_value: 0\nb:\n  port_value: 4242\nc:\n  port_value: 90010\n"
	if got != want {
		t.Errorf("rendered\n%s\nwant\n%s", got, want)
	}
	for _, ports := range []map[int]int{{8080: 1}, {9001: 1}} {
		if _, err := RenderEnvoyConfig(cfg+"d:\n  port_value: 9001\n", ports); err == nil {
			t.Errorf("ports %v: no error for a port that is missing or occurs twice", ports)
		}
	}
}

func TestShippedEnvoyConfigsRender(t *testing.T) {
	for _, name := range []string{"envoy.yaml", "envoy-streamed.yaml", "envoy-observe.yaml"} {
		cfg, err := RenderEnvoyConfig(ShippedEnvoyConfig(t, name), map[int]int{PortListener: 0, PortUpstream: 1, PortExtProc: 2, PortAdmin: 0})
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if strings.Contains(cfg, "port_value: 9001") {
			t.Errorf("%s: the ext_proc port was not rewritten", name)
		}
	}
}

func TestMetrics(t *testing.T) {
	text := `# HELP x_total A counter.
# TYPE x_total counter
x_total{kind="sse",result="a,b"} 3
x_total{kind="passthrough"} 4
# TYPE g gauge
g 1.5
# TYPE h histogram
h_bucket{le="1"} 2
h_bucket{le="+Inf"} 5
h_sum 7
h_count 5
`
	m, err := ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	for sel, want := range map[string]float64{
		"x_total":                        7,
		`x_total{kind="sse"}`:            3,
		`x_total{result="a,b"}`:          3,
		`x_total{kind="passthrough"}`:    4,
		`x_total{kind="none"}`:           0,
		"g":                              1.5,
		"h_count":                        5,
		`h_bucket{le="+Inf"}`:            5,
		`x_total{kind="sse",result="a"}`: 0,
	} {
		if got := m.Sum(sel); got != want {
			t.Errorf("Sum(%s) = %v, want %v", sel, got, want)
		}
	}
	if got := m[`x_total{kind="sse",result="a,b"}`]; got != 3 {
		t.Errorf("key with sorted labels: %v, want 3 (keys %v)", got, m)
	}
	if _, err := ParseMetrics(strings.NewReader("x_total{ 3\n")); err == nil {
		t.Errorf("no error for a broken exposition")
	}
}
