// Package replay runs the detection engine over JSON Lines files with the
// in-memory store, on event time: the same rules and engine as the service,
// with nothing to install. The same input always gives the same alerts.
package replay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	"github.com/audit-platform/audit-log-analysis/internal/state"
)

// Input is one named stream of JSON Lines.
type Input struct {
	Name   string
	Reader io.Reader
}

// Options configures a replay.
type Options struct {
	Rules        *rules.Set
	Environment  string
	MaxClockSkew time.Duration
	MaxBodyBytes int
	// BatchSize is how many events go to the engine at once; it changes
	// nothing in the output, only the speed.
	BatchSize int
	// Report receives one line per rejected input line; nil discards.
	Report io.Writer
	// MaxReports bounds the lines written to Report (0: 100).
	MaxReports int
}

// Summary counts what a replay read and produced.
type Summary struct {
	Lines      int
	Events     int
	Rejected   map[event.Reason]int
	Alerts     map[string]int
	Suppressed map[string]int
	Clamped    int
	// InvalidTimestamps counts events counted at arrival time because
	// their timestamp could not be read.
	InvalidTimestamps int
	Elapsed           time.Duration
}

// Run replays the inputs in order and writes each alert as one JSON line
// to out.
func Run(ctx context.Context, inputs []Input, out io.Writer, opts Options) (Summary, error) {
	start := time.Now()
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1024
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = event.MaxBodyBytes
	}
	if opts.MaxReports <= 0 {
		opts.MaxReports = 100
	}
	sum := Summary{Rejected: map[event.Reason]int{}, Alerts: map[string]int{}, Suppressed: map[string]int{}}
	engine := rules.NewEngine(state.NewMemory(), opts.Rules, rules.Options{
		Environment:  opts.Environment,
		MaxClockSkew: opts.MaxClockSkew,
		EventClock:   true,
	})
	w := bufio.NewWriterSize(out, 64<<10)
	reports := 0
	report := func(name string, line int, err error) {
		reports++
		if opts.Report == nil || reports > opts.MaxReports {
			return
		}
		fmt.Fprintf(opts.Report, "%s:%d: skipped: %v\n", name, line, err)
		if reports == opts.MaxReports {
			fmt.Fprintf(opts.Report, "(further skipped lines are counted, not listed)\n")
		}
	}
	batch := make([]*event.Event, 0, opts.BatchSize)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		res, err := engine.Process(ctx, batch, time.Time{})
		if err != nil {
			return err
		}
		sum.Clamped += res.Clamped
		sum.InvalidTimestamps += res.InvalidTimestamps
		for id, n := range res.Suppressed {
			sum.Suppressed[id] += n
		}
		for _, f := range res.Alerts {
			b, err := json.Marshal(f.Alert)
			if err != nil {
				return fmt.Errorf("encode alert: %w", err)
			}
			w.Write(b)
			w.WriteByte('\n')
			sum.Alerts[f.Rule.ID()]++
		}
		batch = batch[:0]
		return nil
	}
	for _, in := range inputs {
		r := bufio.NewReaderSize(in.Reader, 256<<10)
		line := 0
		for {
			if err := ctx.Err(); err != nil {
				return sum, err
			}
			body, tooLong, err := readLine(r, opts.MaxBodyBytes)
			if len(body) == 0 && !tooLong && err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return sum, fmt.Errorf("read %s: %w", in.Name, err)
			}
			line++
			if tooLong {
				sum.Lines++
				sum.Rejected[event.ReasonTooLarge]++
				report(in.Name, line, fmt.Errorf("%s: line is longer than %d bytes", event.ReasonTooLarge, opts.MaxBodyBytes))
				continue
			}
			if len(bytes.TrimSpace(body)) == 0 {
				if errors.Is(err, io.EOF) {
					break
				}
				continue
			}
			sum.Lines++
			ev, derr := event.Decode(body, opts.MaxBodyBytes)
			if derr != nil {
				var de *event.DecodeError
				if errors.As(derr, &de) {
					sum.Rejected[de.Reason]++
				}
				report(in.Name, line, derr)
				continue
			}
			sum.Events++
			batch = append(batch, ev)
			if len(batch) == cap(batch) {
				if err := flush(); err != nil {
					return sum, err
				}
			}
		}
	}
	if err := flush(); err != nil {
		return sum, err
	}
	sum.Elapsed = time.Since(start)
	return sum, w.Flush()
}

// readLine returns the next line without its newline. A line longer than
// limit is consumed whole and reported as too long, never buffered whole.
func readLine(r *bufio.Reader, limit int) (line []byte, tooLong bool, err error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) > limit+2 {
			tooLong = true
			buf = nil
		}
		if !tooLong {
			buf = append(buf, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		buf = bytes.TrimRight(buf, "\r\n")
		return buf, tooLong, err
	}
}

// WriteSummary prints a summary for people.
func (s Summary) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "replay: %d lines, %d events, %d rejected, %d alerts in %s",
		s.Lines, s.Events, total(s.Rejected), total(s.Alerts), s.Elapsed.Round(time.Millisecond))
	if s.Elapsed > 0 && s.Events > 0 {
		fmt.Fprintf(w, " (%.0f events/s)", float64(s.Events)/s.Elapsed.Seconds())
	}
	fmt.Fprintln(w)
	for _, id := range slices.Sorted(maps.Keys(s.Alerts)) {
		line := fmt.Sprintf("  alerts %-24s %d", id, s.Alerts[id])
		if n := s.Suppressed[id]; n > 0 {
			line += fmt.Sprintf(" (%d matches suppressed)", n)
		}
		fmt.Fprintln(w, line)
	}
	for _, id := range slices.Sorted(maps.Keys(s.Suppressed)) {
		if _, ok := s.Alerts[id]; !ok {
			fmt.Fprintf(w, "  alerts %-24s 0 (%d matches suppressed)\n", id, s.Suppressed[id])
		}
	}
	for _, r := range slices.Sorted(maps.Keys(s.Rejected)) {
		fmt.Fprintf(w, "  rejected %-22s %d\n", r, s.Rejected[r])
	}
	var notes []string
	if s.Clamped > 0 {
		notes = append(notes, fmt.Sprintf("%d event times more than the allowed skew ahead were clamped", s.Clamped))
	}
	if s.InvalidTimestamps > 0 {
		notes = append(notes, fmt.Sprintf("%d unreadable timestamps counted at arrival time", s.InvalidTimestamps))
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "  note: %s\n", strings.Join(notes, "; "))
	}
}

func total[K comparable](m map[K]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
