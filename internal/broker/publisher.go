package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// URL is the amqp:// or amqps:// URL of the broker; only its redacted
	// form is logged.
	URL string
	// Logger receives state changes (default: discard).
	Logger *slog.Logger
	// OnConnection, if set, is called on every change between ready
	// (connection and confirming channel open) and not ready. Calls are
	// serialised.
	OnConnection func(connected bool)
	// Queues are declared durable with no arguments each time a channel is
	// opened, so that publishing to them is routable.
	Queues []string
	// ConfirmTimeout bounds one Publish call: sending and waiting for every
	// confirm (default 10s).
	ConfirmTimeout time.Duration
	// Backoff paces reconnection attempts.
	Backoff Backoff
}

// Message is one message to publish on the default exchange.
type Message struct {
	// Queue is the routing key: the queue the message is for.
	Queue string
	Body  []byte
	// MessageID identifies the message; it is required, and it is how a
	// message returned as unroutable is recognised.
	MessageID   string
	ContentType string
	Headers     map[string]any
	Timestamp   time.Time
}

// Publisher publishes persistent messages with publisher confirms over its
// own connection, which Run keeps open.
type Publisher struct {
	cfg     PublisherConfig
	log     *slog.Logger
	state   linkState
	running atomic.Bool

	// mu serialises Publish calls: each one owns the channel's confirms and
	// returns until it is done.
	mu  sync.Mutex
	cur atomic.Pointer[pubChannel] // nil while not ready
}

// NewPublisher validates cfg, filling in defaults, and returns a Publisher
// that has not connected yet.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	var errs []error
	redacted, err := checkURL(cfg.URL)
	if err != nil {
		errs = append(errs, err)
	}
	for i, q := range cfg.Queues {
		if q == "" {
			errs = append(errs, fmt.Errorf("queue %d has an empty name", i))
		}
	}
	if cfg.ConfirmTimeout < 0 {
		errs = append(errs, errors.New("confirm timeout must not be negative"))
	}
	if cfg.ConfirmTimeout == 0 {
		cfg.ConfirmTimeout = 10 * time.Second
	}
	cfg.Backoff = cfg.Backoff.withDefaults()
	if err := cfg.Backoff.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("publisher config: %w", err)
	}
	cfg.Queues = append([]string(nil), cfg.Queues...)
	log := discardLogger(cfg.Logger).With("component", "broker.publisher")
	return &Publisher{
		cfg:   cfg,
		log:   log,
		state: linkState{on: cfg.OnConnection, log: log, broker: redacted},
	}, nil
}

// Connected reports whether Publish can currently be attempted.
func (p *Publisher) Connected() bool { return p.cur.Load() != nil }

// pubConn is one publisher connection.
type pubConn struct {
	*link
	lost      chan struct{} // closed when the connection closes
	reason    error         // why; written before lost is closed
	blocked   atomic.Bool
	watchDone chan struct{}
}

// pubChannel is one confirming channel of a pubConn.
type pubChannel struct {
	conn    *pubConn
	ch      *amqp.Channel
	closes  chan *amqp.Error
	returns *returnTracker
}

// Run keeps a connection and a confirming channel open until ctx is
// cancelled, reopening the channel after a channel error and the connection
// after it is lost, with backoff. On cancellation it waits for a Publish in
// progress, closes the channel and connection, and returns nil.
func (p *Publisher) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("publisher: already running")
	}
	defer p.running.Store(false)

	failures := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		pc, err := p.dial(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d := p.cfg.Backoff.delay(failures)
			failures++
			p.log.Warn("connect failed", "error", err.Error(), "failures", failures, "retry_in", d)
			if !sleep(ctx, d, nil) {
				return nil
			}
			continue
		}
		connectedAt := time.Now()
		reason := p.serve(ctx, pc)
		if ctx.Err() != nil {
			p.state.set(false, nil)
		} else {
			p.state.set(false, reason)
		}
		pc.close(nil)
		<-pc.watchDone
		if ctx.Err() != nil {
			return nil
		}
		// A connection lost soon after it opened counts as a failed attempt.
		if time.Since(connectedAt) > p.cfg.Backoff.Max {
			failures = 0
		}
		d := p.cfg.Backoff.delay(failures)
		failures++
		p.log.Info("reconnecting", "in", d)
		if !sleep(ctx, d, nil) {
			return nil
		}
	}
}

func (p *Publisher) dial(ctx context.Context) (*pubConn, error) {
	l, err := dial(ctx, p.cfg.URL, "audit-log-analysis publisher")
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	pc := &pubConn{link: l, lost: make(chan struct{}), watchDone: make(chan struct{})}
	closes := l.conn.NotifyClose(make(chan *amqp.Error, 1))
	blocks := l.conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	go pc.watch(closes, blocks, p.log)
	return pc, nil
}

// watch follows the connection's blocked state until the connection closes.
func (pc *pubConn) watch(closes <-chan *amqp.Error, blocks <-chan amqp.Blocking, log *slog.Logger) {
	defer close(pc.watchDone)
	for {
		select {
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			if pc.blocked.Swap(b.Active) != b.Active {
				if b.Active {
					log.Warn("connection blocked by the broker", "reason", b.Reason)
				} else {
					log.Info("connection unblocked")
				}
			}
		case e, ok := <-closes:
			pc.reason = closeReason("connection", e, ok)
			close(pc.lost)
			return
		}
	}
}

// serve opens confirming channels on pc, one after another, until pc is lost
// (returning why) or ctx is cancelled (returning nil).
func (p *Publisher) serve(ctx context.Context, pc *pubConn) error {
	failures := 0
	for {
		ch, err := p.openChannel(ctx, pc)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if pc.conn.IsClosed() {
				<-pc.lost
				return pc.reason
			}
			d := p.cfg.Backoff.delay(failures)
			failures++
			p.log.Warn("open channel failed", "error", err.Error(), "failures", failures, "retry_in", d)
			if !sleep(ctx, d, pc.lost) {
				if ctx.Err() != nil {
					return nil
				}
				return pc.reason
			}
			continue
		}
		p.cur.Store(ch)
		p.state.set(true, nil)
		openedAt := time.Now()

		var reason error
		select {
		case <-ctx.Done():
		case <-pc.lost:
			reason = pc.reason
		case e, ok := <-ch.closes:
			reason = closeReason("channel", e, ok)
		}
		p.cur.Store(nil)
		if ctx.Err() != nil {
			// A Publish in progress (bounded by the confirm timeout)
			// finishes before the channel closes under it.
			p.mu.Lock()
			_ = pc.bounded(context.Background(), closeTimeout, func() error {
				if ch.ch.IsClosed() {
					return nil
				}
				return ch.ch.Close()
			})
			p.mu.Unlock()
			<-ch.returns.done
			return nil
		}
		<-ch.returns.done // the channel is closed, so its returns are too
		if pc.conn.IsClosed() {
			<-pc.lost
			return pc.reason
		}
		p.state.set(false, reason)
		if time.Since(openedAt) > p.cfg.Backoff.Max {
			failures = 0
		}
		d := p.cfg.Backoff.delay(failures)
		failures++
		p.log.Info("reopening channel", "in", d)
		if !sleep(ctx, d, pc.lost) {
			if ctx.Err() != nil {
				return nil
			}
			return pc.reason
		}
	}
}

// openChannel opens a channel in confirm mode and declares the queues.
func (p *Publisher) openChannel(ctx context.Context, pc *pubConn) (*pubChannel, error) {
	var out *pubChannel
	err := pc.bounded(ctx, opTimeout, func() error {
		ch, err := pc.conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		closes := ch.NotifyClose(make(chan *amqp.Error, 1))
		returns := ch.NotifyReturn(make(chan amqp.Return, 64))
		rt := newReturnTracker(returns)
		go rt.run()
		fail := func(err error) error {
			if !ch.IsClosed() {
				_ = ch.Close()
			}
			<-rt.done
			return err
		}
		if err := ch.Confirm(false); err != nil {
			return fail(fmt.Errorf("enable confirms: %w", err))
		}
		for _, q := range p.cfg.Queues {
			if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
				return fail(fmt.Errorf("declare queue %q: %w", q, err))
			}
		}
		out = &pubChannel{conn: pc, ch: ch, closes: closes, returns: rt}
		return nil
	})
	return out, err
}

// Publish sends msgs as persistent, mandatory messages on the default
// exchange and waits until the broker has confirmed every one of them. It
// returns an error wrapping ErrNotConnected, ErrBlocked, ErrNacked,
// ErrUnroutable or a context error if any message may not have reached its
// queue; the caller then publishes the whole set again (duplicates carry
// the same MessageID). The wait is bounded by ConfirmTimeout and ctx; while
// the broker keeps the connection blocked (a memory or disk alarm) Publish
// fails at once with ErrBlocked. Concurrent calls are serialised.
func (p *Publisher) Publish(ctx context.Context, msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	for i, m := range msgs {
		if m.Queue == "" || m.MessageID == "" {
			return fmt.Errorf("publish: message %d has no queue or no message id", i)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pc := p.cur.Load()
	if pc == nil || pc.ch.IsClosed() {
		return fmt.Errorf("publish: %w", ErrNotConnected)
	}
	if pc.conn.blocked.Load() {
		return fmt.Errorf("publish: %w", ErrBlocked)
	}

	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConfirmTimeout)
	defer cancel()
	// A write stuck behind TCP flow control (a blocked connection) fails
	// at the deadline, which also closes the connection.
	deadline, _ := ctx.Deadline()
	_ = pc.conn.raw.SetWriteDeadline(deadline)
	defer func() { _ = pc.conn.raw.SetWriteDeadline(time.Time{}) }()

	// Forget returns of earlier calls.
	if _, err := pc.returns.flush(ctx); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	confirms := make([]*amqp.DeferredConfirmation, len(msgs))
	for i, m := range msgs {
		dc, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, "", m.Queue, true, false, amqp.Publishing{
			Headers:      m.Headers,
			ContentType:  m.ContentType,
			DeliveryMode: amqp.Persistent,
			MessageId:    m.MessageID,
			Timestamp:    m.Timestamp,
			Body:         m.Body,
		})
		if err != nil {
			return fmt.Errorf("publish message %q to queue %q: %w", m.MessageID, m.Queue, err)
		}
		confirms[i] = dc
	}
	for i, dc := range confirms {
		select {
		case <-dc.Done():
			if dc.Acked() {
				continue
			}
			if pc.ch.IsClosed() {
				return fmt.Errorf("publish: channel closed before message %q was confirmed: %w", msgs[i].MessageID, ErrNotConnected)
			}
			return fmt.Errorf("publish message %q to queue %q: %w", msgs[i].MessageID, msgs[i].Queue, ErrNacked)
		case <-ctx.Done():
			return fmt.Errorf("publish: waiting for confirms (%d of %d received): %w", i, len(msgs), ctx.Err())
		}
	}
	// A return precedes its message's confirm, so once every confirm is in,
	// every return is in the tracker or its buffer.
	returned, err := pc.returns.flush(ctx)
	if err != nil {
		return fmt.Errorf("publish: waiting for returns: %w", err)
	}
	var unroutable []Message
	for _, m := range msgs {
		if _, ok := returned[m.MessageID]; ok {
			unroutable = append(unroutable, m)
		}
	}
	if len(unroutable) > 0 {
		// A configured queue that someone deleted is declared again, so
		// the caller's retry is delivered instead of returned forever.
		for _, q := range p.redeclare(pc, unroutable) {
			p.log.Warn("declared a deleted queue again", "queue", q)
		}
		r := returned[unroutable[0].MessageID]
		return fmt.Errorf("publish: %d of %d messages returned, first %q to queue %q (%d %s): %w",
			len(unroutable), len(msgs), unroutable[0].MessageID, unroutable[0].Queue, r.ReplyCode, r.ReplyText, ErrUnroutable)
	}
	return nil
}

// redeclare declares again the configured queues among the unroutable
// messages' and returns those it declared. A failure is left to the next
// Publish: it closes the channel, which is then reopened (and declares every
// queue).
func (p *Publisher) redeclare(pc *pubChannel, unroutable []Message) []string {
	var done []string
	for _, q := range p.cfg.Queues {
		if slices.ContainsFunc(unroutable, func(m Message) bool { return m.Queue == q }) {
			err := pc.conn.bounded(context.Background(), opTimeout, func() error {
				_, err := pc.ch.QueueDeclare(q, true, false, false, false, nil)
				return err
			})
			if err != nil {
				return done
			}
			done = append(done, q)
		}
	}
	return done
}

// returnTracker drains a channel's basic.return notifications as they come,
// so the library never waits on them, and records them by message id.
type returnTracker struct {
	in   <-chan amqp.Return
	sync chan chan struct{}
	done chan struct{} // closed once in is closed and drained

	mu  sync.Mutex
	got map[string]amqp.Return
}

func newReturnTracker(in <-chan amqp.Return) *returnTracker {
	return &returnTracker{
		in:   in,
		sync: make(chan chan struct{}),
		done: make(chan struct{}),
		got:  make(map[string]amqp.Return),
	}
}

func (t *returnTracker) run() {
	defer close(t.done)
	for {
		select {
		case r, ok := <-t.in:
			if !ok {
				return
			}
			t.record(r)
		case ack := <-t.sync:
			for drained := false; !drained; {
				select {
				case r, ok := <-t.in:
					if !ok {
						close(ack)
						return
					}
					t.record(r)
				default:
					drained = true
				}
			}
			close(ack)
		}
	}
}

func (t *returnTracker) record(r amqp.Return) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.got[r.MessageId] = r
}

// take returns and forgets the returns recorded so far.
func (t *returnTracker) take() map[string]amqp.Return {
	t.mu.Lock()
	defer t.mu.Unlock()
	got := t.got
	t.got = make(map[string]amqp.Return)
	return got
}

// flush waits until every return already delivered by the library is
// recorded, then takes them.
func (t *returnTracker) flush(ctx context.Context) (map[string]amqp.Return, error) {
	ack := make(chan struct{})
	select {
	case t.sync <- ack:
		select {
		case <-ack:
		case <-t.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	case <-t.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return t.take(), nil
}
