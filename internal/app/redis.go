package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/audit-platform/audit-log-analysis/internal/config"
)

func redisOptions(c config.Redis) *redis.Options {
	o := &redis.Options{
		Addr:                  c.Addr,
		Username:              c.Username,
		Password:              c.Password,
		DB:                    c.DB,
		DialTimeout:           2 * time.Second,
		ReadTimeout:           2 * time.Second,
		WriteTimeout:          2 * time.Second,
		ContextTimeoutEnabled: true,
		// Every write the service makes is idempotent (scripts keyed by
		// event id), so a retried command cannot double count.
		MaxRetries:      2,
		MinRetryBackoff: 50 * time.Millisecond,
		MaxRetryBackoff: 500 * time.Millisecond,
		PoolSize:        8,
	}
	if c.TLS {
		host, _, _ := net.SplitHostPort(c.Addr)
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	}
	return o
}

// redisWatch pings Redis every second, so health turns within about two
// seconds of Redis going away, even when no event needs it.
type redisWatch struct {
	client  *redis.Client
	health  *health
	metrics *metrics
	logger  *slog.Logger
	mu      sync.Mutex
	known   bool
}

func (w *redisWatch) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := w.client.Ping(pctx).Err()
		cancel()
		if ctx.Err() != nil {
			return
		}
		w.set(err == nil, err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// failed takes a failure the pipeline saw; recovery waits for the next
// ping.
func (w *redisWatch) failed() {
	w.set(false, errors.New("state store request failed"))
}

func (w *redisWatch) set(up bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.health.redis.Swap(up)
	w.metrics.redisStatus.Set(b2f(up))
	if w.known && prev == up {
		return
	}
	w.known = true
	if up {
		w.logger.Info("redis connected", "addr", w.client.Options().Addr)
	} else {
		w.logger.Warn("redis disconnected", "addr", w.client.Options().Addr, "error", err)
	}
}

// redisLogger adapts slog to go-redis's logger.
type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.DebugContext(ctx, fmt.Sprintf(format, v...))
}
