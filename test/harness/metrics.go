package harness

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics maps a series to its value. For Prometheus series the key is the metric name,
// followed by its labels sorted by name when it has any: name{a="x",b="y"} (label values
// quoted as Go strings); histograms and summaries appear as their _bucket, _sum and _count
// (and quantile) series. Envoy's stats use their plain names.
type Metrics map[string]float64

// ParseMetrics reads a Prometheus text exposition.
func ParseMetrics(r io.Reader) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	var all []*dto.MetricFamily
	for _, f := range fams {
		all = append(all, f)
	}
	samples, err := expfmt.ExtractSamples(&expfmt.DecodeOptions{}, all...)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	m := Metrics{}
	for _, s := range samples {
		labels := map[string]string{}
		for k, v := range s.Metric {
			if k != model.MetricNameLabel {
				labels[string(k)] = string(v)
			}
		}
		m[SeriesKey(string(s.Metric[model.MetricNameLabel]), labels)] = float64(s.Value)
	}
	return m, nil
}

// Scrape fetches and parses the Prometheus metrics at url.
func Scrape(tb TB, url string) Metrics {
	tb.Helper()
	m, err := FetchMetrics(url)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return m
}

// FetchMetrics is Scrape returning the error, for use off the test goroutine.
func FetchMetrics(url string) (Metrics, error) {
	b, err := Get(url)
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	return ParseMetrics(bytes.NewReader(b))
}

// SeriesKey returns the Metrics key of a series.
func SeriesKey(name string, labels map[string]string) string {
	if len(labels) == 0 {
		return name
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, labels[k])
	}
	b.WriteByte('}')
	return b.String()
}

var labelPair = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// splitSeries splits a key or selector into its name and its label pairs, as written.
func splitSeries(s string) (name string, pairs []string) {
	name, rest, _ := strings.Cut(s, "{")
	return name, labelPair.FindAllString(rest, -1)
}

// Sub returns m[name] - old[name].
func (m Metrics) Sub(old Metrics, name string) float64 { return m[name] - old[name] }

// Sum adds up the series of a metric. selector is a metric name, optionally followed by
// labels as in a key ({kind="sse"}): then only the series carrying all those labels count.
func (m Metrics) Sum(selector string) float64 {
	base, want := splitSeries(selector)
	var total float64
	for k, v := range m {
		name, have := splitSeries(k)
		if name != base {
			continue
		}
		ok := true
		for _, w := range want {
			if !slices.Contains(have, w) {
				ok = false
				break
			}
		}
		if ok {
			total += v
		}
	}
	return total
}
