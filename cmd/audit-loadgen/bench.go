package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/audit-platform/audit-log-analysis/internal/rules"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

// benchConfig is what the bench command runs with.
type benchConfig struct {
	Service string
	// ServiceName is Service as given, for the commands shown.
	ServiceName string
	URL         string
	Redis       string
	// Self is this program, run as the ack-only reference consumer.
	Self         string
	Rounds       int
	Events       int
	Loads        []float64
	Duration     time.Duration
	AlertBlock   int
	ReplayEvents int
	Groups       int
	Output       string
	GoBench      bool
	BenchTime    string
	ModuleDir    string
	// Step bounds each measurement.
	Step time.Duration
}

func (c benchConfig) validate() error {
	var errs []error
	if c.Service == "" {
		errs = append(errs, errors.New("-service must name the service binary (make build writes bin/audit-log-analysis)"))
	}
	if _, _, err := net.SplitHostPort(c.Redis); err != nil {
		errs = append(errs, fmt.Errorf("-redis %q is not host:port", c.Redis))
	}
	if c.Rounds < 1 || c.Events < 1 || c.ReplayEvents < 1 || c.Groups < 1 {
		errs = append(errs, errors.New("-rounds, -n, -replay-events and -groups must be positive"))
	}
	if c.Duration <= 0 || c.Step <= 0 {
		errs = append(errs, errors.New("-duration and -step-timeout must be positive"))
	}
	for _, l := range c.Loads {
		if !(l > 0) || math.IsInf(l, 0) {
			errs = append(errs, fmt.Errorf("-loads: %v is not a rate in events per second", l))
		}
	}
	if c.Output == "" {
		errs = append(errs, errors.New("-o must name the file to write"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", errUsage, errors.Join(errs...))
	}
	return nil
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg benchConfig
	fs.StringVar(&cfg.Service, "service", "bin/audit-log-analysis", "the service binary to measure")
	fs.StringVar(&cfg.URL, "url", envOr("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ URL (default $TEST_RABBITMQ_URL or the local broker)")
	fs.StringVar(&cfg.Redis, "redis", envOr("TEST_REDIS_ADDR", "127.0.0.1:6379"), "Redis host:port (default $TEST_REDIS_ADDR or the local server)")
	fs.IntVar(&cfg.Rounds, "rounds", 3, "rounds; every figure is the median of the rounds, with their range")
	fs.IntVar(&cfg.Events, "n", 100000, "events in the backlog each consumer drains")
	loads := fs.String("loads", "2000,5000", "offered loads for the latency measurement, events per second, comma-separated")
	fs.DurationVar(&cfg.Duration, "duration", time.Minute, "how long each offered load lasts")
	fs.IntVar(&cfg.AlertBlock, "alert-block", 600, "the latency stream is generated in blocks of this many lines, each holding the generator's planted scenarios (9 alerts): smaller blocks give more alerts")
	fs.IntVar(&cfg.ReplayEvents, "replay-events", 500000, "generated events replayed")
	fs.IntVar(&cfg.Groups, "groups", 20000, "failed logins of distinct users fed to measure Redis memory per group")
	fs.StringVar(&cfg.Output, "o", "BENCHMARKS.md", "file to write; its previous figures and profile findings are kept")
	fs.BoolVar(&cfg.GoBench, "gobench", true, "also run the module's Go benchmarks (go test -bench . -benchmem)")
	fs.StringVar(&cfg.BenchTime, "benchtime", "1s", "-benchtime of the Go benchmarks")
	fs.StringVar(&cfg.ModuleDir, "module", ".", "the module's directory, for the Go benchmarks and the revision")
	fs.DurationVar(&cfg.Step, "step-timeout", 5*time.Minute, "give up on a measurement after this long, on top of -duration")
	self := fs.String("self", "", "this program, run as the ack-only reference consumer (default: the running executable)")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return flagError(fs, err)
	}
	for p := range strings.SplitSeq(*loads, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		v, err := strconv.ParseFloat(p, 64)
		if err != nil {
			return fmt.Errorf("bench: -loads %q: %w", *loads, errUsage)
		}
		cfg.Loads = append(cfg.Loads, v)
	}
	cfg.Self = *self
	if cfg.Self == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench: find this program for the reference consumer: %w", err)
		}
		cfg.Self = exe
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if _, err := os.Stat(cfg.Service); err != nil {
		return fmt.Errorf("bench: the service binary: %w (run make build first)", err)
	}
	cfg.ServiceName = cfg.Service
	// The processes run in a directory of their own.
	for _, p := range []*string{&cfg.Service, &cfg.Self, &cfg.ModuleDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		*p = abs
	}
	r, err := benchmark(ctx, cfg, append([]string{"audit-loadgen", "bench"}, args...), stderr)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := writeResults(cfg.Output, r); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s\n", cfg.Output)
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// writeResults renders r into path, keeping from the file there its
// figures (as the previous ones) and its profile findings.
func writeResults(path string, r *benchResults) error {
	var prev previousFile
	if b, err := os.ReadFile(path); err == nil {
		if prev, err = readPrevious(b); err != nil {
			return fmt.Errorf("read the previous %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var buf bytes.Buffer
	if err := render(&buf, r, prev); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// bench is one run of the bench command.
type bench struct {
	cfg benchConfig
	log io.Writer
	// dir holds the generated files and the processes' logs.
	dir string
	// id makes this run's queue names and key prefixes its own.
	id   string
	conn *amqp.Connection
	rdb  *redis.Client
	// drainMsgs is the backlog; the files are generated once.
	drainMsgs  []message
	replayFile string
	// latencyFiles are the streams of the offered loads, by load.
	latencyFiles map[float64]string
	latencyNote  string
}

// roundResult is what one round measured; NaN where a measurement did not
// happen.
type roundResult struct {
	service, reference drainResult
	latency            map[float64]latencyResult
	replayOne          float64
	replayAll          float64
	redis              redisResult
}

func benchmark(ctx context.Context, cfg benchConfig, argv []string, log io.Writer) (*benchResults, error) {
	var id [3]byte
	_, _ = rand.Read(id[:])
	b := &bench{cfg: cfg, log: log, id: "bench-" + hex.EncodeToString(id[:]), latencyFiles: map[float64]string{}}
	dir, err := os.MkdirTemp("", "audit-loadgen-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b.dir = dir

	res := &benchResults{
		Version:   1,
		Date:      time.Now().UTC(),
		Revision:  gitRevision(cfg.ModuleDir),
		Machine:   readMachine(),
		GoVersion: runtime.Version(),
		Command:   strings.Join(quoteArgs(argv), " "),
		Settings: benchSettings{
			Rounds: cfg.Rounds, DrainEvents: cfg.Events, Loads: cfg.Loads, Duration: cfg.Duration.String(),
			ReplayEvents: cfg.ReplayEvents, RedisGroups: cfg.Groups,
		},
	}
	res.LoadStart, _ = readLoadAverage()

	if b.conn, err = dial(cfg.URL, "audit-loadgen bench"); err != nil {
		return nil, err
	}
	defer b.conn.Close()
	res.RabbitMQ = serverVersion(b.conn.Properties)
	b.rdb = redis.NewClient(&redis.Options{Addr: cfg.Redis, ContextTimeoutEnabled: true})
	defer b.rdb.Close()
	if res.Redis, err = redisVersion(ctx, b.rdb); err != nil {
		return nil, fmt.Errorf("redis at %s: %w", cfg.Redis, err)
	}
	window, limit, note, err := ttlLimit()
	if err != nil {
		return nil, err
	}
	res.Settings.TTLLimitSecs, res.Settings.TTLLimitNote = limit.Seconds(), note
	fmt.Fprintf(log, "bench %s: %s, %s, load average %s; files in %s\n", b.id, res.RabbitMQ, res.Redis, res.LoadStart, dir)

	if err := b.prepare(); err != nil {
		return nil, err
	}
	rounds := make([]roundResult, cfg.Rounds)
	for i := range rounds {
		if err := b.round(ctx, i, &rounds[i]); err != nil {
			return nil, fmt.Errorf("round %d: %w", i+1, err)
		}
	}
	res.LoadEnd, _ = readLoadAverage()
	b.summarize(res, rounds, window)
	res.Settings.LatencyStream = b.latencyNote

	if cfg.GoBench {
		env := []string{"TEST_RABBITMQ_URL=" + cfg.URL, "TEST_REDIS_ADDR=" + cfg.Redis}
		if res.GoBench, res.GoBenchCommand, err = runGoBench(ctx, cfg.ModuleDir, cfg.BenchTime, env, log); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// round runs every measurement once, in a fixed order: the service's drain,
// the reference's, the offered loads, replay on one core and on all, Redis
// memory.
func (b *bench) round(ctx context.Context, i int, r *roundResult) error {
	var err error
	if r.service, err = b.drainService(ctx, i); err != nil {
		return fmt.Errorf("drain by the service: %w", err)
	}
	fmt.Fprintf(b.log, "round %d: service drained %d events at %.0f events/s, %.1f µs CPU per event, peak RSS %.1f MiB\n",
		i+1, b.cfg.Events, r.service.Rate, r.service.CPUPerEvent, r.service.PeakRSS)
	if r.reference, err = b.drainReference(ctx, i); err != nil {
		return fmt.Errorf("drain by the reference consumer: %w", err)
	}
	fmt.Fprintf(b.log, "round %d: reference drained %d events at %.0f events/s, %.1f µs CPU per event\n",
		i+1, b.cfg.Events, r.reference.Rate, r.reference.CPUPerEvent)
	r.latency = map[float64]latencyResult{}
	for _, load := range b.cfg.Loads {
		l, err := b.latency(ctx, i, load)
		if err != nil {
			return fmt.Errorf("latency at %.0f events/s: %w", load, err)
		}
		r.latency[load] = l
		fmt.Fprintf(b.log, "round %d: at %.0f events/s: p50 %.2fms p99 %.2fms max %.2fms over %d alerts\n",
			i+1, load, l.P50, l.P99, l.Max, l.Samples)
	}
	if r.replayOne, err = b.replay(ctx, true); err != nil {
		return fmt.Errorf("replay on one core: %w", err)
	}
	if r.replayAll, err = b.replay(ctx, false); err != nil {
		return fmt.Errorf("replay on all cores: %w", err)
	}
	fmt.Fprintf(b.log, "round %d: replay %.0f events/s on one core, %.0f on all\n", i+1, r.replayOne, r.replayAll)
	if r.redis, err = b.redisMemory(ctx, i); err != nil {
		return fmt.Errorf("measure Redis memory: %w", err)
	}
	fmt.Fprintf(b.log, "round %d: Redis %.0f bytes and %.2f keys per group, longest TTL %.0fs\n",
		i+1, r.redis.BytesPerGroup, r.redis.KeysPerGroup, r.redis.MaxTTL.Seconds())
	return nil
}

// summarize turns the rounds into figures, notes and commands.
func (b *bench) summarize(res *benchResults, rounds []roundResult, window time.Duration) {
	col := func(f func(r roundResult) float64) []float64 {
		v := make([]float64, len(rounds))
		for i, r := range rounds {
			v[i] = f(r)
		}
		return v
	}
	add := func(key, label, unit string, f func(r roundResult) float64) {
		res.Figures = append(res.Figures, newFigure(key, label, unit, col(f)))
	}
	add("drain.service", "drain rate, service at its defaults", "events/s", func(r roundResult) float64 { return r.service.Rate })
	add("drain.reference", "drain rate, ack-only consumer", "events/s", func(r roundResult) float64 { return r.reference.Rate })
	add("drain.ratio", "drain rate, service ÷ ack-only (per round)", "ratio", func(r roundResult) float64 { return r.service.Rate / r.reference.Rate })
	add("cpu.service", "CPU per event, service", "µs", func(r roundResult) float64 { return r.service.CPUPerEvent })
	add("cpu.reference", "CPU per event, ack-only consumer", "µs", func(r roundResult) float64 { return r.reference.CPUPerEvent })
	add("cpu.ratio", "CPU per event, service ÷ ack-only (per round)", "ratio", func(r roundResult) float64 { return r.service.CPUPerEvent / r.reference.CPUPerEvent })
	add("rss.service", "peak RSS (VmHWM), service", "MiB", func(r roundResult) float64 { return r.service.PeakRSS })
	for _, load := range b.cfg.Loads {
		k := "latency." + strconv.FormatFloat(load, 'f', -1, 64)
		at := " at " + thousands(load) + " events/s"
		add(k+".p50", "event-to-alert p50"+at, "ms", func(r roundResult) float64 { return r.latency[load].P50 })
		add(k+".p99", "event-to-alert p99"+at, "ms", func(r roundResult) float64 { return r.latency[load].P99 })
		add(k+".max", "event-to-alert max"+at, "ms", func(r roundResult) float64 { return r.latency[load].Max })
		add(k+".samples", "alerts measured"+at, "samples", func(r roundResult) float64 { return float64(r.latency[load].Samples) })
		add(k+".achieved", "rate the events went out at"+at, "events/s", func(r roundResult) float64 { return r.latency[load].Achieved })
	}
	add("replay.one_core", "replay, GOMAXPROCS=1", "events/s", func(r roundResult) float64 { return r.replayOne })
	add("replay.all_cores", fmt.Sprintf("replay, all %d cores", runtime.NumCPU()), "events/s", func(r roundResult) float64 { return r.replayAll })
	add("redis.bytes_per_group", "Redis bytes per one-event group (MEMORY USAGE)", "B", func(r roundResult) float64 { return r.redis.BytesPerGroup })
	add("redis.keys_per_group", "Redis keys per one-event group", "keys", func(r roundResult) float64 { return r.redis.KeysPerGroup })
	add("redis.max_ttl", "longest TTL of a group's keys", "s", func(r roundResult) float64 { return r.redis.MaxTTL.Seconds() })

	res.Notes = []string{
		fmt.Sprintf("Drain: %s events of `audit-loadgen sample -n %d` (the generator's stream, planted scenarios and malformed lines included) are published with confirms to a fresh durable queue before the consumer starts. "+
			"The clock starts when the queue shows a consumer (polled every millisecond) and stops when the last message is settled: for the service, when `audit_analysis_rabbitmq_messages_consumed_total` reaches the count "+
			"(scraped every few milliseconds once the broker shows no message ready, so that scraping costs the service little; the middle of the last two scrapes); for the reference, at its last ack, which it reports. "+
			"The reference is `audit-loadgen ackonly`: a bare amqp091-go consumer, prefetch 500, one multiple ack per 250 deliveries or when none is waiting.",
			thousands(float64(b.cfg.Events)), b.cfg.Events),
		"CPU per event: utime + stime of /proc/PID/stat between the two moments above, divided by the events; peak RSS: VmHWM of /proc/PID/status at the end of the drain.",
		"Latency: " + b.latencyNote + " Events are published at the fixed rate with publisher confirms; alerts are consumed from the service's alert queue and matched to the event that raised them by correlation_id; latency is from that event's publish to the alert's arrival (as `audit-loadgen publish` reports it). The publisher runs on the same machine: when the rate the events went out at is below the offered load, it could not keep up.",
		fmt.Sprintf("Replay: `audit-log-analysis replay --quiet FILE` over `audit-loadgen sample -n %d`, alerts to /dev/null; wall time of the whole process, events as its summary counts them.", b.cfg.ReplayEvents),
		fmt.Sprintf("Redis: %s failed logins (`user_login`/`FAILURE`) of distinct users on one host, one event per ANLY-SEC-001 group, timestamped now. "+
			"Bytes are the sum of `MEMORY USAGE key SAMPLES 0` over the run's keys (the service's state-loss marker keys left out), divided by the groups; INFO used_memory is not used, as other clients share the server. "+
			"TTL is the longest PTTL right after the last event was settled; the limit is the rule's window (%s) plus the lateness: %s.",
			thousands(float64(b.cfg.Groups)), window, res.Settings.TTLLimitNote),
	}
	res.Commands = []string{
		"# the service, per measurement (its defaults otherwise):",
		"RABBITMQ_URL=… REDIS_HOST=… REDIS_PORT=… RABBITMQ_QUEUE=<fresh> RABBITMQ_ALERT_QUEUE=<fresh> RABBITMQ_DEAD_LETTER_QUEUE=<fresh> REDIS_KEY_PREFIX=<fresh> APP_PORT=<free> PROMETHEUS_PORT=<free> " + b.cfg.ServiceName + " serve",
		"# the reference consumer:",
		fmt.Sprintf("audit-loadgen ackonly -url … -queue <fresh> -n %d -prefetch 500", b.cfg.Events),
		"# replay:",
		fmt.Sprintf("audit-loadgen sample -n %d -o FILE", b.cfg.ReplayEvents),
		fmt.Sprintf("GOMAXPROCS=1 %s replay --quiet FILE >/dev/null", b.cfg.ServiceName),
		fmt.Sprintf("%s replay --quiet FILE >/dev/null", b.cfg.ServiceName),
	}
}

// ttlLimit is how long a one-event group of ANLY-SEC-001 may keep its keys:
// the rule's window (rules/default.yaml; the service runs at its
// defaults, so no FAILED_LOGIN_WINDOW_SECONDS) plus the lateness, which
// internal/state takes as the window and at least five minutes.
func ttlLimit() (window, limit time.Duration, note string, err error) {
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		return 0, 0, "", fmt.Errorf("read the built-in rules: %w", err)
	}
	r := set.Rule("ANLY-SEC-001")
	if r == nil || r.Threshold == nil {
		return 0, 0, "", errors.New("the built-in rules have no ANLY-SEC-001 threshold")
	}
	window = r.Threshold.Window
	lateness := max(window, 5*time.Minute)
	limit = window + lateness
	note = fmt.Sprintf("max(window, 5m) = %s (internal/state), so %s in all", lateness, limit)
	return window, limit, note, nil
}

// serverVersion reads the broker's product and version from its
// connection properties.
func serverVersion(props amqp.Table) string {
	product, _ := props["product"].(string)
	version, _ := props["version"].(string)
	if product == "" && version == "" {
		return "unknown"
	}
	return strings.TrimSpace(product + " " + version)
}

func redisVersion(ctx context.Context, rdb *redis.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return "Redis " + v, nil
		}
	}
	return "unknown", nil
}

// gitRevision describes the checkout, or is empty outside one.
func gitRevision(dir string) string {
	cmd := exec.Command("git", "describe", "--tags", "--always", "--dirty")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
