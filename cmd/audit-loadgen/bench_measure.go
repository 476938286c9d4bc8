package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/audit-platform/audit-log-analysis/internal/sample"
)

// drainResult is one consumer's drain of the backlog.
type drainResult struct {
	Rate        float64 // events/s
	CPUPerEvent float64 // µs
	PeakRSS     float64 // MiB (the service only; NaN for the reference)
}

// latencyResult is one offered load's event-to-alert latency, in ms.
type latencyResult struct {
	P50, P99, Max float64
	Samples       int
	// Achieved is the rate the events went out at, events/s: below the
	// offered load when the publisher could not keep up.
	Achieved float64
}

// redisResult is the Redis footprint of one-event groups.
type redisResult struct {
	BytesPerGroup float64
	KeysPerGroup  float64
	MaxTTL        time.Duration
}

// names returns fresh queue names and a key prefix for one measurement.
func (b *bench) names(round int, kind string) (queueNames, string) {
	base := fmt.Sprintf("%s-r%d-%s", b.id, round+1, kind)
	return queueNames{Events: base + "-events", Alerts: base + "-alerts", DeadLetter: base + "-events.dead-letter"}, base + ":"
}

// cleanup deletes a measurement's queues and keys. It runs after the
// consumer has stopped, and reports what it could not delete.
func (b *bench) cleanup(names queueNames, prefix string) {
	for _, q := range names.all() {
		// A channel each: a failed delete closes its channel.
		ch, err := b.conn.Channel()
		if err == nil {
			_, err = ch.QueueDelete(q, false, false, false)
			ch.Close()
		}
		if err != nil {
			fmt.Fprintf(b.log, "bench: delete queue %q: %v\n", q, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := b.deleteKeys(ctx, prefix); err != nil {
		fmt.Fprintf(b.log, "bench: delete keys %s*: %v\n", prefix, err)
	}
}

// deleteKeys unlinks every key under prefix and counts them.
func (b *bench) deleteKeys(ctx context.Context, prefix string) (int, error) {
	n := 0
	err := b.scanKeys(ctx, prefix, func(keys []string) error {
		n += len(keys)
		return b.rdb.Unlink(ctx, keys...).Err()
	})
	return n, err
}

// scanKeys calls f with the keys under prefix, a batch at a time.
func (b *bench) scanKeys(ctx context.Context, prefix string, f func([]string) error) error {
	pattern := globEscape(prefix) + "*"
	var cursor uint64
	for {
		keys, next, err := b.rdb.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			if err := f(keys); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// globEscape quotes the characters Redis's MATCH treats as a pattern.
func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`, "]", `\]`).Replace(s)
}

// prepare generates the backlog, the replay file and the latency streams.
func (b *bench) prepare() error {
	msgs, _, err := loadMessages(publishConfig{Sample: sample.Options{Seed: 1, Events: b.cfg.Events}})
	if err != nil {
		return err
	}
	b.drainMsgs = msgs
	b.replayFile = filepath.Join(b.dir, "replay.jsonl")
	f, err := os.Create(b.replayFile)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	if _, err := sample.Generate(bw, sample.Options{Seed: 1, Events: b.cfg.ReplayEvents}); err != nil {
		f.Close()
		return fmt.Errorf("generate the replay file: %w", err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	for _, load := range b.cfg.Loads {
		lines := int(math.Ceil(load * b.cfg.Duration.Seconds()))
		path := filepath.Join(b.dir, fmt.Sprintf("latency-%.0f.jsonl", load))
		alerts, err := writeDenseStream(path, lines, b.cfg.AlertBlock, time.Now())
		if err != nil {
			return fmt.Errorf("generate the stream for %.0f events/s: %w", load, err)
		}
		b.latencyFiles[load] = path
		b.latencyNote += fmt.Sprintf("at %s events/s, %s lines expected to raise %s alerts; ", thousands(load), thousands(float64(lines)), thousands(float64(alerts)))
	}
	b.latencyNote = fmt.Sprintf("the stream is the generator's (`internal/sample`) in blocks of %d lines, each generated on its own (seeds 1, 2, …) so that every block holds one round of planted scenarios "+
		"(5 failed-login bursts that alert, 4 sensitive file edits, near misses, decoys, a password spray and 3 malformed lines) among background events; blocks are hours apart in event time, ending at least a day ago, so no window or suppression reaches from one block into the next: %s",
		b.cfg.AlertBlock, strings.TrimSuffix(b.latencyNote, "; ")+".")
	return nil
}

// writeDenseStream writes lines generator lines to path in blocks of
// block lines, each a separate generator stream with its own seed and its
// own stretch of time, the last ending a day before now. It returns how
// many alerts the built-in rules raise for the stream.
func writeDenseStream(path string, lines, block int, now time.Time) (int, error) {
	if block <= 0 {
		return 0, fmt.Errorf("-alert-block %d: want a positive number of lines", block)
	}
	// The span of one block sets how far apart blocks start: twice it, and
	// an hour more, leaves more than the rules' longest memory (17
	// minutes, see sample.Plan) between blocks.
	probe, err := sample.Generate(&bytes.Buffer{}, sample.Options{Seed: 1, Events: block})
	if err != nil {
		return 0, fmt.Errorf("-alert-block %d: %w", block, err)
	}
	stride := 2*probe.End.Sub(probe.Start) + time.Hour
	blocks := (lines + block - 1) / block
	base := now.Add(-24*time.Hour - time.Duration(blocks)*stride).UTC().Truncate(time.Second)

	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	alerts, written := 0, 0
	var buf bytes.Buffer
	for i := range blocks {
		buf.Reset()
		start := base.Add(time.Duration(i) * stride)
		plan, err := sample.Generate(&buf, sample.Options{Seed: uint64(i + 1), Events: block, Start: start})
		if err != nil {
			return 0, err
		}
		if plan.End.After(start.Add(stride - time.Hour)) {
			return 0, fmt.Errorf("block %d spans %s, more than its stride allows", i+1, plan.End.Sub(start))
		}
		data := buf.Bytes()
		if rest := lines - written; rest < block {
			// The last block is cut short: count only the alerts it keeps.
			cut := 0
			for range rest {
				cut += bytes.IndexByte(data[cut:], '\n') + 1
			}
			data = data[:cut]
			for _, a := range plan.Alerts {
				if a.Line <= rest {
					alerts++
				}
			}
			written += rest
		} else {
			alerts += len(plan.Alerts)
			written += block
		}
		if _, err := bw.Write(data); err != nil {
			return 0, err
		}
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return alerts, f.Close()
}

// preload publishes the backlog to a new durable queue, with confirms.
func (b *bench) preload(ctx context.Context, queue string) error {
	if err := ensureQueue(b.conn, queue); err != nil {
		return err
	}
	l := &loadRun{cfg: publishConfig{Queue: queue}, msgs: b.drainMsgs, sentAt: make([]atomic.Int64, len(b.drainMsgs)), t0: time.Now()}
	var rep report
	if err := l.publishAll(ctx, b.conn, &rep); err != nil {
		return fmt.Errorf("preload %q: %w", queue, err)
	}
	if rep.Confirmed != len(b.drainMsgs) {
		return fmt.Errorf("preload %q: %d of %d publishes confirmed, %d nacked", queue, rep.Confirmed, len(b.drainMsgs), rep.Nacked)
	}
	fmt.Fprintf(b.log, "bench: preloaded %d events into %q in %.1fs\n", rep.Confirmed, queue, rep.PublishTime.Seconds())
	return nil
}

// drainService measures the service draining the backlog.
func (b *bench) drainService(ctx context.Context, round int) (drainResult, error) {
	names, prefix := b.names(round, "drain-service")
	defer b.cleanup(names, prefix)
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Step)
	defer cancel()
	if err := b.preload(ctx, names.Events); err != nil {
		return drainResult{}, err
	}
	s, err := b.startService(names, prefix)
	if err != nil {
		return drainResult{}, err
	}
	defer s.stop(15 * time.Second)
	t0, err := waitConsumer(ctx, b.conn, names.Events, s.exited)
	if errors.Is(err, errExited) {
		return drainResult{}, s.failure()
	} else if err != nil {
		return drainResult{}, err
	}
	u0, err := readProcUsage(s.pid())
	if err != nil {
		return drainResult{}, err
	}
	// Wait on the broker until nothing is ready, then on the service's
	// metrics for the last batches: scraping /metrics costs the service
	// CPU that the reference, which serves none, does not spend.
	if err := waitEmpty(ctx, b.conn, names.Events, s.exited); errors.Is(err, errExited) {
		return drainResult{}, s.failure()
	} else if err != nil {
		return drainResult{}, err
	}
	t1, err := s.waitSettled(ctx, len(b.drainMsgs))
	if err != nil {
		return drainResult{}, err
	}
	u1, err := readProcUsage(s.pid())
	if err != nil {
		return drainResult{}, err
	}
	return drainFigures(len(b.drainMsgs), t1.Sub(t0), u1.CPU-u0.CPU, float64(u1.PeakRSS)/(1<<20)), nil
}

func drainFigures(n int, elapsed, cpu time.Duration, peakMiB float64) drainResult {
	return drainResult{
		Rate:        float64(n) / elapsed.Seconds(),
		CPUPerEvent: float64(cpu.Microseconds()) / float64(n),
		PeakRSS:     peakMiB,
	}
}

// drainReference measures the ack-only consumer draining the backlog.
func (b *bench) drainReference(ctx context.Context, round int) (drainResult, error) {
	names, prefix := b.names(round, "drain-reference")
	defer b.cleanup(names, prefix)
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Step)
	defer cancel()
	if err := b.preload(ctx, names.Events); err != nil {
		return drainResult{}, err
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return drainResult{}, err
	}
	defer inW.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		return drainResult{}, err
	}
	defer outR.Close()
	n := len(b.drainMsgs)
	c, err := startChild(b.dir, "reference-"+names.Events, b.cfg.Self,
		[]string{"ackonly", "-url", b.cfg.URL, "-queue", names.Events, "-n", strconv.Itoa(n), "-prefetch", "500"}, nil, inR, outW)
	inR.Close()
	outW.Close()
	if err != nil {
		return drainResult{}, err
	}
	defer c.stop(5 * time.Second)
	type reported struct {
		rep ackOnlyReport
		err error
	}
	reports := make(chan reported, 1)
	go func() {
		var r reported
		r.err = json.NewDecoder(outR).Decode(&r.rep)
		reports <- r
	}()
	t0, err := waitConsumer(ctx, b.conn, names.Events, c.exited)
	if errors.Is(err, errExited) {
		return drainResult{}, c.failure()
	} else if err != nil {
		return drainResult{}, err
	}
	u0, err := readProcUsage(c.pid())
	if err != nil {
		return drainResult{}, err
	}
	var r reported
	select {
	case r = <-reports:
	case <-ctx.Done():
		return drainResult{}, fmt.Errorf("wait for the reference consumer: %w", ctx.Err())
	}
	if r.err != nil || r.rep.Acked != n {
		return drainResult{}, fmt.Errorf("the reference consumer reported %d acks (%v): %w", r.rep.Acked, r.err, c.failure())
	}
	// It waits for its standard input to close: read it first.
	u1, err := readProcUsage(c.pid())
	if err != nil {
		return drainResult{}, err
	}
	inW.Close()
	d := drainFigures(n, time.Unix(0, r.rep.LastUnix).Sub(t0), u1.CPU-u0.CPU, math.NaN())
	return d, nil
}

// latency measures event-to-alert latency at one offered load.
func (b *bench) latency(ctx context.Context, round int, load float64) (latencyResult, error) {
	names, prefix := b.names(round, fmt.Sprintf("latency-%.0f", load))
	defer b.cleanup(names, prefix)
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Duration+b.cfg.Step)
	defer cancel()
	if err := ensureQueue(b.conn, names.Events); err != nil {
		return latencyResult{}, err
	}
	s, err := b.startService(names, prefix)
	if err != nil {
		return latencyResult{}, err
	}
	defer s.stop(15 * time.Second)
	if _, err := waitConsumer(ctx, b.conn, names.Events, s.exited); errors.Is(err, errExited) {
		return latencyResult{}, s.failure()
	} else if err != nil {
		return latencyResult{}, err
	}
	cfg := publishConfig{
		URL: b.cfg.URL, Queue: names.Events, AlertQueue: names.Alerts, File: b.latencyFiles[load],
		Rate: load, Timeout: b.cfg.Duration + b.cfg.Step, Idle: 2 * time.Second,
	}
	rep, err := publish(ctx, cfg, b.log)
	if err != nil {
		return latencyResult{}, err
	}
	if rep.Published != rep.Events || !rep.Drained {
		return latencyResult{}, fmt.Errorf("published %d of %d events, drained %v", rep.Published, rep.Events, rep.Drained)
	}
	l := latencyFigures(rep.EndToEnd)
	l.Achieved = float64(rep.Published) / rep.PublishTime.Seconds()
	if l.Achieved < 0.95*load {
		fmt.Fprintf(b.log, "bench: warning: %.0f events/s offered, %.0f achieved\n", load, l.Achieved)
	}
	return l, nil
}

// latencyFigures are the nearest-rank p50 and p99 and the greatest, in ms.
func latencyFigures(d []time.Duration) latencyResult {
	if len(d) == 0 {
		return latencyResult{P50: math.NaN(), P99: math.NaN(), Max: math.NaN()}
	}
	s := slices.Sorted(slices.Values(d))
	at := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return float64(s[max(i, 0)]) / float64(time.Millisecond)
	}
	return latencyResult{P50: at(0.50), P99: at(0.99), Max: at(1), Samples: len(s)}
}

// replaySummary finds the event count in replay's summary line.
var replaySummary = regexp.MustCompile(`replay: \d+ lines, (\d+) events`)

// replay runs the service's replay over the generated file and returns
// events per second of the whole process.
func (b *bench) replay(ctx context.Context, oneCore bool) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Step)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.cfg.Service, "replay", "--quiet", b.replayFile)
	cmd.Dir = b.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	if oneCore {
		cmd.Env = append(cmd.Env, "GOMAXPROCS=1")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr // stdout, the alerts, goes to /dev/null
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%s replay: %w\n%s", b.cfg.Service, err, tailLines(stderr.String(), 10))
	}
	m := replaySummary.FindStringSubmatch(stderr.String())
	if m == nil {
		return 0, fmt.Errorf("no summary in replay's output:\n%s", tailLines(stderr.String(), 10))
	}
	events, _ := strconv.Atoi(m[1])
	return float64(events) / elapsed.Seconds(), nil
}

// redisMemory feeds the service one failed login for each of Groups
// distinct users and measures the keys it leaves under its prefix.
func (b *bench) redisMemory(ctx context.Context, round int) (redisResult, error) {
	names, prefix := b.names(round, "redis")
	defer b.cleanup(names, prefix)
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Step)
	defer cancel()
	if err := ensureQueue(b.conn, names.Events); err != nil {
		return redisResult{}, err
	}
	s, err := b.startService(names, prefix)
	if err != nil {
		return redisResult{}, err
	}
	defer s.stop(15 * time.Second)
	if _, err := waitConsumer(ctx, b.conn, names.Events, s.exited); errors.Is(err, errExited) {
		return redisResult{}, s.failure()
	} else if err != nil {
		return redisResult{}, err
	}
	msgs := failedLogins(b.cfg.Groups, time.Now())
	l := &loadRun{cfg: publishConfig{Queue: names.Events}, msgs: msgs, sentAt: make([]atomic.Int64, len(msgs)), t0: time.Now()}
	var rep report
	if err := l.publishAll(ctx, b.conn, &rep); err != nil {
		return redisResult{}, err
	}
	if _, err := s.waitSettled(ctx, len(msgs)); err != nil {
		return redisResult{}, err
	}
	var keys, bytesUsed int64
	var maxTTL time.Duration
	err = b.scanKeys(ctx, prefix, func(batch []string) error {
		pipe := b.rdb.Pipeline()
		type probe struct {
			mem interface{ Result() (int64, error) }
			ttl interface {
				Result() (time.Duration, error)
			}
		}
		var probes []probe
		for _, k := range batch {
			if isMarkerKey(k) {
				continue
			}
			probes = append(probes, probe{pipe.MemoryUsage(ctx, k, 0), pipe.PTTL(ctx, k)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		for _, p := range probes {
			mem, err := p.mem.Result()
			if err != nil {
				return err
			}
			ttl, err := p.ttl.Result()
			if err != nil {
				return err
			}
			keys++
			bytesUsed += mem
			maxTTL = max(maxTTL, ttl)
		}
		return nil
	})
	if err != nil {
		return redisResult{}, fmt.Errorf("measure keys %s*: %w", prefix, err)
	}
	g := float64(b.cfg.Groups)
	return redisResult{BytesPerGroup: float64(bytesUsed) / g, KeysPerGroup: float64(keys) / g, MaxTTL: maxTTL}, nil
}

// isMarkerKey reports whether k is one of the service's state-loss
// markers (prefix{m<n>}:marker), which are not per group.
func isMarkerKey(k string) bool {
	return strings.HasSuffix(k, ":marker") && strings.Contains(k, "{m")
}

// failedLogins returns n failed logins, each of its own user on one host,
// timestamped now: n groups of ANLY-SEC-001 holding one event each.
func failedLogins(n int, now time.Time) []message {
	ts := now.UTC().Format("2006-01-02T15:04:05.000000Z")
	msgs := make([]message, n)
	for i := range msgs {
		id := uuid.NewString()
		body := fmt.Sprintf(`{"event_id": %q, "timestamp": %q, "source_service": "audit-event-generator", "server_hostname": "bench-host-01", "event_type": "user_login", "severity": "WARNING", "user_id": "bench-user-%07d", "action_result": "FAILURE", "details": {"reason": "Incorrect password", "ip_address": "192.0.2.%d", "protocol": "ssh"}}`,
			id, ts, i, i%250+1)
		msgs[i] = message{body: []byte(body), id: id}
	}
	return msgs
}
