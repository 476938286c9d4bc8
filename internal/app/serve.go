package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
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

// Serve runs the service until ctx is cancelled, then stops it in order:
// consuming first (the batch in flight is finished and acknowledged), then
// publishing, the HTTP servers and Redis. rulePaths, when given, replace
// RULES_FILE. An error that stops the service, at start-up or later, is
// logged in the configured format before it is returned.
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

	rulesLogger := logger.With("component", "rules")
	set, err := loadRules(cfg.Detection, cfg.RulesFiles, rulesLogger)
	if err != nil {
		return fmt.Errorf("load rules: %w", err)
	}
	logRules(rulesLogger, "rules loaded", set)

	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	m.buildInfo.WithLabelValues(orDev(env.Build.Version), env.Build.shortRevision()).Set(1)

	// Listen before anything else, so a port in use fails the start at
	// once instead of after the broker connections are up.
	appLn, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.AppPort))
	if err != nil {
		return fmt.Errorf("listen on APP_PORT %d: %w", cfg.AppPort, err)
	}
	promLn, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.PrometheusPort))
	if err != nil {
		appLn.Close()
		return fmt.Errorf("listen on PROMETHEUS_PORT %d: %w", cfg.PrometheusPort, err)
	}

	rdb, err := newRedisClient(cfg.Redis)
	if err != nil {
		appLn.Close()
		promLn.Close()
		return err
	}
	defer rdb.Close()

	h := &health{}
	store := state.NewRedis(rdb, cfg.RedisKeyPrefix)
	engine := rules.NewEngine(store, set, rules.Options{
		Environment: cfg.Environment,
		Clock:       rules.ArrivalClock{MaxSkew: cfg.MaxClockSkew},
	})
	reloader := &reloader{engine: engine, detection: cfg.Detection, paths: cfg.RulesFiles, metrics: m, logger: rulesLogger}
	reloader.publish(set)

	queues := []string{cfg.RabbitMQAlertQueue}
	if cfg.RabbitMQDeadLetterQueue != "" {
		queues = append(queues, cfg.RabbitMQDeadLetterQueue)
	}
	if cfg.RabbitMQShadowQueue != "" {
		queues = append(queues, cfg.RabbitMQShadowQueue)
	}
	publisher, err := broker.NewPublisher(broker.PublisherConfig{
		URL:          cfg.RabbitMQURLs[0],
		Logger:       logger,
		Queues:       queues,
		OnConnection: func(up bool) { m.publisherStatus.Set(b2f(up)) },
	})
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	consumer, err := broker.NewConsumer(broker.ConsumerConfig{
		URL:          cfg.RabbitMQURLs[0],
		Queue:        cfg.RabbitMQQueue,
		Prefetch:     cfg.RabbitMQPrefetch,
		Logger:       logger,
		OnConnection: func(up bool) { m.consumerStatus.Set(b2f(up)) },
		// The batch in flight must finish inside the shutdown budget.
		ShutdownGrace: cfg.ShutdownTimeout / 2,
	})
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	h.consumer, h.publisher = consumer, publisher
	redisWatch := newRedisWatch(rdb, state.NewMarker(rdb, cfg.RedisKeyPrefix), cfg.Redis, h, m, logger.With("component", "redis"))

	handler := &pipeline{
		engine:          engine,
		publisher:       publisher,
		sourceQueue:     cfg.RabbitMQQueue,
		alertQueue:      cfg.RabbitMQAlertQueue,
		deadLetterQueue: cfg.RabbitMQDeadLetterQueue,
		maxBodyBytes:    event.MaxBodyBytes,
		metrics:         m,
		logger:          logger.With("component", "pipeline"),
		now:             time.Now,
		onStoreFailure:  redisWatch.failed,
	}
	handler.shadowQueue = cfg.RabbitMQShadowQueue

	metricsHandler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	appSrv := httpapi.NewServer(appLn.Addr().String(), httpapi.NewAppHandler(h, ruleLister{engine}, metricsHandler))
	promSrv := httpapi.NewServer(promLn.Addr().String(), httpapi.NewMetricsHandler(metricsHandler))

	// Background parts stop when their context ends; the publisher gets
	// its own, cancelled only after the consumer has settled its last
	// batch, which may still need to publish.
	var wg sync.WaitGroup
	bgCtx, stopBackground := context.WithCancel(context.Background())
	pubCtx, stopPublisher := context.WithCancel(context.Background())
	defer stopBackground()
	defer stopPublisher()
	serveErr := make(chan error, 2)
	for _, s := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{appSrv, appLn}, {promSrv, promLn}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("http server %s: %w", s.ln.Addr(), err)
			}
		}()
	}
	wg.Add(3)
	go func() { defer wg.Done(); redisWatch.run(bgCtx) }()
	go func() { defer wg.Done(); reloader.run(bgCtx) }()
	go func() { defer wg.Done(); _ = publisher.Run(pubCtx) }()
	logger.Info("listening", "app_addr", appLn.Addr().String(), "metrics_addr", promLn.Addr().String(),
		"queue", cfg.RabbitMQQueue, "alert_queue", cfg.RabbitMQAlertQueue, "dead_letter_queue", cfg.RabbitMQDeadLetterQueue,
		"rules", set.Source, "rules_enabled", set.Enabled())

	started = true
	consumeCtx, stopConsuming := context.WithCancel(ctx)
	defer stopConsuming()
	consumerDone := make(chan error, 1)
	go func() { consumerDone <- consumer.Run(consumeCtx, handler) }()

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down", "cause", context.Cause(ctx))
	case err := <-serveErr:
		runErr = err
	case err := <-consumerDone:
		consumerDone <- err
		runErr = fmt.Errorf("consumer stopped: %w", err)
	}
	deadline := time.Now().Add(cfg.ShutdownTimeout)
	stopConsuming()
	select {
	case err := <-consumerDone:
		if err != nil && runErr == nil {
			runErr = fmt.Errorf("consumer: %w", err)
		}
	case <-time.After(time.Until(deadline)):
		logger.Warn("consumer did not stop in time; unacknowledged messages return to the queue")
	}
	stopPublisher()
	stopBackground()
	shutdownCtx, cancel := context.WithDeadline(context.Background(), deadline.Add(time.Second))
	defer cancel()
	_ = appSrv.Shutdown(shutdownCtx)
	_ = promSrv.Shutdown(shutdownCtx)
	waitTimeout(&wg, time.Until(deadline.Add(time.Second)))
	logger.Info("stopped")
	return runErr
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
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
	}
	publisher interface{ Connected() bool }
	redis     atomic.Bool
}

// Status implements httpapi.Checker.
func (h *health) Status() httpapi.Status {
	return httpapi.Status{
		RabbitMQConnected: h.consumer.Connected() && h.publisher.Connected(),
		RedisConnected:    h.redis.Load(),
		ConsumerAlive:     h.consumer.Alive(),
	}
}
