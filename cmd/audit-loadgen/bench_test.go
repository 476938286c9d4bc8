package main

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

func TestMedianAndRangeOfTheRounds(t *testing.T) {
	t.Parallel()
	nan := math.NaN()
	tests := []struct {
		name            string
		values          []float64
		median, lo, hi  float64
		nothingMeasured bool
	}{
		{"one round", []float64{7}, 7, 7, 7, false},
		{"an odd count takes the middle value", []float64{9, 1, 5}, 5, 1, 9, false},
		{"an even count takes the mean of the middle two", []float64{4, 1, 3, 10}, 3.5, 1, 10, false},
		{"rounds that measured nothing are left out", []float64{nan, 2, 8, nan}, 5, 2, 8, false},
		{"no round measured anything", []float64{nan, nan}, 0, 0, 0, true},
		{"no rounds", nil, 0, 0, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m, lo, hi := medianRange(tc.values)
			if tc.nothingMeasured {
				if !math.IsNaN(m) || !math.IsNaN(lo) || !math.IsNaN(hi) {
					t.Errorf("got %v %v %v, want NaN", m, lo, hi)
				}
				return
			}
			if m != tc.median || lo != tc.lo || hi != tc.hi {
				t.Errorf("got median %v range %v–%v, want %v %v–%v", m, lo, hi, tc.median, tc.lo, tc.hi)
			}
		})
	}
}

func TestProcStatCPUIsUserPlusSystemTicks(t *testing.T) {
	t.Parallel()
	// A command name with a space and parentheses, as a process may set.
	line := "4242 (audit (log) x) S 1 4242 4242 0 -1 4194560 812 0 0 0 1234 56 0 0 20 0 9 0 1000 123456789 4567 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	got, err := parseStatCPU([]byte(line))
	if err != nil || got != 1290 {
		t.Errorf("parseStatCPU = %d, %v; want 1290", got, err)
	}
	for _, bad := range []string{"", "4242 audit S 1 2", "4242 (x) S 1 2 3", "4242 (x) S 1 2 3 4 5 6 7 8 9 10 -5 6 7"} {
		if _, err := parseStatCPU([]byte(bad)); err == nil {
			t.Errorf("parseStatCPU(%q) gave no error", bad)
		}
	}
	if d := ticksToDuration(1290, 100); d != 12900*time.Millisecond {
		t.Errorf("1290 ticks at 100 Hz = %s", d)
	}
}

func TestProcStatusSizes(t *testing.T) {
	t.Parallel()
	status := "Name:\taudit-log-analysis\nVmPeak:\t 1264412 kB\nVmHWM:\t   19876 kB\nVmRSS:\t   18000 kB\n"
	if got, err := parseStatusKB([]byte(status), "VmHWM"); err != nil || got != 19876<<10 {
		t.Errorf("VmHWM = %d, %v; want %d", got, err, 19876<<10)
	}
	if _, err := parseStatusKB([]byte(status), "VmSwap"); err == nil {
		t.Error("a missing line gave no error")
	}
	if _, err := parseStatusKB([]byte("VmHWM:\t12 MB\n"), "VmHWM"); err == nil {
		t.Error("a size not in kB gave no error")
	}
	meminfo := "MemTotal:       24641536 kB\nMemFree:        1 kB\n"
	if got, _ := parseStatusKB([]byte(meminfo), "MemTotal"); got != 24641536<<10 {
		t.Errorf("MemTotal = %d", got)
	}
}

func TestMachineAndLoadFromProc(t *testing.T) {
	t.Parallel()
	cpuinfo := "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor @ 2.10GHz\n\nprocessor\t: 1\nmodel name\t: other\n"
	if got := parseCPUModel([]byte(cpuinfo)); got != "Intel(R) Xeon(R) Processor @ 2.10GHz" {
		t.Errorf("model = %q", got)
	}
	if got := parseCPUModel([]byte("processor: 0\n")); got != "unknown" {
		t.Errorf("model without a model name = %q", got)
	}
	l, err := parseLoadAverage([]byte("1.55 0.70 0.28 3/155 8705\n"))
	if err != nil || l != (loadAverage{1.55, 0.70, 0.28}) || l.String() != "1.55 0.70 0.28" {
		t.Errorf("load = %v (%q), %v", l, l.String(), err)
	}
	if _, err := parseLoadAverage([]byte("1.5\n")); err == nil {
		t.Error("a short loadavg gave no error")
	}
}

func TestReadProcUsageOfThisProcess(t *testing.T) {
	t.Parallel()
	u, err := readProcUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.PeakRSS <= 0 || u.CPU < 0 {
		t.Errorf("usage of this process: %+v", u)
	}
	if hz := clockTicks(); hz <= 0 {
		t.Errorf("clock ticks %d", hz)
	}
}

func TestGoBenchOutputIsParsedPerPackage(t *testing.T) {
	t.Parallel()
	out := `goos: linux
goarch: amd64
pkg: github.com/audit-platform/audit-log-analysis/internal/replay
cpu: Intel(R) Xeon(R) Processor
BenchmarkReplay-2   	      10	 312345678 ns/op	  45.10 MB/s	    320157 events/s	52345678 B/op	  400012 allocs/op
PASS
ok  	github.com/audit-platform/audit-log-analysis/internal/replay	4.1s
pkg: github.com/audit-platform/audit-log-analysis/internal/state
BenchmarkRedisApply/groups=1000-2         	     100	  1234567 ns/op	   98765 B/op	    1234 allocs/op
BenchmarkMemory   	 1000000	      1042 ns/op
ok  	github.com/audit-platform/audit-log-analysis/internal/state	3.0s
`
	got, err := parseGoBench(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d results, want 3: %+v", len(got), got)
	}
	r := got[0]
	if !strings.HasSuffix(r.Package, "/internal/replay") || r.Name != "BenchmarkReplay" || r.Iterations != 10 ||
		r.NsPerOp != 312345678 || r.BytesPerOp != 52345678 || r.AllocsPerOp != 400012 ||
		r.Other["events/s"] != 320157 || r.Other["MB/s"] != 45.10 {
		t.Errorf("first result: %+v", r)
	}
	if got[1].Name != "BenchmarkRedisApply/groups=1000" || !strings.HasSuffix(got[1].Package, "/internal/state") {
		t.Errorf("sub-benchmark: %+v", got[1])
	}
	if !math.IsNaN(got[2].BytesPerOp) || got[2].NsPerOp != 1042 || got[2].otherMetrics() != "—" {
		t.Errorf("without -benchmem: %+v", got[2])
	}
	if _, err := parseGoBench(strings.NewReader("BenchmarkX-2  10  5 ns/op 7\n")); err == nil {
		t.Error("a metric without a unit gave no error")
	}
}

func TestBenchmarkPackagesAreFoundFromTheirTests(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":                        "module x\n",
		"internal/a/a_test.go":          "package a\n\nfunc BenchmarkA(b *testing.B) {}\n",
		"internal/b/b_test.go":          "package b\n\nfunc TestB(t *testing.T) {}\n",
		"internal/a/more_test.go":       "package a\n\nfunc BenchmarkMore(b *testing.B) {}\n",
		"deploy/go.mod":                 "module deploy\n",
		"deploy/d_test.go":              "package d\n\nfunc BenchmarkD(b *testing.B) {}\n",
		"internal/c/testdata/x_test.go": "package x\n\nfunc BenchmarkX(b *testing.B) {}\n",
		"internal/scale/s_test.go":      "package s\n\nfunc BenchmarkS(b *testing.B) {}\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := benchmarkPackages(dir)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "./internal/a" {
		t.Errorf("packages with benchmarks: %v, want [./internal/a]", got)
	}
	if m := modulePath(dir); m != "x" {
		t.Errorf("module path %q, want x", m)
	}
}

func TestMetricValueSumsTheSeriesOfOneName(t *testing.T) {
	t.Parallel()
	text := `# HELP audit_analysis_rabbitmq_messages_consumed_total Messages taken.
# TYPE audit_analysis_rabbitmq_messages_consumed_total counter
audit_analysis_rabbitmq_messages_consumed_total 99998
audit_analysis_rabbitmq_messages_consumed_total_created 1.7e+09
audit_analysis_alerts_total{alert_type="a",severity="CRITICAL"} 3
audit_analysis_alerts_total{alert_type="b",severity="CRITICAL"} 4
`
	if v, err := metricValue(strings.NewReader(text), "audit_analysis_rabbitmq_messages_consumed_total"); err != nil || v != 99998 {
		t.Errorf("consumed = %v, %v", v, err)
	}
	if v, err := metricValue(strings.NewReader(text), "audit_analysis_alerts_total"); err != nil || v != 7 {
		t.Errorf("alerts = %v, %v", v, err)
	}
	if _, err := metricValue(strings.NewReader(text), "audit_analysis_missing_total"); err == nil {
		t.Error("a missing metric gave no error")
	}
}

// sampleResults are figures as a run of the bench command gives them.
func sampleResults(date time.Time, drain float64) *benchResults {
	nan := math.NaN()
	return &benchResults{
		Version: 1, Date: date, Revision: "abc123",
		Machine:  machineInfo{CPUs: 2, Model: "Test CPU | with a bar", MemTotal: 4 << 30},
		RabbitMQ: "RabbitMQ 3.10.8", Redis: "Redis 7.0.15", GoVersion: "go1.26",
		LoadStart: loadAverage{0.2, 0.3, 0.4}, LoadEnd: loadAverage{1.9, 1.2, 0.7},
		Command:  "audit-loadgen bench -rounds 3",
		Settings: benchSettings{Rounds: 3, DrainEvents: 100000, Loads: []float64{2000, 5000}, Duration: "1m0s", ReplayEvents: 500000, RedisGroups: 20000, TTLLimitSecs: 360},
		Figures: []figureSummary{
			newFigure("drain.ratio", "drain rate, service ÷ ack-only", "ratio", []float64{0.97, 0.96, drain}),
			newFigure("cpu.ratio", "CPU ratio", "ratio", []float64{1.3, 1.4, 1.35}),
			newFigure("rss.service", "peak RSS", "MiB", []float64{19, 20, 21}),
			newFigure("latency.2000.p99", "p99 at 2,000/s", "ms", []float64{14, nan, 16}),
			newFigure("replay.one_core", "replay", "events/s", []float64{nan, nan, nan}),
			newFigure("redis.bytes_per_group", "bytes", "B", []float64{160, 170, 168}),
			newFigure("redis.max_ttl", "ttl", "s", []float64{359.9, 360.5, 359}),
			newFigure("latency.5000.p99", "p99 at 5,000/s", "ms", []float64{1317.6, 81, 4642.7}),
		},
		GoBench: []goBenchResult{{Package: "m/internal/replay", Name: "BenchmarkReplay", Iterations: 10, NsPerOp: 1234567, BytesPerOp: 2048, AllocsPerOp: 12, Other: map[string]float64{"events/s": 300000}}},
	}
}

func TestBenchmarksFileRendersTargetsAndReadsBack(t *testing.T) {
	t.Parallel()
	first := sampleResults(time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC), 0.5)
	var out bytes.Buffer
	if err := render(&out, first, previousFile{}); err != nil {
		t.Fatal(err)
	}
	md := out.String()
	for _, want := range []string{
		"| drain rate ≥ 0.95 × the ack-only consumer's | 0.960× median | met |",
		"| CPU per event ≤ 1.25 × the ack-only consumer's | 1.350× median | **not met** |",
		"| peak RSS ≤ 48 MiB with the backlog | 20.00 MiB median | met |",
		"| p99 event-to-alert latency < 20 ms at 2,000 events/s | 15.00 ms median | met |",
		"| replay ≥ 250,000 events/s on one core | not measured | — |",
		"keys gone within window + lateness (6m0s) | 360.50 s longest | **not met** |",
		`Test CPU \| with a bar, 2 logical cores`,
		"| BenchmarkReplay | 1,234,567 | 2,048 | 12 | 300,000 events/s | — |",
		"| p99 at 5,000/s | 1,318 ms | 81.00 – 4,643 ms |",
		defaultProfileFindings,
	} {
		if !strings.Contains(md, want) {
			t.Errorf("BENCHMARKS.md lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "machine was busy") {
		t.Error("a quiet machine was called busy")
	}

	prev, err := readPrevious(out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if prev.Results == nil || !prev.Results.Date.Equal(first.Date) || len(prev.Results.Figures) != len(first.Figures) {
		t.Fatalf("read back: %+v", prev.Results)
	}
	if f, _ := prev.Results.figure("latency.2000.p99"); f.Median != 15 || !math.IsNaN(f.Values[1]) {
		t.Errorf("p99 read back as %+v", f)
	}
	if f, _ := prev.Results.figure("replay.one_core"); !math.IsNaN(f.Median) {
		t.Errorf("a figure not measured read back as %+v", f)
	}
	if g := prev.Results.GoBench; len(g) != 1 || g[0].NsPerOp != 1234567 || g[0].BytesPerOp != 2048 {
		t.Errorf("Go benchmarks read back as %+v", g)
	}

	// Someone records profile findings by hand; the next run keeps them
	// and shows the first run's figures as the previous ones.
	findings := profileHeading + "\n\nDecoding allocated 14 times per event; see commit x.\n\n- second | finding\n"
	edited := strings.Replace(md, defaultProfileFindings, findings, 1)
	prev, err = readPrevious([]byte(edited))
	if err != nil {
		t.Fatal(err)
	}
	if prev.Profile != findings {
		t.Errorf("profile section read as %q, want %q", prev.Profile, findings)
	}
	second := sampleResults(time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC), 0.99)
	second.LoadStart = loadAverage{3.5, 2, 1}
	out.Reset()
	if err := render(&out, second, prev); err != nil {
		t.Fatal(err)
	}
	md = out.String()
	for _, want := range []string{
		findings,
		"| Previous median (2026-11-29) |",
		"| drain rate, service ÷ ack-only | 0.970× | 0.960 – 0.990× | 0.960× |",
		"| BenchmarkReplay | 1,234,567 | 2,048 | 12 | 300,000 events/s | 1,234,567 |",
		"**Warning: the machine was busy** (1-minute load average 3.50 at the start, on 2 cores)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("the rewrite lacks %q:\n%s", want, md)
		}
	}
	if strings.Count(md, profileHeading) != 1 {
		t.Errorf("the rewrite has %d profile sections", strings.Count(md, profileHeading))
	}
	again, err := readPrevious(out.Bytes())
	if err != nil || again.Profile != findings || !again.Results.Date.Equal(second.Date) {
		t.Errorf("read back after the rewrite: %v, %q, %+v", err, again.Profile, again.Results)
	}
}

func TestPreviousFileWithoutDataOrWithBrokenData(t *testing.T) {
	t.Parallel()
	p, err := readPrevious([]byte("# Benchmarks\n\nwritten by hand\n"))
	if err != nil || p.Results != nil || p.Profile != "" {
		t.Errorf("a file without data: %+v, %v", p, err)
	}
	if _, err := readPrevious([]byte("x\n" + dataStart + "\n{not json\n" + dataEnd + "\n")); err == nil {
		t.Error("a broken data block gave no error")
	}
	if _, err := readPrevious([]byte("x\n" + dataStart + "\n{}\n")); err == nil {
		t.Error("an unclosed data block gave no error")
	}
}

func TestWriteResultsKeepsTheFilesProfileFindings(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	if err := writeResults(path, sampleResults(time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC), 1)); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	findings := profileHeading + "\n\nHand-written.\n"
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), defaultProfileFindings, findings, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeResults(path, sampleResults(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), 1)); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if !strings.Contains(string(b), findings) || !strings.Contains(string(b), "Previous median (2026-11-29)") {
		t.Errorf("rewritten file:\n%s", b)
	}
}

func TestDenseStreamHasAnAlertEveryFewDozenLines(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stream.jsonl")
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	alerts, err := writeDenseStream(path, 2000, 600, now)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	if len(lines) != 2000 {
		t.Errorf("%d lines, want 2000", len(lines))
	}
	// Three whole blocks of 9 alerts, and what the cut fourth keeps.
	if alerts < 27 || alerts > 36 {
		t.Errorf("%d alerts expected, want 27 to 36", alerts)
	}
	var latest time.Time
	for _, l := range lines {
		if ev, err := event.Decode(l, event.MaxBodyBytes); err == nil && ev.Timestamp.After(latest) {
			latest = ev.Timestamp
		}
	}
	if !latest.Before(now.Add(-23 * time.Hour)) {
		t.Errorf("the latest event is at %s, less than a day before %s", latest, now)
	}
	if _, err := writeDenseStream(path, 100, 10, now); err == nil {
		t.Error("a block too small for the planted scenarios gave no error")
	}
}

func TestFailedLoginsAreOneEventPerGroup(t *testing.T) {
	t.Parallel()
	msgs := failedLogins(500, time.Now())
	users := map[string]bool{}
	for _, m := range msgs {
		ev, err := event.Decode(m.body, event.MaxBodyBytes)
		if err != nil {
			t.Fatalf("%s: %v", m.body, err)
		}
		if ev.ID != m.id {
			t.Errorf("message id %q, event id %q", m.id, ev.ID)
		}
		users[ev.UserID] = true
	}
	if len(users) != 500 {
		t.Errorf("%d distinct users in 500 events", len(users))
	}
}

// countingAcker records the acks of the reference consumer.
type countingAcker struct {
	acks []uint64 // delivery tags acked, all with multiple
	bad  int
}

func (a *countingAcker) Ack(tag uint64, multiple bool) error {
	if !multiple {
		a.bad++
	}
	a.acks = append(a.acks, tag)
	return nil
}
func (a *countingAcker) Nack(uint64, bool, bool) error { a.bad++; return nil }
func (a *countingAcker) Reject(uint64, bool) error     { a.bad++; return nil }

func TestAckOnlyConsumerAcksEverythingWithMultipleAcks(t *testing.T) {
	t.Parallel()
	acker := &countingAcker{}
	deliveries := make(chan amqp.Delivery, 1000)
	for i := range 1000 {
		deliveries <- amqp.Delivery{Acknowledger: acker, DeliveryTag: uint64(i + 1)}
	}
	rep, err := ackAll(context.Background(), deliveries, 1000, 250)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Acked != 1000 || rep.FirstUnix == 0 || rep.LastUnix < rep.FirstUnix {
		t.Errorf("report %+v", rep)
	}
	if acker.bad != 0 || len(acker.acks) != 4 || acker.acks[3] != 1000 {
		t.Errorf("acks %v (%d not multiple acks)", acker.acks, acker.bad)
	}

	// Deliveries that trickle in are acked as soon as none is waiting.
	acker = &countingAcker{}
	slow := make(chan amqp.Delivery)
	go func() {
		for i := range 3 {
			slow <- amqp.Delivery{Acknowledger: acker, DeliveryTag: uint64(i + 1)}
		}
	}()
	if _, err := ackAll(context.Background(), slow, 3, 250); err != nil {
		t.Fatal(err)
	}
	if len(acker.acks) == 0 || acker.acks[len(acker.acks)-1] != 3 {
		t.Errorf("trickled deliveries acked as %v", acker.acks)
	}
	closed := make(chan amqp.Delivery)
	close(closed)
	if _, err := ackAll(context.Background(), closed, 3, 250); err == nil {
		t.Error("a closed channel gave no error")
	}
}
