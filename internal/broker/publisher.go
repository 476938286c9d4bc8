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
	// URLs are amqp:// or amqps:// URLs of the nodes of one cluster, tried
	// in turn; only their redacted form is logged.
	URLs []string
	// TLS configures amqps:// connections (default: the system roots and
	// the URL's host as the server name).
	TLS TLSConfigFunc
	// Logger receives state changes (default: discard).
	Logger *slog.Logger
	// Queues are made sure to exist each time a channel is opened, so that
	// publishing to them is routable: used as they are when they exist,
	// declared durable of type QueueType with no other argument when not.
	Queues []string
	// QueueType is QueueClassic (the default) or QueueQuorum.
	QueueType string
	// ConfirmTimeout bounds one Publish call: sending and waiting for every
	// confirm (default 10s).
	ConfirmTimeout time.Duration
	// Backoff paces reconnection attempts.
	Backoff Backoff

	// Callbacks, each optional; they must return quickly.

	// OnConnection is called on every change between ready (connection
	// and confirming channel open) and not ready. Calls are serialised.
	OnConnection func(connected bool)
	// OnError is called with a Problem's reason each time one stops a
	// connection attempt or a channel.
	OnError func(reason string)
	// OnBlocked is called when the broker blocks the connection (a memory
	// or disk alarm; reason is the broker's) and when it stops blocking it
	// or the connection is lost.
	OnBlocked func(blocked bool, reason string)
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
	dialer  dialer
	running atomic.Bool

	// mu serialises Publish calls: each one owns the channel's confirms and
	// returns until it is done.
	mu   sync.Mutex
	cur  atomic.Pointer[pubChannel] // nil while not ready
	conn atomic.Pointer[pubConn]    // the current connection, ready or not
}

// NewPublisher validates cfg, filling in defaults, and returns a Publisher
// that has not connected yet.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	var errs []error
	nodes, err := parseNodes(cfg.URLs)
	if err != nil {
		errs = append(errs, err)
	}
	for i, q := range cfg.Queues {
		if q == "" {
			errs = append(errs, fmt.Errorf("queue %d has an empty name", i))
		}
	}
	if cfg.QueueType == "" {
		cfg.QueueType = QueueClassic
	}
	if err := checkQueueType(cfg.QueueType); err != nil {
		errs = append(errs, err)
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
	cfg.URLs = slices.Clone(cfg.URLs)
	cfg.Queues = slices.Clone(cfg.Queues)
	log := discardLogger(cfg.Logger).With("component", "broker.publisher")
	return &Publisher{
		cfg:    cfg,
		log:    log,
		state:  linkState{log: log, onConn: cfg.OnConnection, onError: cfg.OnError},
		dialer: dialer{nodes: nodes, name: "audit-log-analysis publisher", tls: cfg.TLS, log: log},
	}, nil
}

// Connected reports whether Publish can currently be attempted.
func (p *Publisher) Connected() bool { return p.cur.Load() != nil }

// Problem returns the error that stopped the last connection or channel
// attempt if retrying alone will not fix it (see Problem), or nil; it is
// cleared once the publisher is ready.
func (p *Publisher) Problem() *Problem { return p.state.currentProblem() }

// Blocked reports whether the broker blocks the publisher's connection,
// and the broker's reason (a memory or disk alarm). RabbitMQ blocks a
// connection at its first publish during an alarm.
func (p *Publisher) Blocked() (reason string, blocked bool) {
	pc := p.conn.Load()
	if pc == nil {
		return "", false
	}
	return pc.block.get()
}

// pubConn is one publisher connection.
type pubConn struct {
	*link
	lost      chan struct{} // closed when the connection closes
	reason    error         // why; written before lost is closed
	block     blockState
	watchDone chan struct{}

	wmu     sync.Mutex // guards inWrite and the socket's write deadline
	inWrite bool
}

// writing marks the start (with the deadline of its writes) or the end of
// a Publish's writes.
func (pc *pubConn) writing(on bool, deadline time.Time) {
	pc.wmu.Lock()
	defer pc.wmu.Unlock()
	pc.inWrite = on
	_ = pc.raw.SetWriteDeadline(deadline)
}

// interruptWrites makes a Publish's write under way fail at once, by moving
// its deadline to the past. The connection is then closed by the library,
// since a frame may have been cut: only a Publish that has to give up
// (blocked, or out of time) does that.
func (pc *pubConn) interruptWrites() {
	pc.wmu.Lock()
	defer pc.wmu.Unlock()
	if pc.inWrite {
		_ = pc.raw.SetWriteDeadline(time.Unix(1, 0))
	}
}

// pubChannel is one confirming channel of a pubConn.
type pubChannel struct {
	conn    *pubConn
	ch      *amqp.Channel
	closes  chan *amqp.Error
	returns *returnTracker
}

// blockState follows connection.blocked and connection.unblocked.
type blockState struct {
	mu     sync.Mutex
	active bool
	reason string
	signal chan struct{} // closed while blocked; replaced once unblocked
}

// set records a change and reports whether it is one.
func (b *blockState) set(active bool, reason string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.signal == nil {
		b.signal = make(chan struct{})
	}
	if b.active == active {
		return false
	}
	b.active, b.reason = active, reason
	if active {
		close(b.signal)
	} else {
		b.signal = make(chan struct{})
	}
	return true
}

func (b *blockState) get() (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reason, b.active
}

// blocked returns a channel that is closed while the connection is blocked.
func (b *blockState) blocked() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.signal == nil {
		b.signal = make(chan struct{})
	}
	return b.signal
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

	p.state.connecting(p.dialer.nodes)
	return p.cfg.Backoff.retry(ctx, nil, func() attempt {
		pc, err := p.dial(ctx)
		if err != nil {
			return attempt{err: err}
		}
		start := time.Now()
		reason := p.serve(ctx, pc)
		p.state.down(reason)
		_, blocked := pc.block.get()
		pc.close(nil, blocked)
		<-pc.watchDone
		p.conn.CompareAndSwap(pc, nil)
		if reason != nil {
			p.dialer.lost(pc.link)
		}
		return attempt{up: time.Since(start), err: reason}
	}, p.state.retrying)
}

func (p *Publisher) dial(ctx context.Context) (*pubConn, error) {
	l, err := p.dialer.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	pc := &pubConn{link: l, lost: make(chan struct{}), watchDone: make(chan struct{})}
	closes := l.conn.NotifyClose(make(chan *amqp.Error, 1))
	blocks := l.conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	p.conn.Store(pc)
	go p.watch(pc, closes, blocks)
	return pc, nil
}

// watch follows the connection's blocked state until the connection closes.
func (p *Publisher) watch(pc *pubConn, closes <-chan *amqp.Error, blocks <-chan amqp.Blocking) {
	defer close(pc.watchDone)
	for {
		select {
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			if !pc.block.set(b.Active, b.Reason) {
				continue
			}
			if b.Active {
				pc.interruptWrites()
				p.log.Warn("connection blocked by the broker: nothing can be published until it lifts the alarm", "reason", b.Reason)
			} else {
				p.log.Info("connection unblocked")
			}
			if p.cfg.OnBlocked != nil {
				p.cfg.OnBlocked(b.Active, b.Reason)
			}
		case e, ok := <-closes:
			pc.reason = closeReason("connection", e, ok)
			close(pc.lost)
			if pc.block.set(false, "") && p.cfg.OnBlocked != nil {
				p.cfg.OnBlocked(false, "")
			}
			return
		}
	}
}

// serve opens confirming channels on pc, one after another, until pc is lost
// (returning why) or ctx is cancelled (returning nil).
func (p *Publisher) serve(ctx context.Context, pc *pubConn) error {
	_ = p.cfg.Backoff.retry(ctx, pc.lost, func() attempt {
		ch, err := p.openChannel(ctx, pc)
		if err != nil {
			if pc.conn.IsClosed() {
				// The connection is going: that loss is what to report.
				<-pc.lost
				return attempt{}
			}
			return attempt{err: err}
		}
		p.cur.Store(ch)
		p.state.up(pc.node)
		start := time.Now()

		var reason error
		select {
		case <-ctx.Done():
		case <-pc.lost:
		case e, ok := <-ch.closes:
			reason = closeReason("channel", e, ok)
		}
		p.cur.Store(nil)
		if ctx.Err() != nil {
			p.closeChannel(ch)
			return attempt{}
		}
		<-ch.returns.done // the channel is closed, so its returns are too
		if isClosed(pc.lost) {
			return attempt{}
		}
		p.state.down(reason)
		return attempt{up: time.Since(start), err: reason}
	}, p.state.retrying)
	if ctx.Err() != nil {
		return nil
	}
	<-pc.lost
	return pc.reason
}

// closeChannel closes ch on shutdown, once a Publish in progress (bounded
// by the confirm timeout) has finished with it.
func (p *Publisher) closeChannel(ch *pubChannel) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, blocked := ch.conn.block.get(); !blocked && !ch.ch.IsClosed() {
		_ = ch.conn.bounded(context.Background(), closeTimeout, ch.ch.Close)
	}
	if _, blocked := ch.conn.block.get(); blocked {
		// The broker does not read a blocked connection: closing the
		// socket is the only close it will see.
		ch.conn.raw.Close()
	}
	<-ch.returns.done
}

// openChannel makes sure the queues exist, then opens a channel in confirm
// mode.
func (p *Publisher) openChannel(ctx context.Context, pc *pubConn) (*pubChannel, error) {
	for _, q := range p.cfg.Queues {
		if _, err := declareQueue(ctx, pc.link, q, p.cfg.QueueType); err != nil {
			return nil, err
		}
	}
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
		if err := probeAlarm(ctx, ch); err != nil {
			return fail(err)
		}
		out = &pubChannel{conn: pc, ch: ch, closes: closes, returns: rt}
		return nil
	})
	return out, err
}

// probeKey routes nowhere: no client can declare a queue whose name starts
// with "amq.", so the default exchange drops a message sent with it.
const probeKey = "amq.audit-log-analysis.alarm-probe"

// probeAlarm publishes one empty, transient message that no queue receives.
// RabbitMQ tells a connection that a memory or disk alarm blocks it only
// when the connection publishes; without the probe, a connection opened
// during an alarm (a reconnect, a start) would look ready, and health would
// say so, until the first alert of a batch got stuck.
func probeAlarm(ctx context.Context, ch *amqp.Channel) error {
	_, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", probeKey, false, false, amqp.Publishing{
		DeliveryMode: amqp.Transient,
		Type:         "alarm-probe",
	})
	if err != nil {
		return fmt.Errorf("publish the alarm probe: %w", err)
	}
	return nil
}

// Publish sends msgs as persistent, mandatory messages on the default
// exchange and waits until the broker has confirmed every one of them. It
// returns an error wrapping ErrNotConnected, ErrBlocked, ErrNacked,
// ErrUnroutable or a context error if any message may not have reached its
// queue; the caller then publishes the whole set again (duplicates carry
// the same MessageID). The wait is bounded by ConfirmTimeout and ctx. While
// the broker blocks the connection (a memory or disk alarm) Publish fails at
// once with ErrBlocked, and a Publish under way when the block comes ends
// with ErrBlocked as soon as it is notified. Concurrent calls are
// serialised.
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
	blocked := pc.conn.block.blocked()
	if reason, ok := pc.conn.block.get(); ok {
		return fmt.Errorf("publish: %s: %w", reason, ErrBlocked)
	}

	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConfirmTimeout)
	defer cancel()
	// Forget returns of earlier calls.
	if _, err := pc.returns.flush(ctx); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	confirms, err := pc.send(ctx, msgs)
	if err != nil {
		return err
	}
	if err := pc.confirmed(ctx, blocked, msgs, confirms); err != nil {
		if errors.Is(err, ErrNacked) {
			// A channel can go on being nacked whatever it publishes (after
			// the leader of a quorum queue it published to died, a fresh
			// channel is confirmed and the old one never again): the
			// caller's retry goes out on a new channel.
			_ = pc.conn.bounded(context.Background(), closeTimeout, pc.ch.Close)
		}
		return err
	}
	return p.checkReturns(ctx, pc, msgs)
}

// send writes msgs. A write stuck behind TCP flow control (the broker
// stops reading a blocked connection) fails when ctx ends or the block is
// notified (see pubConn.interruptWrites).
func (pc *pubChannel) send(ctx context.Context, msgs []Message) ([]*amqp.DeferredConfirmation, error) {
	deadline, _ := ctx.Deadline()
	pc.conn.writing(true, deadline)
	defer pc.conn.writing(false, time.Time{})
	stop := context.AfterFunc(ctx, pc.conn.interruptWrites)
	defer stop()
	// A block notified before the writes were marked could not interrupt
	// them: look again.
	if reason, ok := pc.conn.block.get(); ok {
		return nil, fmt.Errorf("publish: %s: %w", reason, ErrBlocked)
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
			if reason, ok := pc.conn.block.get(); ok {
				return nil, fmt.Errorf("publish message %q to queue %q: %s: %w", m.MessageID, m.Queue, reason, ErrBlocked)
			}
			return nil, fmt.Errorf("publish message %q to queue %q: %w", m.MessageID, m.Queue, err)
		}
		confirms[i] = dc
	}
	return confirms, nil
}

// confirmed waits for every confirm; it gives up when ctx ends or the
// connection is blocked, since no confirm comes before the broker lifts
// its alarm.
func (pc *pubChannel) confirmed(ctx context.Context, blocked <-chan struct{}, msgs []Message, confirms []*amqp.DeferredConfirmation) error {
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
		case <-blocked:
			reason, _ := pc.conn.block.get()
			return fmt.Errorf("publish: waiting for confirms (%d of %d received): %s: %w", i, len(msgs), reason, ErrBlocked)
		case <-ctx.Done():
			return fmt.Errorf("publish: waiting for confirms (%d of %d received): %w", i, len(msgs), ctx.Err())
		}
	}
	return nil
}

// checkReturns fails the call if any message came back unroutable.
func (p *Publisher) checkReturns(ctx context.Context, pc *pubChannel, msgs []Message) error {
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
	if len(unroutable) == 0 {
		return nil
	}
	// A configured queue that someone deleted is declared again, so the
	// caller's retry is delivered instead of returned forever.
	for _, q := range p.redeclare(pc, unroutable) {
		p.log.Warn("declared a deleted queue again", "queue", q)
	}
	r := returned[unroutable[0].MessageID]
	return fmt.Errorf("publish: %d of %d messages returned, first %q to queue %q (%d %s): %w",
		len(unroutable), len(msgs), unroutable[0].MessageID, unroutable[0].Queue, r.ReplyCode, r.ReplyText, ErrUnroutable)
}

// redeclare makes sure the configured queues among the unroutable messages'
// exist again, as a channel opening would, and returns those it declared.
// A failure is left to the next Publish.
func (p *Publisher) redeclare(pc *pubChannel, unroutable []Message) []string {
	var done []string
	for _, q := range p.cfg.Queues {
		if !slices.ContainsFunc(unroutable, func(m Message) bool { return m.Queue == q }) {
			continue
		}
		if _, err := declareQueue(context.Background(), pc.conn.link, q, p.cfg.QueueType); err != nil {
			p.log.Warn("declare a deleted queue again", "queue", q, "error", err.Error())
			return done
		}
		done = append(done, q)
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
