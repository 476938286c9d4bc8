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
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	// Progress, when not nil, is kept up to date while the replay runs,
	// for a progress display on another goroutine.
	Progress *Progress
}

// Progress counts the lines and events a running replay has handled.
type Progress struct {
	Lines, Events atomic.Int64
}

// Summary counts what a replay read and produced.
type Summary struct {
	// Rules are the ids of the enabled rules that ran, in order.
	Rules      []string
	Lines      int
	Events     int
	Rejected   map[event.Reason]int
	Alerts     map[string]int
	Suppressed map[string]int
	// Evicted counts the values new-value rules forgot to stay within
	// their capacity.
	Evicted map[string]int
	Clamped int
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
	sum := Summary{Rejected: map[event.Reason]int{}, Alerts: map[string]int{}, Suppressed: map[string]int{}, Evicted: map[string]int{}}
	for _, r := range opts.Rules.Rules {
		if r.Enabled {
			sum.Rules = append(sum.Rules, r.ID())
		}
	}
	clock := rules.NewReplayClock(opts.MaxClockSkew)
	engine := rules.NewEngine(state.NewMemory(), opts.Rules, rules.Options{
		Environment: opts.Environment,
		Clock:       clock,
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
	// The clock stamps an event once it knows what follows (see
	// rules.ReplayClock): events wait in pending until then. Input with
	// no readable time at all counts at the time the replay started.
	pending := make([]*event.Event, 0, opts.BatchSize+1)
	var record func(rules.Output) error
	process := func(n int) error {
		if n == 0 {
			return nil
		}
		res, err := engine.Process(ctx, pending[:n], start)
		if err != nil {
			return err
		}
		clear(pending[copy(pending, pending[n:]):])
		pending = pending[:len(pending)-n]
		return record(res)
	}
	flush := func() error {
		// Asked once a batch has gathered, and again every batch's worth
		// while the clock waits for a first readable time.
		if len(pending) <= opts.BatchSize || (len(pending)-1)%opts.BatchSize != 0 {
			return nil
		}
		n := min(clock.Ready(pending), opts.BatchSize)
		if n == 0 && len(pending) >= maxUntimed {
			n = len(pending)
		}
		clock.Follow(pending[n:])
		return process(n)
	}
	record = func(res rules.Output) error {
		sum.Clamped += res.Clamped
		sum.InvalidTimestamps += res.InvalidTimestamps
		for id, n := range res.Suppressed {
			sum.Suppressed[id] += n
		}
		for id, n := range res.Evicted {
			sum.Evicted[id] += n
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
		return nil
	}
	// Lines are read by one goroutine, decoded by one worker per CPU and
	// handed to the engine in input order: decoding is most of the work,
	// and the engine must see events in order for the output to be the
	// same on every run.
	ctx, cancel := context.WithCancel(ctx)
	workers := max(1, runtime.GOMAXPROCS(0))
	work := make(chan *chunk, workers*2)
	ordered := make(chan *chunk, workers*2)
	readErr := make(chan error, 1)
	go func() {
		defer close(work)
		defer close(ordered)
		readErr <- readChunks(ctx, inputs, opts.MaxBodyBytes, work, ordered)
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				c.decode(opts.MaxBodyBytes)
			}
		}()
	}
	defer func() {
		// On an early return, stop the reader and let every goroutine end.
		cancel()
		for range ordered {
		}
		wg.Wait()
	}()
	for c := range ordered {
		<-c.done
		for i := range c.lines {
			l := &c.lines[i]
			sum.Lines++
			switch {
			case l.tooLong:
				sum.Rejected[event.ReasonTooLarge]++
				report(l.input, l.number, fmt.Errorf("%s: line is longer than %d bytes", event.ReasonTooLarge, opts.MaxBodyBytes))
			case l.err != nil:
				var de *event.DecodeError
				if errors.As(l.err, &de) {
					sum.Rejected[de.Reason]++
				}
				report(l.input, l.number, l.err)
			default:
				sum.Events++
				pending = append(pending, l.event)
				if err := flush(); err != nil {
					return sum, err
				}
			}
		}
		if opts.Progress != nil {
			opts.Progress.Lines.Store(int64(sum.Lines))
			opts.Progress.Events.Store(int64(sum.Events))
		}
	}
	if err := <-readErr; err != nil {
		return sum, err
	}
	// The input has ended: nothing more can follow the events waiting.
	for len(pending) > 0 {
		n := min(len(pending), opts.BatchSize)
		clock.Follow(pending[n:])
		if err := process(n); err != nil {
			return sum, err
		}
	}
	sum.Elapsed = time.Since(start)
	return sum, w.Flush()
}

// chunkLines is how many lines travel together between the goroutines.
const chunkLines = 512

// maxUntimed is how many events replay holds back waiting for the first
// readable time before it gives up and counts them at its start time.
const maxUntimed = 1 << 14

// chunk is a run of input lines, decoded by a worker; done is closed when
// it has been.
type chunk struct {
	lines []line
	done  chan struct{}
}

type line struct {
	input   string
	number  int
	body    []byte
	tooLong bool
	event   *event.Event
	err     error
}

func (c *chunk) decode(maxBytes int) {
	for i := range c.lines {
		l := &c.lines[i]
		if !l.tooLong {
			l.event, l.err = event.Decode(l.body, maxBytes)
		}
	}
	close(c.done)
}

// readChunks reads every input in order and sends each chunk to both
// channels: to a worker to decode, then to the engine in order.
func readChunks(ctx context.Context, inputs []Input, maxBytes int, work, ordered chan<- *chunk) error {
	c := &chunk{done: make(chan struct{})}
	send := func() error {
		if len(c.lines) == 0 {
			return nil
		}
		// To a worker first: a chunk the engine waits for must be decoded.
		for _, ch := range []chan<- *chunk{work, ordered} {
			select {
			case ch <- c:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		c = &chunk{done: make(chan struct{})}
		return nil
	}
	for _, in := range inputs {
		r := bufio.NewReaderSize(in.Reader, 256<<10)
		number := 0
		for {
			body, tooLong, err := readLine(r, maxBytes)
			if len(body) == 0 && !tooLong && err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return fmt.Errorf("read %s: %w", in.Name, err)
			}
			number++
			if tooLong || len(bytes.TrimSpace(body)) > 0 {
				c.lines = append(c.lines, line{input: in.Name, number: number, body: body, tooLong: tooLong})
				if len(c.lines) == chunkLines {
					if err := send(); err != nil {
						return err
					}
				}
			}
			if errors.Is(err, io.EOF) {
				break
			}
		}
	}
	return send()
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
	// Every rule that ran, with its alerts, zero included: a rule that
	// raised nothing is worth seeing too.
	ids := slices.Clone(s.Rules)
	for _, id := range slices.Sorted(maps.Keys(s.Alerts)) {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.Suppressed)) {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		line := fmt.Sprintf("  alerts %-24s %d", id, s.Alerts[id])
		if n := s.Suppressed[id]; n > 0 {
			line += fmt.Sprintf(" (%d matches suppressed)", n)
		}
		fmt.Fprintln(w, line)
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
	for _, id := range slices.Sorted(maps.Keys(s.Evicted)) {
		notes = append(notes, fmt.Sprintf("%s forgot %d least recently seen values to stay within max_values", id, s.Evicted[id]))
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
