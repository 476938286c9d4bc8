package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/replay"
)

func runReplay(ctx context.Context, env Env, args []string) error {
	c := newCommand("replay", "replay [--rules PATH]... [--quiet] [FILE|- ...]",
		"Run the rules over JSON Lines files (\"-\" or no FILE: standard input) with an\n"+
			"in-memory store, on event time; write the alerts to stdout and a summary\n"+
			"to stderr. Only the detection settings are read from the environment\n"+
			"(RULES_FILE, RULES_BUILTIN, FAILED_LOGIN_*, SENSITIVE_FILES, ENVIRONMENT,\n"+
			"MAX_CLOCK_SKEW); broker and Redis settings are ignored. On a terminal,\n"+
			"progress is shown on stderr for inputs that take more than 2 seconds.")
	var paths listFlag
	c.fs.Var(&paths, "rules", "rules file or directory, added to the built-in rules (repeatable, comma-separated; default RULES_FILE)")
	quiet := c.fs.Bool("quiet", false, "do not list skipped lines")
	showProgress := c.fs.Bool("progress", true, "show progress on a terminal")
	files, err := c.parse(env, args)
	if err != nil {
		return err
	}
	getenv, _, err := withDotEnv(env.Getenv)
	if err != nil {
		return err
	}
	d, err := config.LoadDetection(getenv)
	if err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if len(paths) == 0 {
		paths = d.RulesFiles
	}
	logger := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tuneGC(logger)
	set, err := loadRules(d, paths, logger)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	for _, w := range set.Warnings {
		fmt.Fprintln(env.Stderr, "warning:", w)
	}
	if len(files) == 0 {
		files = []string{"-"}
	}
	var inputs []replay.Input
	var read atomic.Int64
	total, sized := int64(0), true
	for _, name := range files {
		var r io.Reader = env.Stdin
		if name == "-" {
			name = "stdin"
		} else {
			f, err := os.Open(name)
			if err != nil {
				return fmt.Errorf("replay: %w", err)
			}
			defer f.Close()
			r = f
		}
		size, ok := regularSize(r)
		total, sized = total+size, sized && ok
		inputs = append(inputs, replay.Input{Name: name, Reader: &countingReader{r: r, n: &read}})
	}
	opts := replay.Options{Rules: set, Environment: d.Environment, MaxClockSkew: d.MaxClockSkew, Report: env.Stderr,
		Progress: &replay.Progress{}}
	if *quiet {
		opts.Report = nil
	}
	if !sized {
		total = 0
	}
	fmt.Fprintf(env.Stderr, "replay: %d rules enabled (%s) from %s\n",
		set.Enabled(), strings.Join(enabledIDs(set), ", "), strings.ReplaceAll(set.Source, ",", ", "))
	stop := func() {}
	if *showProgress && isTerminal(env.Stderr) {
		p := &progress{w: env.Stderr, counts: opts.Progress, read: &read, total: total, start: time.Now()}
		stop = p.run(time.Second)
	}
	sum, err := replay.Run(ctx, inputs, env.Stdout, opts)
	stop()
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	sum.WriteSummary(env.Stderr)
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// regularSize returns the size of r when it is a regular file.
func regularSize(r io.Reader) (int64, bool) {
	f, ok := r.(*os.File)
	if !ok {
		return 0, false
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return 0, false
	}
	return st.Size(), true
}

// isTerminal reports whether w is a character device, as a terminal is.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressAfter is how long a replay runs before progress is shown: short
// inputs finish without it.
const progressAfter = 2 * time.Second

// progress shows how far a replay is on one line of a terminal.
type progress struct {
	w      io.Writer
	counts *replay.Progress
	read   *atomic.Int64
	total  int64 // bytes of input, 0 when unknown
	start  time.Time
}

// run shows the progress every interval once progressAfter has passed,
// until the returned stop is called; stop clears the line.
func (p *progress) run(interval time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	shown := false
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				if now.Sub(p.start) < progressAfter {
					continue
				}
				fmt.Fprintf(p.w, "\r%s\x1b[K", p.line(now))
				shown = true
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		if shown {
			fmt.Fprint(p.w, "\r\x1b[K")
		}
	}
}

// line describes the progress at now: lines read, events per second and,
// when the input size is known, the share done and the time left.
func (p *progress) line(now time.Time) string {
	elapsed := now.Sub(p.start)
	lines, events := p.counts.Lines.Load(), p.counts.Events.Load()
	s := fmt.Sprintf("replay: %d lines, %.0f events/s", lines, float64(events)/max(elapsed.Seconds(), 0.001))
	if read := p.read.Load(); p.total > 0 && read > 0 {
		done := min(float64(read)/float64(p.total), 1)
		eta := time.Duration(float64(elapsed) * (1 - done) / done)
		s += fmt.Sprintf(", %.0f%%, ETA %s", 100*done, eta.Round(time.Second))
	}
	return s
}
