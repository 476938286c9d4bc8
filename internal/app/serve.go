package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/audit-platform/audit-log-analysis/internal/broker"
	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/httpapi"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	"github.com/audit-platform/audit-log-analysis/internal/state"
)

// Serve runs the service until ctx is cancelled, then stops it in order,
// within SHUTDOWN_TIMEOUT: consuming first (the batch in flight is finished
// and acknowledged), then publishing, the background watchers and the HTTP
// servers, and last what was built for them (Redis, the listeners).
// rulePaths, when given, replace RULES_FILE. An error that stops the
// service, at start-up or later, is logged in the configured format before
// it is returned.
func Serve(ctx context.Context, env Env, rulePaths []string) (err error) {
	getenv, envFile, dotErr := withDotEnv(env.Getenv)
	if dotErr != nil {
		getenv = env.Getenv
	}
	level, format := config.LoadLogging(getenv)
	logger := newLogger(level, format, env.Stdout)
	started := false
	defer func() {
		if err == nil {
			return
		}
		msg := "start-up failed"
		if started {
			msg = "stopped with an error"
		}
		logger.Error(msg, "error", err)
		err = reportedError{err}
	}()
	if dotErr != nil {
		return dotErr
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if len(rulePaths) > 0 {
		cfg.RulesFiles = rulePaths
	}
	startAttrs := []any{"version", env.Build.String()}
	if envFile != "" {
		startAttrs = append(startAttrs, "env_file", envFile)
	}
	logger.Info("starting", append(startAttrs, "config", cfg)...)
	limitMemory(logger, os.DirFS("/"))
	tuneGC(logger)
	oneProcessor(logger, env)

	// Every resource registers its clean-up as soon as it exists, so that
	// a start that fails half-way releases what it took (ports included).
	var undo cleanups
	defer undo.run()
	s, err := newServer(cfg, env, logger, &undo)
	if err != nil {
		return err
	}
	started = true
	return s.run(ctx)
}

// cleanups is a stack of clean-up functions, run in reverse order.
type cleanups []func()

func (c *cleanups) add(f func()) { *c = append(*c, f) }

func (c *cleanups) run() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
	*c = nil
}

// server is the service's parts, as built by newServer.
type server struct {
	cfg     config.Config
	logger  *slog.Logger
	metrics *metrics
	health  *health
	rules   *rules.Set

	appLn, promLn   net.Listener
	appSrv, promSrv *http.Server

	redisWatch *redisWatch
	reloader   *reloader
	publisher  *broker.Publisher
	consumer   *broker.Consumer
	pipeline   *pipeline
}

// newServer builds the service's parts in order; each step's resources
// are released by undo.
func newServer(cfg config.Config, env Env, logger *slog.Logger, undo *cleanups) (*server, error) {
	s := &server{cfg: cfg, logger: logger, health: &health{}}
	rulesLogger := logger.With("component", "rules")
	set, err := loadRules(cfg.Detection, cfg.RulesFiles, rulesLogger)
	if err != nil {
		return nil, fmt.Errorf("load rules: %w", err)
	}
	logRules(rulesLogger, "rules loaded", set)
	s.rules = set
	reg := prometheus.NewRegistry()
	s.metrics = newMetrics(reg)
	s.metrics.buildInfo.WithLabelValues(orDev(env.Build.Version), env.Build.shortRevision()).Set(1)

	// Listen before connecting to anything, so a port in use fails the
	// start at once instead of after the broker connections are up.
	if err := s.listen(undo); err != nil {
		return nil, err
	}
	store, err := s.connectRedis(undo)
	if err != nil {
		return nil, err
	}
	engine := rules.NewEngine(store, set, rules.Options{
		Environment: cfg.Environment,
		Clock:       rules.ArrivalClock{MaxSkew: cfg.MaxClockSkew},
	})
	s.reloader = &reloader{engine: engine, detection: cfg.Detection, paths: cfg.RulesFiles, metrics: s.metrics, logger: rulesLogger}
	s.reloader.publish(set)
	if err := s.newBrokerClients(); err != nil {
		return nil, err
	}
	s.pipeline = &pipeline{
		engine:          engine,
		publisher:       s.publisher,
		sourceQueue:     cfg.RabbitMQQueues[0],
		alertQueue:      cfg.RabbitMQAlertQueue,
		deadLetterQueue: cfg.RabbitMQDeadLetterQueue,
		maxBodyBytes:    event.MaxBodyBytes,
		maxDeliveries:   cfg.RabbitMQMaxDeliveries,
		metrics:         s.metrics,
		logger:          logger.With("component", "pipeline"),
		now:             time.Now,
		onStoreFailure:  s.redisWatch.failed,
	}
	s.pipeline.shadowQueue = cfg.RabbitMQShadowQueue
	metricsHandler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	s.appSrv = httpapi.NewServer(s.appLn.Addr().String(), httpapi.NewAppHandler(s.health, ruleLister{engine}, metricsHandler))
	s.promSrv = httpapi.NewServer(s.promLn.Addr().String(), httpapi.NewMetricsHandler(metricsHandler))
	return s, nil
}

func (s *server) listen(undo *cleanups) error {
	var err error
	s.appLn, err = net.Listen("tcp", ":"+strconv.Itoa(s.cfg.AppPort))
	if err != nil {
		return fmt.Errorf("listen on APP_PORT %d: %w", s.cfg.AppPort, err)
	}
	undo.add(func() { s.appLn.Close() })
	s.promLn, err = net.Listen("tcp", ":"+strconv.Itoa(s.cfg.PrometheusPort))
	if err != nil {
		return fmt.Errorf("listen on PROMETHEUS_PORT %d: %w", s.cfg.PrometheusPort, err)
	}
	undo.add(func() { s.promLn.Close() })
	return nil
}

// connectRedis builds the Redis client, its watcher and the state store.
func (s *server) connectRedis(undo *cleanups) (rules.Store, error) {
	rdb, err := newRedisClient(s.cfg.Redis)
	if err != nil {
		return nil, err
	}
	undo.add(func() { rdb.Close() })
	s.redisWatch = newRedisWatch(rdb, state.NewMarker(rdb, s.cfg.RedisKeyPrefix), s.cfg.Redis, s.health, s.metrics, s.logger.With("component", "redis"))
	return state.NewRedis(rdb, s.cfg.RedisKeyPrefix), nil
}

// newBrokerClients builds the publisher and the consumer, wiring their
// callbacks to the metrics; neither connects before run.
func (s *server) newBrokerClients() error {
	cfg, m := s.cfg, s.metrics
	queues := []string{cfg.RabbitMQAlertQueue}
	if cfg.RabbitMQDeadLetterQueue != "" {
		queues = append(queues, cfg.RabbitMQDeadLetterQueue)
	}
	if cfg.RabbitMQShadowQueue != "" {
		queues = append(queues, cfg.RabbitMQShadowQueue)
	}
	countError := func(reason string) { m.brokerErrors.WithLabelValues(reason).Inc() }
	var err error
	s.publisher, err = broker.NewPublisher(broker.PublisherConfig{
		URLs:         cfg.RabbitMQURLs,
		TLS:          cfg.RabbitMQTLS.ClientConfig,
		Logger:       s.logger,
		Queues:       queues,
		QueueType:    cfg.RabbitMQQueueType,
		OnConnection: func(up bool) { m.publisherStatus.Set(b2f(up)) },
		OnError:      countError,
		OnBlocked:    func(blocked bool, _ string) { m.brokerBlocked.Set(b2f(blocked)) },
	})
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	s.consumer, err = broker.NewConsumer(broker.ConsumerConfig{
		URLs:             cfg.RabbitMQURLs,
		TLS:              cfg.RabbitMQTLS.ClientConfig,
		Queues:           cfg.RabbitMQQueues,
		QueueType:        cfg.RabbitMQQueueType,
		Prefetch:         cfg.RabbitMQPrefetch,
		MaxInflightBytes: cfg.MaxInflightBytes,
		Logger:           s.logger,
		// The batch in flight must finish inside the shutdown budget.
		ShutdownGrace: cfg.ShutdownTimeout / 2,
		DepthQueues:   queues,
		OnConnection:  func(up bool) { m.consumerStatus.Set(b2f(up)) },
		OnError:       countError,
		OnSettled:     func(n int) { m.consumed.Add(float64(n)) },
		OnInflight:    func(bytes int64) { m.inflightBytes.Set(float64(bytes)) },
		OnQueueDepth: func(queue string, messages int, ok bool) {
			if ok {
				m.queueMessages.WithLabelValues(queue).Set(float64(messages))
			} else {
				m.queueMessages.DeleteLabelValues(queue)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	s.health.consumer, s.health.publisher = s.consumer, s.publisher
	return nil
}

// run starts the components, waits for ctx or for one of them to fail,
// then stops them in reverse order. The publisher starts before the
// consumer, so it stops after it: the consumer's last batch may still
// need to publish.
func (s *server) run(ctx context.Context) error {
	g := newGroup()
	g.start("app http server", serveHTTP(s.appSrv, s.appLn))
	g.start("metrics http server", serveHTTP(s.promSrv, s.promLn))
	g.start("redis watcher", func(ctx context.Context) error { s.redisWatch.run(ctx); return nil })
	g.start("rules reloader", func(ctx context.Context) error { s.reloader.run(ctx); return nil })
	g.start("publisher", s.publisher.Run)
	g.start("consumer", func(ctx context.Context) error { return s.consumer.Run(ctx, s.pipeline) })
	s.logger.Info("listening", "app_addr", s.appLn.Addr().String(), "metrics_addr", s.promLn.Addr().String(),
		"queues", strings.Join(s.cfg.RabbitMQQueues, ","), "alert_queue", s.cfg.RabbitMQAlertQueue, "dead_letter_queue", s.cfg.RabbitMQDeadLetterQueue,
		"rules", s.rules.Source, "rules_enabled", s.rules.Enabled())

	var runErr error
	select {
	case <-ctx.Done():
		s.logger.Info("shutting down", "cause", context.Cause(ctx))
	case runErr = <-g.failed:
		s.logger.Error("shutting down: a component stopped", "error", runErr.Error())
	}
	start := time.Now()
	if late := g.stop(start.Add(stopBudget(s.cfg.ShutdownTimeout))); len(late) > 0 {
		s.logger.Warn("not stopped in time, left behind; unacknowledged messages return to the queue", "components", late)
	}
	s.logger.Info("stopped", "took", time.Since(start).Round(time.Millisecond).String())
	return runErr
}

// stopBudget is the part of the shutdown timeout the components get; the
// rest is for releasing resources and leaving the process.
func stopBudget(timeout time.Duration) time.Duration {
	return timeout - min(timeout/10, 500*time.Millisecond)
}

// serveHTTP runs srv on ln until ctx ends, then shuts it down.
func serveHTTP(srv *http.Server, ln net.Listener) func(context.Context) error {
	return func(ctx context.Context) error {
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ln) }()
		select {
		case err := <-done:
			return fmt.Errorf("http server %s: %w", ln.Addr(), err)
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server %s: %w", ln.Addr(), err)
		}
		return nil
	}
}

// group runs the service's components, each until its own context ends,
// and stops them in the reverse order of their start.
type group struct {
	members []*member
	// failed receives the first component that stopped by itself.
	failed chan error
}

type member struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{}
}

func newGroup() *group { return &group{failed: make(chan error, 1)} }

// start runs run in a goroutine of its own. A component that returns
// before it is asked to stop has failed: the first one is reported on
// g.failed.
func (g *group) start(name string, run func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{name: name, cancel: cancel, done: make(chan struct{})}
	g.members = append(g.members, m)
	go func() {
		defer close(m.done)
		err := run(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("returned")
		}
		select {
		case g.failed <- fmt.Errorf("%s: %w", name, err):
		default:
		}
	}()
}

// stop stops the components one by one, last started first, each within
// what is left until deadline, and returns those still running at the
// deadline.
func (g *group) stop(deadline time.Time) (late []string) {
	for i := len(g.members) - 1; i >= 0; i-- {
		m := g.members[i]
		m.cancel()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-m.done:
		case <-t.C:
			late = append(late, m.name)
		}
		t.Stop()
	}
	return late
}

func newLogger(level slog.Level, format string, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationsAsText}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// durationsAsText writes every duration as Go writes it ("1.5s"): the JSON
// handler would write nanoseconds, a number without a unit.
func durationsAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// health is what /healthz reports: the broker clients' own state, and
// Redis as the watcher last saw it.
type health struct {
	consumer interface {
		Connected() bool
		Alive() bool
		Problem() *broker.Problem
	}
	publisher interface {
		Connected() bool
		Problem() *broker.Problem
		Blocked() (reason string, blocked bool)
	}
	redis atomic.Bool
}

// Status implements httpapi.Checker.
func (h *health) Status() httpapi.Status {
	st := httpapi.Status{
		RabbitMQConnected: h.consumer.Connected() && h.publisher.Connected(),
		RedisConnected:    h.redis.Load(),
		ConsumerAlive:     h.consumer.Alive(),
	}
	if p := h.consumer.Problem(); p != nil {
		st.RabbitMQError = p.Error()
	} else if p := h.publisher.Problem(); p != nil {
		st.RabbitMQError = p.Error()
	}
	if reason, blocked := h.publisher.Blocked(); blocked {
		st.RabbitMQBlocked = reason
		if reason == "" {
			st.RabbitMQBlocked = "blocked"
		}
	}
	return st
}
