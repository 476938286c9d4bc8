// Command audit-loadgen is the project's load tool. It writes the
// deterministic sample of audit events, publishes events to RabbitMQ
// while counting the alerts the service raises for them, and runs the
// benchmark that writes BENCHMARKS.md.
//
//	audit-loadgen sample  [-n 5000] [-seed 1] [-start T] [-o FILE]
//	audit-loadgen publish [-url URL] [-queue audit_events] [-alerts audit_alerts]
//	                      [-n 100000] [-rate 0] [-seed 1] [-start T] [-file FILE]
//	                      [-timeout 5m] [-idle 3s] [-keep-alerts]
//	audit-loadgen bench   [-service bin/audit-log-analysis] [-rounds 3] [-n 100000]
//	                      [-loads 2000,5000] [-duration 1m] [-o BENCHMARKS.md] ...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/sample"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "audit-loadgen:", err)
		stop()
		os.Exit(1)
	}
}

const usage = `usage:
  audit-loadgen sample  [-n 5000] [-seed 1] [-start T] [-o FILE]
      write generated events with planted detection scenarios as JSON Lines
  audit-loadgen publish [-url URL] [-queue Q] [-alerts Q] [-n 100000] [-rate 0]
                        [-seed 1] [-start T] [-file FILE] [-timeout 5m] [-idle 3s]
                        [-keep-alerts]
      publish events with publisher confirms, count the alerts that come back
      (consuming them, or leaving them in the queue with -keep-alerts) and
      report throughput and latencies
  audit-loadgen bench   [-service bin/audit-log-analysis] [-url URL] [-redis ADDR]
                        [-rounds 3] [-n 100000] [-loads 2000,5000] [-duration 1m]
                        [-replay-events 500000] [-groups 20000] [-gobench=true]
                        [-o BENCHMARKS.md]
      measure the service against the broker and Redis in alternating rounds
      (drain rate and CPU beside an ack-only consumer, peak RSS, event-to-alert
      latency at fixed loads, replay, Redis memory per group), run the Go
      benchmarks, and write BENCHMARKS.md

Run "audit-loadgen COMMAND -h" for a command's flags.
`

// errUsage marks a command line that could not be understood.
var errUsage = errors.New("bad usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, args := args[1], args[2:]
	switch cmd {
	case "sample":
		return runSample(args, stdout, stderr)
	case "publish":
		return runPublish(ctx, args, stdout, stderr)
	case "bench":
		return runBench(ctx, args, stdout, stderr)
	case "ackonly":
		// The bench command's reference consumer; not in the usage.
		return runAckOnly(ctx, args, os.Stdin, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q: %w", cmd, errUsage)
}

// generatorFlags are the flags both commands share.
func generatorFlags(fs *flag.FlagSet, defaultEvents int) (*sample.Options, *string) {
	var opts sample.Options
	fs.IntVar(&opts.Events, "n", defaultEvents, "number of lines to generate")
	fs.Uint64Var(&opts.Seed, "seed", 1, "seed of the generator: the same seed gives the same events")
	start := fs.String("start", sample.DefaultStart().Format(time.RFC3339),
		"time of the first event (RFC 3339); the service keeps rule state by event time, so give each run against one service times of its own")
	return &opts, start
}

// flagError is what a command returns when its flags did not parse, or
// arguments followed them: nothing after -h, else a usage error.
func flagError(fs *flag.FlagSet, err error) error {
	switch {
	case errors.Is(err, flag.ErrHelp):
		return nil
	case err != nil:
		return fmt.Errorf("%s: %w", fs.Name(), errUsage)
	}
	return fmt.Errorf("%s takes no arguments: %w", fs.Name(), errUsage)
}

func parseStart(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("-start %q is not RFC 3339: %w", s, errUsage)
	}
	return t, nil
}

func runSample(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sample", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opts, start := generatorFlags(fs, sample.DefaultEvents)
	out := fs.String("o", "", "output file (default standard output)")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return flagError(fs, err)
	}
	var err error
	if opts.Start, err = parseStart(*start); err != nil {
		return err
	}
	w := stdout
	var f *os.File
	if *out != "" {
		if f, err = os.Create(*out); err != nil {
			return err
		}
		w = f
	}
	plan, err := sample.Generate(w, *opts)
	if f != nil {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write %s: %w", *out, cerr)
		}
	}
	if err != nil {
		return err
	}
	plan.WriteSummary(stderr)
	return nil
}

func runPublish(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg publishConfig
	fs.StringVar(&cfg.URL, "url", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL: the only server the tool connects to")
	fs.StringVar(&cfg.Queue, "queue", "audit_events", "queue the service consumes events from")
	fs.StringVar(&cfg.AlertQueue, "alerts", "audit_alerts", "queue the service publishes alerts to; consumed while publishing")
	opts, start := generatorFlags(fs, 100000)
	fs.Float64Var(&cfg.Rate, "rate", 0, "events per second (0: as fast as confirms allow)")
	fs.StringVar(&cfg.File, "file", "", "publish the lines of this JSON Lines file instead of generated events (-n, -seed and -start are then unused)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "give up after this long")
	fs.DurationVar(&cfg.Idle, "idle", 3*time.Second, "the alert count has stopped growing once no alert came for this long")
	fs.BoolVar(&cfg.KeepAlerts, "keep-alerts", false, "count the alerts but leave them in the alert queue (by default they are consumed)")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return flagError(fs, err)
	}
	var err error
	if opts.Start, err = parseStart(*start); err != nil {
		return err
	}
	cfg.Sample = *opts
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	rep, err := publish(ctx, cfg, stderr)
	rep.write(stdout)
	return err
}
