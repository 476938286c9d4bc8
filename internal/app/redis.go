package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/state"
)

// Redis timeouts. A round trip that takes longer than redisIOTimeout fails
// and the batch is retried; the watcher's ping waits longer than one dial,
// so that a failed dial is reported with its cause (connection refused, no
// such host) and not as the ping's own deadline.
const (
	redisDialTimeout = 2 * time.Second
	redisIOTimeout   = 2 * time.Second
	redisPingTimeout = redisDialTimeout + time.Second
)

// newRedisClient returns the client for the configured mode: one server, a
// Redis Cluster from its seed nodes, or the master that Sentinels name.
// All three are go-redis's own clients, which follow MOVED and ASK
// redirects (Cluster) and ask the Sentinels again after a failover.
//
// A command that timed out may still have run, and go-redis retries
// (MaxRetries for one server or a Sentinel master, MaxRedirects in a
// Cluster) may run it again. That is safe only because every write the
// service makes is idempotent: the state scripts record an event by its id,
// so running one twice changes nothing the second time.
func newRedisClient(c config.Redis) (redis.UniversalClient, error) {
	quietRedisLibrary()
	var tlsConfig *tls.Config
	if c.TLS {
		// The server name is set per dial (see dialer): the name of
		// whichever node is dialled, so every Cluster node and every
		// Sentinel-named master is verified against its own address.
		cfg, err := c.TLSFiles.ClientConfig("")
		if err != nil {
			return nil, fmt.Errorf("redis TLS: %w", err)
		}
		tlsConfig = cfg
	}
	dial := dialer(tlsConfig)
	// go-redis retries a failed dial within one command; one attempt per
	// command is enough, since commands are retried themselves and the
	// watcher pings every second.
	const dialAttempts = 1
	switch c.Mode() {
	case "cluster":
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 c.ClusterAddrs,
			Username:              c.Username,
			Password:              c.Password,
			Dialer:                dial,
			DialTimeout:           redisDialTimeout,
			DialerRetries:         dialAttempts,
			ReadTimeout:           redisIOTimeout,
			WriteTimeout:          redisIOTimeout,
			ContextTimeoutEnabled: true,
			// Redirects, TRYAGAIN while a slot migrates and CLUSTERDOWN
			// while a master fails over are retried this many times,
			// with the backoff below in between; then the batch fails
			// and the pipeline retries it with its own backoff.
			MaxRedirects:             3,
			MinRetryBackoff:          50 * time.Millisecond,
			MaxRetryBackoff:          500 * time.Millisecond,
			PoolSize:                 8,
			MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		}), nil
	case "sentinel":
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:            c.SentinelMaster,
			SentinelAddrs:         c.SentinelAddrs,
			SentinelUsername:      c.SentinelUsername,
			SentinelPassword:      c.SentinelPassword,
			Username:              c.Username,
			Password:              c.Password,
			DB:                    c.DB,
			Dialer:                dial,
			DialTimeout:           redisDialTimeout,
			DialerRetries:         dialAttempts,
			ReadTimeout:           redisIOTimeout,
			WriteTimeout:          redisIOTimeout,
			ContextTimeoutEnabled: true,
			MaxRetries:            2,
			MinRetryBackoff:       50 * time.Millisecond,
			MaxRetryBackoff:       500 * time.Millisecond,
			PoolSize:              8,
		}), nil
	}
	return redis.NewClient(&redis.Options{
		Addr:                     c.Addr,
		Username:                 c.Username,
		Password:                 c.Password,
		DB:                       c.DB,
		Dialer:                   dial,
		DialTimeout:              redisDialTimeout,
		DialerRetries:            dialAttempts,
		ReadTimeout:              redisIOTimeout,
		WriteTimeout:             redisIOTimeout,
		ContextTimeoutEnabled:    true,
		MaxRetries:               2,
		MinRetryBackoff:          50 * time.Millisecond,
		MaxRetryBackoff:          500 * time.Millisecond,
		PoolSize:                 8,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}), nil
}

// dialer connects to addr, with TLS when tlsConfig is set, checking the
// server's certificate against the host of addr. It honours the dial's
// context (go-redis's own TLS dialer does not).
func dialer(tlsConfig *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := &net.Dialer{Timeout: redisDialTimeout, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if tlsConfig == nil {
			return nd.DialContext(ctx, network, addr)
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("redis address %q: %w", addr, err)
		}
		cfg := tlsConfig.Clone()
		cfg.ServerName = host
		td := &tls.Dialer{NetDialer: nd, Config: cfg}
		return td.DialContext(ctx, network, addr)
	}
}

// quietRedisLibrary stops go-redis from writing its own log lines.
//
// go-redis v9 has no logger per client: every message of the library goes
// through one package variable, which redis.SetLogger replaces. Setting it
// to a logger of this Serve would send the messages of every other client
// in the process (tests run several services at once) into this one's log,
// so it is set instead to the same value by every caller: a logger that
// drops everything. Nothing the service needs is lost with it: the watcher
// reports each change of the connection with the cause of the failure, and
// store errors reach the pipeline with their own.
func quietRedisLibrary() { redis.SetLogger(discardRedisLog{}) }

type discardRedisLog struct{}

func (discardRedisLog) Printf(context.Context, string, ...any) {}

// describeRedis names where Redis is, for logs.
func describeRedis(c config.Redis) []any {
	switch c.Mode() {
	case "cluster":
		return []any{"mode", "cluster", "seeds", c.ClusterAddrs}
	case "sentinel":
		return []any{"mode", "sentinel", "sentinels", c.SentinelAddrs, "master", c.SentinelMaster}
	}
	return []any{"mode", "single", "addr", c.Addr}
}

// pingRedis pings the one server, or every master of a Cluster: one
// unreachable master is enough to hold every batch that has a group on it,
// and a Cluster client's own PING goes to any single node.
func pingRedis(client redis.UniversalClient) func(ctx context.Context) error {
	cc, ok := client.(*redis.ClusterClient)
	if !ok {
		return func(ctx context.Context) error { return client.Ping(ctx).Err() }
	}
	return func(ctx context.Context) error {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			if err := c.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("master %s: %w", c.Options().Addr, err)
			}
			return nil
		})
	}
}

// stateMarker is what the watcher needs of state.Marker.
type stateMarker interface {
	Check(ctx context.Context) ([]state.Loss, error)
}

// redisWatch pings Redis every second, so health turns within about two
// seconds of Redis going away, even when no event needs it, and after
// every answered ping checks that Redis still holds the service's state.
type redisWatch struct {
	ping    func(ctx context.Context) error
	marker  stateMarker
	health  *health
	metrics *metrics
	logger  *slog.Logger
	where   []any // describeRedis
	now     func() time.Time

	mu           sync.Mutex
	connected    bool
	everUp       bool
	warned       bool      // a failed first connect was logged
	since        time.Time // when the current state began
	markerFailed bool
}

func newRedisWatch(client redis.UniversalClient, marker stateMarker, c config.Redis, h *health, m *metrics, logger *slog.Logger) *redisWatch {
	return &redisWatch{
		ping: pingRedis(client), marker: marker, health: h, metrics: m,
		logger: logger, where: describeRedis(c), now: time.Now,
	}
}

func (w *redisWatch) run(ctx context.Context) {
	w.mu.Lock()
	w.since = w.now()
	w.mu.Unlock()
	w.logger.Info("redis connecting", w.where...)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		w.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check pings, then reads the state markers.
func (w *redisWatch) check(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, redisPingTimeout)
	defer cancel()
	err := w.ping(pctx)
	if ctx.Err() != nil {
		return // stopping
	}
	w.set(err == nil, err)
	if err != nil {
		return
	}
	lost, err := w.marker.Check(pctx)
	for _, l := range lost {
		w.reset(l)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err != nil && !w.markerFailed:
		w.markerFailed = true
		w.logger.Warn("cannot check whether redis kept the service's state; a loss would go unnoticed until this works again",
			"error", err)
	case err == nil && w.markerFailed:
		w.markerFailed = false
		w.logger.Info("redis state check works again")
	}
}

// reset reports one lost marker.
func (w *redisWatch) reset(l state.Loss) {
	w.metrics.stateResets.Inc()
	attrs := []any{
		"marker", l.Key,
		"lost", "threshold windows in progress, suppression of groups that alerted, and what other stateful rules remembered",
		"not_lost", "events and alerts: an event is acknowledged only after its state is stored and its alerts are confirmed",
		"effect", "windows restart from the next event; a burst that was under way alerts only if enough of it arrives from now on",
		"noticed_by", "this replica",
	}
	if l.ByOther {
		attrs[len(attrs)-1] = "another replica"
	}
	if !l.Since.IsZero() {
		attrs = append(attrs, "state_kept_since", l.Since.UTC().Format(time.RFC3339), "state_kept_for", w.now().Sub(l.Since).Round(time.Second).String())
	}
	w.logger.Error("redis lost the service's state: restarted without persistence, failed over to a replica without the data, flushed, or evicting keys", attrs...)
}

// failed takes a failure the pipeline saw; recovery waits for the next
// ping.
func (w *redisWatch) failed() {
	w.set(false, errors.New("state store request failed"))
}

func (w *redisWatch) set(up bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.health.redis.Store(up)
	w.metrics.redisStatus.Set(b2f(up))
	now := w.now()
	switch {
	case up && !w.connected:
		attrs := w.where
		if w.everUp {
			attrs = append(slices.Clip(attrs), "down_for", now.Sub(w.since).Round(time.Millisecond).String())
		}
		w.logger.Info("redis connected", attrs...)
		w.connected, w.everUp, w.since = true, true, now
	case !up && w.connected:
		w.logger.Warn("redis disconnected; retrying every second", append(slices.Clip(w.where), "error", err)...)
		w.connected, w.since = false, now
	case !up && !w.everUp && !w.warned:
		w.logger.Warn("redis connect failed; retrying every second", append(slices.Clip(w.where), "error", err)...)
		w.warned = true
	}
}
