// Command ssetrack is the ssetrack binary: `serve` runs the Envoy external
// processor, `tail` reads a session's events from NATS JetStream.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ssetrack:", err)
		}
		os.Exit(exitCode(err))
	}
}

// exitCode is the process exit status for Main's error: 2 for usage
// errors (bad flags, invalid configuration, --help), 1 for every other
// failure (a listener that cannot open or stops, the embedded NATS server
// failing to start).
func exitCode(err error) int {
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

var errUsage = errors.New("usage")

const usage = `usage: ssetrack <command> [flags]

commands:
  serve           run the Envoy external processor (ext_proc gRPC server)
  tail            print a session's events from NATS JetStream
  demo-upstream   run a small SSE server that honours Last-Event-ID (for demos)
  version         print the version

Run 'ssetrack <command> --help' for a command's flags. Every flag of serve
and tail can also be set through an environment variable SSETRACK_<FLAG>,
upper-case with '-' as '_' (e.g. SSETRACK_LISTEN); command-line flags win.
`

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Main runs the command named by args[0]. It returns when the command is
// done or ctx is cancelled.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "tail":
		return tail(ctx, args[1:], stdout, stderr)
	case "demo-upstream":
		return demoUpstream(ctx, args[1:], stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "ssetrack", version)
		return nil
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
}

// stringList is a repeatable string flag.
type stringList struct {
	values []string
	set    bool // set on the command line or environment: replaces defaults
}

func (l *stringList) String() string { return strings.Join(l.values, ",") }

func (l *stringList) Set(v string) error {
	if !l.set {
		l.values, l.set = nil, true
	}
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			l.values = append(l.values, p)
		}
	}
	return nil
}

// parseFlags parses args, then fills every flag not given on the command line
// from its SSETRACK_ environment twin.
// A flag that does not parse is reported alone, pointing to --help, not
// followed by every flag's help.
func parseFlags(fs *flag.FlagSet, args []string) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return err
	case err != nil:
		return fmt.Errorf("%w: %w (--help lists the flags)", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		env := envName(f.Name)
		if v, ok := os.LookupEnv(env); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", env, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return nil
}

func envName(flagName string) string {
	return "SSETRACK_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// flagUsage prints a command's flags with their environment twins.
func flagUsage(fs *flag.FlagSet, w io.Writer, synopsis string) func() {
	return func() {
		fmt.Fprintf(w, "usage: %s\n\nflags (each also settable as SSETRACK_<FLAG>):\n", synopsis)
		fs.VisitAll(func(f *flag.Flag) {
			name, help := flag.UnquoteUsage(f)
			line := "  --" + f.Name
			if name != "" {
				line += " " + name
			}
			fmt.Fprintf(w, "%s\n    \t%s", line, strings.ReplaceAll(help, "\n", "\n    \t"))
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
				fmt.Fprintf(w, " (default %s)", f.DefValue)
			}
			fmt.Fprintf(w, " [$%s]\n", envName(f.Name))
		})
	}
}
