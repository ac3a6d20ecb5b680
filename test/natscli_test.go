package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
	"github.com/ssetrack/ssetrack/test/harness"
)

// TestNATSCLI runs the `nats` commands of the README's "Reading events from NATS" section,
// as written there, with the stock NATS CLI (installed by `.ci/tools.sh nats`, which `make
// test` runs first) against the JetStream that ssetrack filled through Envoy, and checks
// that their output carries the events and the batch headers the README promises.
func TestNATSCLI(t *testing.T) {
	if !journalEnabled() {
		t.Skip("E2E_SSETRACK_ARGS has --journal=false: nothing to read")
	}
	natsBin := natsCLI(t)
	cmds := readmeNATSCommands(t)
	fx := startFixture(t, "envoy.yaml")

	// The README's examples name the session s1; this ssetrack is fresh, so s1 is ours.
	const sid = "s1"
	evs := []harness.Event{
		{ID: "41", Data: `{"n":41}`},
		{ID: "42", Data: "two\ndata: lines"},
		{Data: "no id"},
		{ID: "43", Data: `{"n":43}`},
	}
	body := harness.EncodeAll(evs)
	path := fx.up.Static(harness.Reply{Header: sessionHeader(sid), Body: body})
	_, got := fx.get(t, path, sessionHeader(sid))
	expectBody(t, "stream", got, body)
	js := harness.JetStream(t, fx.ssetrack.NATSURL)
	stored := waitStored(t, js, sid, 3, 20*time.Second)
	if !bytes.Equal(stored, body) {
		t.Fatalf("JetStream holds %q, want %q", stored, body)
	}
	// The KV state is written at most every 100 ms: wait for it, so kv get finds it.
	harness.WaitUntil(t, 20*time.Second, func() error {
		if fx.ssetrack.Metrics(t).Sum("ssetrack_journal_kv_writes_total") < 1 {
			return fmt.Errorf("no KV write yet")
		}
		return nil
	})

	env := append(os.Environ(),
		"NATS_URL="+fx.ssetrack.NATSURL,
		"PATH="+filepath.Dir(natsBin)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"NATS_CONTEXT=", "HOME="+t.TempDir(), // no user's nats context
	)
	for _, line := range cmds {
		args := strings.Fields(line)
		switch {
		case len(args) > 1 && (args[1] == "sub" || args[1] == "subscribe"):
			out := runUntil(t, env, line, func(out string) bool {
				return strings.Contains(out, "id: 43")
			})
			checkSubOutput(t, line, out, stored)
		case len(args) > 2 && args[1] == "kv" && args[2] == "get":
			out := runCLI(t, env, line)
			token := history.SubjectToken(sid)
			for _, want := range []string{token, `"seq":4`, `"43"`} {
				if !strings.Contains(strings.ReplaceAll(out, " ", ""), want) {
					t.Errorf("%s: output lacks %s:\n%s", line, want, out)
				}
			}
		case len(args) > 2 && args[1] == "stream" && args[2] == "info":
			out := runCLI(t, env, line)
			for _, want := range []string{history.DefaultStream, history.DefaultSubjectPrefix + ".>", "Messages: 1"} {
				if !strings.Contains(out, want) {
					t.Errorf("%s: output lacks %q:\n%s", line, want, out)
				}
			}
		default:
			t.Errorf("the README shows %q, which this test does not know how to check", line)
		}
	}
}

// checkSubOutput checks what `nats sub --stream` printed for the one batch: the headers of
// the README's table with the values of this batch, and the payload as stored.
func checkSubOutput(t *testing.T, line, out string, stored []byte) {
	t.Helper()
	for name, want := range map[string]string{
		history.HeaderSession:  "s1",
		history.HeaderFirstID:  "41",
		history.HeaderLastID:   "43",
		history.HeaderCount:    "4",
		history.HeaderFirstSeq: "1",
		history.HeaderLastSeq:  "4",
		history.HeaderStream:   "",
		history.HeaderWriter:   "",
		"Nats-Msg-Id":          "",
	} {
		m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(name) + `: ?(.*)$`).FindStringSubmatch(out)
		switch {
		case m == nil:
			t.Errorf("%s: no header %s in the output:\n%s", line, name, out)
		case want != "" && strings.TrimSpace(m[1]) != want:
			t.Errorf("%s: header %s = %q, want %q", line, name, strings.TrimSpace(m[1]), want)
		case strings.TrimSpace(m[1]) == "":
			t.Errorf("%s: header %s is empty", line, name)
		}
	}
	if !strings.Contains(out, string(bytes.TrimSpace(stored))) {
		t.Errorf("%s: the output does not carry the payload as stored (%q):\n%s", line, stored, out)
	}
}

// natsCLI returns the NATS CLI: $NATS_BIN, else the newest under .cache/tools/nats/ where
// .ci/tools.sh puts it. Without one it skips loudly, or fails when CI is set.
func natsCLI(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("NATS_BIN")
	where := "NATS_BIN=" + bin
	if bin == "" {
		where = "nothing under .cache/tools/nats/"
		found, _ := filepath.Glob(filepath.Join(harness.Root(t), ".cache", "tools", "nats", "*", "nats"))
		slices.Sort(found)
		if len(found) > 0 {
			bin = found[len(found)-1]
		}
	}
	if bin != "" {
		if _, err := os.Stat(bin); err == nil {
			return bin
		}
	}
	msg := fmt.Sprintf("no NATS CLI (%s): run .ci/tools.sh nats (make test does)", where)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("CI=true and %s", msg)
	}
	t.Skipf("SKIPPING: %s", msg)
	return ""
}

// readmeNATSCommands returns the command lines starting with `nats ` in the sh blocks of
// the README's "Reading events from NATS" section, as written (comments included).
func readmeNATSCommands(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(harness.Root(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Reading events from NATS\n")
	if !ok {
		t.Fatal(`README.md has no "## Reading events from NATS" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var cmds []string
	inSh := false
	for line := range strings.Lines(section) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "```"):
			inSh = !inSh && strings.TrimPrefix(line, "```") == "sh"
		case inSh && strings.HasPrefix(line, "nats "):
			cmds = append(cmds, line)
		}
	}
	if len(cmds) == 0 {
		t.Fatal("the README's NATS section shows no nats command")
	}
	return cmds
}

// runCLI runs a README command line with bash and returns its output; it fails t unless it
// exits with status 0 within a minute.
func runCLI(t *testing.T, env []string, line string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", line)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	t.Logf("$ %s\n%s", line, out)
	if err != nil {
		t.Fatalf("%s: %v\n%s", line, err, out)
	}
	return string(out)
}

// runUntil runs a README command line that does not end by itself (a subscription) until
// done accepts its output, then stops it and returns the output.
func runUntil(t *testing.T, env []string, line string, done func(out string) bool) string {
	t.Helper()
	cmd := exec.Command("bash", "-c", "exec "+line)
	cmd.Env = env
	p := harness.Start(t, "nats", cmd)
	harness.WaitUntil(t, time.Minute, func() error {
		if done(p.Output()) {
			return nil
		}
		if p.Exited() {
			t.Fatalf("%s exited (%v):\n%s", line, p.Err(), p.Output())
		}
		return fmt.Errorf("%s: the output does not show every event yet:\n%s", line, p.Output())
	})
	p.Stop()
	t.Logf("$ %s\n%s", line, p.Output())
	return p.Output()
}
