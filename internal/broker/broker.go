// Package broker owns the service's RabbitMQ connections: a consumer that
// reads audit events in batches and settles them once they are handled, and a
// confirming publisher for alerts. Both keep their own connection to one node
// of the cluster, reconnect by hand through one shared loop with capped,
// jittered backoff, use the queues as the platform declared them, and report
// their state through callbacks rather than metrics or globals.
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
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
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
	// connectTimeout bounds the TCP dial, the TLS handshake and the AMQP
	// handshake with one node.
	connectTimeout = 10 * time.Second
	// opTimeout bounds each synchronous AMQP operation (declare, qos,
	// consume, cancel, confirm.select) and each batch of acks.
	opTimeout = 10 * time.Second
	// closeTimeout bounds a clean channel and connection close; past it
	// the socket is closed, which the broker treats the same way.
	closeTimeout = 2 * time.Second
)

// TLSConfigFunc returns the TLS client configuration for a connection to
// serverName, the host of the amqps:// URL being dialled. It is called on
// every dial, so certificates replaced on disk are used at the next
// reconnection.
type TLSConfigFunc func(serverName string) (*tls.Config, error)

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

// attempt is how one try of a retried session went.
type attempt struct {
	// up is how long the session ran; 0 when it could not start.
	up time.Duration
	// err says why it ended or could not start; nil when it was asked to
	// stop.
	err error
	// stop, when set, ends the retries: Backoff.retry returns it.
	stop error
}

// retry runs try again and again until ctx is done, stop is closed or try
// sets attempt.stop, waiting the backoff's delay between tries. A session
// that ran longer than the backoff's cap starts the count again; one that
// ended sooner counts as a failure, so a broker that accepts and then drops
// every connection is not hammered. failed hears about every try that ended
// with an error, with the wait before the next one. This is the one
// reconnection loop of the package: the consumer's connections, the
// publisher's connections and the publisher's channels all go through it.
func (b Backoff) retry(ctx context.Context, stop <-chan struct{}, try func() attempt,
	failed func(a attempt, failures int, wait time.Duration)) error {
	failures := 0
	for {
		if ctx.Err() != nil || isClosed(stop) {
			return nil
		}
		a := try()
		if a.stop != nil {
			return a.stop
		}
		if ctx.Err() != nil || isClosed(stop) {
			return nil
		}
		if a.up > b.Max {
			failures = 0
		}
		d := b.delay(failures)
		failures++
		if failed != nil {
			failed(a, failures, d)
		}
		if !sleep(ctx, d, stop) {
			return nil
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
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

// node is one broker of a cluster, as one URL names it.
type node struct {
	url      string // holds the password: never logged
	redacted string
	host     string // for the TLS server-name check
	tls      bool
}

// parseNodes checks every URL and reports every problem together; its
// errors never contain a password.
func parseNodes(urls []string) ([]node, error) {
	if len(urls) == 0 {
		return nil, errors.New("no broker URL")
	}
	var errs []error
	nodes := make([]node, 0, len(urls))
	for i, raw := range urls {
		redacted, err := checkURL(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("URL %d: %w", i+1, err))
			continue
		}
		u, _ := amqp.ParseURI(raw)
		nodes = append(nodes, node{url: raw, redacted: redacted, host: u.Host, tls: u.Scheme == "amqps"})
	}
	return nodes, errors.Join(errs...)
}

func redactedAll(nodes []node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.redacted
	}
	return out
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
		return "", fmt.Errorf("broker URL %s is not valid: %v", u.Redacted(), hideURL(err, raw))
	}
	return u.Redacted(), nil
}

// hideURL returns err with raw, which holds a password, removed from its
// text; errors.Is and errors.As still reach the original error.
func hideURL(err error, raw string) error {
	if err == nil {
		return nil
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return &hiddenURL{msg: ue.Err.Error(), err: err}
	}
	if raw != "" && strings.Contains(err.Error(), raw) {
		return &hiddenURL{msg: strings.ReplaceAll(err.Error(), raw, "<url>"), err: err}
	}
	return err
}

// hiddenURL is an error whose text had a URL taken out.
type hiddenURL struct {
	msg string
	err error
}

func (e *hiddenURL) Error() string { return e.msg }
func (e *hiddenURL) Unwrap() error { return e.err }

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
	node node
}

// dialer connects to the nodes of one cluster in turn.
type dialer struct {
	nodes []node
	name  string // connection_name, shown in the management UI
	tls   TLSConfigFunc
	log   *slog.Logger
	next  int // the node to try first
}

// dial tries each node once, starting with the one after the node whose
// connection was last lost, and returns the first connection made. When
// none answers it returns every node's error.
func (d *dialer) dial(ctx context.Context) (*link, error) {
	var errs []error
	for range d.nodes {
		i := d.next
		n := d.nodes[i]
		l, err := dialNode(ctx, n, d.name, d.tls)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %w", n.redacted, err))
		d.next = (i + 1) % len(d.nodes)
		if len(d.nodes) > 1 && len(errs) < len(d.nodes) {
			d.log.Warn("broker node failed; trying the next", "broker", n.redacted, "error", err.Error())
		}
	}
	return nil, errors.Join(errs...)
}

// lost moves past the node of l, so the next dial tries the other nodes
// first: the one that dropped the connection may be going down.
func (d *dialer) lost(l *link) {
	for i, n := range d.nodes {
		if n.url == l.node.url {
			d.next = (i + 1) % len(d.nodes)
			return
		}
	}
}

// dialNode opens a connection to n named name, bounded by connectTimeout
// and ctx. Heartbeats stay at the library's default of 10s. For amqps://
// the TLS configuration comes from tlsFor, with n's host as the name the
// server's certificate must hold.
func dialNode(ctx context.Context, n node, name string, tlsFor TLSConfigFunc) (*link, error) {
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
			// The library clears this deadline once the handshake is done;
			// it bounds the TLS handshake too.
			if err := c.SetDeadline(time.Now().Add(connectTimeout)); err != nil {
				c.Close()
				return nil, err
			}
			raw = c
			stopWatch = context.AfterFunc(ctx, func() { c.Close() })
			return c, nil
		},
	}
	var verified atomic.Bool
	if n.tls && tlsFor != nil {
		tc, err := tlsFor(n.host)
		if err != nil {
			return nil, fmt.Errorf("TLS configuration: %w", err)
		}
		cfg.TLSClientConfig = noteVerified(tc, &verified)
	}
	conn, err := amqp.DialConfig(n.url, cfg)
	if stopWatch != nil {
		stopWatch()
	}
	if err != nil {
		if raw != nil {
			raw.Close()
		}
		if verified.Load() {
			err = &closedAfterTLS{err}
		}
		return nil, hideURL(err, n.url)
	}
	if ctx.Err() != nil {
		raw.Close()
		return nil, ctx.Err()
	}
	return &link{conn: conn, raw: raw, node: n}, nil
}

// noteVerified returns a copy of tc that sets verified once the server's
// certificate passed verification. With TLS 1.3 the client's handshake is
// over before the broker has checked the client's certificate, and a broker
// that refuses it just closes the connection: knowing that the handshake
// went through tells that case from a broker that is merely down.
func noteVerified(tc *tls.Config, verified *atomic.Bool) *tls.Config {
	tc = tc.Clone()
	check := tc.VerifyConnection
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if check != nil {
			if err := check(cs); err != nil {
				return err
			}
		}
		verified.Store(true)
		return nil
	}
	return tc
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

// channel opens a channel, bounded by opTimeout.
func (l *link) channel(ctx context.Context) (*amqp.Channel, error) {
	var ch *amqp.Channel
	err := l.bounded(ctx, opTimeout, func() error {
		var err error
		ch, err = l.conn.Channel()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	return ch, nil
}

// close closes ch, if any, and the connection within closeTimeout, then the
// socket in case they did not finish. A connection the broker has blocked
// is not read by the broker, so a clean close would only wait for the
// timeout: its socket is closed at once.
func (l *link) close(ch *amqp.Channel, blocked bool) {
	if !blocked {
		deadline := time.Now().Add(closeTimeout)
		if ch != nil && !ch.IsClosed() {
			_ = l.bounded(context.Background(), closeTimeout, ch.Close)
		}
		if !l.conn.IsClosed() && time.Now().Before(deadline) {
			_ = l.conn.CloseDeadline(deadline)
		}
	}
	l.raw.Close()
}

// closedAfterTLS is a connection that failed after its TLS handshake
// succeeded on the client's side.
type closedAfterTLS struct{ err error }

func (e *closedAfterTLS) Error() string { return e.err.Error() }
func (e *closedAfterTLS) Unwrap() error { return e.err }

// closeReason turns a close notification into an error for logs. The
// broker's *amqp.Error stays reachable, for classifying it.
func closeReason(what string, e *amqp.Error, ok bool) error {
	if !ok || e == nil {
		return fmt.Errorf("%s closed", what)
	}
	return fmt.Errorf("%s closed: %w", what, e)
}
