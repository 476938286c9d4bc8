// Package broker owns the service's RabbitMQ connections: a consumer that
// reads audit events in batches and settles them once they are handled, and a
// confirming publisher for alerts. Both keep their own connection, reconnect
// by hand with capped, jittered backoff, and report their state through
// callbacks rather than metrics or globals.
//
// The library's automatic recovery is deliberately not used: delivery tags
// restart at 1 on a recovered channel, so an ack meant for a message of the
// old channel would settle a different message of the new one. Instead every
// delivery remembers the channel generation that delivered it and is only
// ever settled on that channel.
package broker

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Errors Publish wraps, so callers can tell why a set of messages was not
// delivered. All of them are transient from the caller's point of view: the
// whole set may be published again.
var (
	ErrNotConnected = errors.New("broker: not connected")
	ErrBlocked      = errors.New("broker: connection blocked by the broker")
	ErrNacked       = errors.New("broker: message nacked by the broker")
	ErrUnroutable   = errors.New("broker: message unroutable")
)

const (
	// connectTimeout bounds the TCP dial and the AMQP handshake.
	connectTimeout = 10 * time.Second
	// opTimeout bounds each synchronous AMQP operation (declare, qos,
	// consume, cancel, confirm.select) and each batch of acks.
	opTimeout = 10 * time.Second
	// closeTimeout bounds a clean channel and connection close.
	closeTimeout = 5 * time.Second
)

// Backoff is a capped exponential backoff with jitter: the n-th wait is
// Min·2ⁿ, at most Max, multiplied by a random factor in [1-Jitter, 1+Jitter].
// Zero fields take the defaults (100ms, 5s, 0.2).
type Backoff struct {
	Min    time.Duration
	Max    time.Duration
	Jitter float64
}

func (b Backoff) withDefaults() Backoff {
	if b.Min == 0 {
		b.Min = 100 * time.Millisecond
	}
	if b.Max == 0 {
		b.Max = 5 * time.Second
	}
	if b.Jitter == 0 {
		b.Jitter = 0.2
	}
	return b
}

// validate checks a backoff whose defaults are filled in.
func (b Backoff) validate() error {
	var errs []error
	if b.Min < 0 || b.Max < 0 {
		errs = append(errs, errors.New("backoff durations must not be negative"))
	}
	if b.Max < b.Min {
		errs = append(errs, fmt.Errorf("backoff max %s is below min %s", b.Max, b.Min))
	}
	if b.Jitter < 0 || b.Jitter >= 1 {
		errs = append(errs, fmt.Errorf("backoff jitter %v must be in [0, 1)", b.Jitter))
	}
	return errors.Join(errs...)
}

// delay returns the wait before retry number attempt (counting from 0).
func (b Backoff) delay(attempt int) time.Duration {
	d := b.Min
	for i := 0; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return time.Duration(float64(d) * (1 + b.Jitter*(2*rand.Float64()-1)))
}

// sleep waits for d, returning false early if ctx is done or stop is closed.
func sleep(ctx context.Context, d time.Duration, stop <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}

// checkURL validates an AMQP URL and returns it with the password masked,
// for logs. Its errors never contain the password.
func checkURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the whole URL, password included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("broker URL is not valid: %v", err)
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return "", fmt.Errorf("broker URL scheme %q must be amqp or amqps", u.Scheme)
	}
	if u.Host == "" {
		return "", errors.New("broker URL has no host")
	}
	if _, err := amqp.ParseURI(raw); err != nil {
		return "", fmt.Errorf("broker URL %s is not valid: %v", u.Redacted(), stripURL(err, raw))
	}
	return u.Redacted(), nil
}

// stripURL hides raw in an error message that might quote it.
func stripURL(err error, raw string) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	if raw == "" {
		return err.Error()
	}
	return strings.ReplaceAll(err.Error(), raw, "<url>")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

// link is one AMQP connection with the socket under it, kept so that an
// operation the library cannot bound (a synchronous method waiting for its
// reply, a write stuck behind TCP flow control) can be aborted by closing the
// socket, exactly as a network failure would.
type link struct {
	conn *amqp.Connection
	raw  net.Conn
}

// dial opens a connection named name, bounded by connectTimeout and ctx.
// Heartbeats stay at the library's default of 10s.
func dial(ctx context.Context, rawURL, name string) (*link, error) {
	var raw net.Conn
	var stopWatch func() bool
	props := amqp.NewConnectionProperties()
	props["connection_name"] = name
	cfg := amqp.Config{
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: connectTimeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The library clears this deadline once the handshake is done.
			if err := c.SetDeadline(time.Now().Add(connectTimeout)); err != nil {
				c.Close()
				return nil, err
			}
			raw = c
			stopWatch = context.AfterFunc(ctx, func() { c.Close() })
			return c, nil
		},
	}
	conn, err := amqp.DialConfig(rawURL, cfg)
	if stopWatch != nil {
		stopWatch()
	}
	if err != nil {
		if raw != nil {
			raw.Close()
		}
		return nil, errors.New(stripURL(err, rawURL))
	}
	if ctx.Err() != nil {
		raw.Close()
		return nil, ctx.Err()
	}
	return &link{conn: conn, raw: raw}, nil
}

// bounded runs op, closing the socket if op has not returned within d or
// when ctx is done, so that op fails instead of blocking forever.
func (l *link) bounded(ctx context.Context, d time.Duration, op func() error) error {
	var fired atomic.Bool
	t := time.AfterFunc(d, func() {
		fired.Store(true)
		l.raw.Close()
	})
	stop := context.AfterFunc(ctx, func() { l.raw.Close() })
	err := op()
	t.Stop()
	stop()
	if err != nil && fired.Load() {
		return fmt.Errorf("%w (aborted after %s)", err, d)
	}
	return err
}

// close closes ch, if any, and the connection, each within closeTimeout,
// then the socket in case either did not finish.
func (l *link) close(ch *amqp.Channel) {
	if ch != nil && !ch.IsClosed() {
		_ = l.bounded(context.Background(), closeTimeout, ch.Close)
	}
	if !l.conn.IsClosed() {
		_ = l.conn.CloseDeadline(time.Now().Add(closeTimeout))
	}
	l.raw.Close()
}

// closeReason turns a close notification into an error for logs.
func closeReason(what string, e *amqp.Error, ok bool) error {
	if !ok || e == nil {
		return fmt.Errorf("%s closed", what)
	}
	return fmt.Errorf("%s closed: %w", what, e)
}

// linkState tracks whether a client is connected, logs each change once and
// reports it through the OnConnection callback. Callbacks are serialised and
// run without the state lock, so they may ask for the state.
type linkState struct {
	cbMu      sync.Mutex // serialises set, so callbacks arrive in order
	mu        sync.Mutex // guards connected
	connected bool
	on        func(bool)
	log       *slog.Logger
	broker    string // redacted URL
}

// set records a state change; reason explains a disconnection (nil when it
// was asked for).
func (s *linkState) set(connected bool, reason error) {
	s.cbMu.Lock()
	defer s.cbMu.Unlock()
	s.mu.Lock()
	changed := s.connected != connected
	s.connected = connected
	s.mu.Unlock()
	if !changed {
		return
	}
	switch {
	case connected:
		s.log.Info("connected", "broker", s.broker)
	case reason != nil:
		s.log.Warn("disconnected", "reason", reason.Error())
	default:
		s.log.Info("disconnected", "reason", "shutdown")
	}
	if s.on != nil {
		s.on(connected)
	}
}

func (s *linkState) get() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected
}

func discardLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
