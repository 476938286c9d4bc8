package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ConsumerConfig configures a Consumer. Zero durations and sizes take the
// defaults given with each field.
type ConsumerConfig struct {
	// URLs are amqp:// or amqps:// URLs of the nodes of one cluster, tried
	// in turn. They hold the password, so only their redacted form is ever
	// logged.
	URLs []string
	// TLS configures amqps:// connections (default: the system roots and
	// the URL's host as the server name).
	TLS TLSConfigFunc
	// Queue is used as it exists, whatever its type and arguments. Only a
	// missing queue is declared: durable, of type QueueType, with no other
	// argument.
	Queue string
	// Queues, instead of Queue, are several queues consumed at once on the
	// one channel, each as Queue would be, sharing the one prefetch count
	// and byte budget: each queue's consumer gets its share of them.
	Queues []string
	// QueueType is QueueClassic (the default) or QueueQuorum.
	QueueType string
	// Prefetch is the most unacknowledged deliveries (1 to 65535): the
	// channel's basic.qos prefetch count when bodies are small, split
	// over the queues' consumers when there are several (each gets at
	// least 1).
	Prefetch int
	// MaxInflightBytes bounds the bodies the consumer holds: the prefetch
	// count is lowered so that prefetched deliveries of the largest recent
	// size take at most half of it, and a batch closes when its bodies
	// reach a quarter of it, leaving the rest for what the handler builds
	// from them. Zero means no bound in bytes.
	MaxInflightBytes int64
	// BatchSize is the most deliveries handed to the handler at once
	// (default and maximum: Prefetch).
	BatchSize int
	// BatchWait is how long to wait for more deliveries once the first one
	// of a batch has arrived (default 5ms).
	BatchWait time.Duration
	// ShutdownGrace is how long the handler's context stays valid after
	// Run's context is cancelled, so the batch in flight can finish
	// (default 5s).
	ShutdownGrace time.Duration
	// Logger receives state changes at Info, Warn and Error and per-batch
	// detail at Debug (default: discard).
	Logger *slog.Logger
	// Backoff paces reconnection attempts and retries of a failing batch.
	Backoff Backoff
	// DepthQueues are queues whose depth is reported besides Queue's,
	// every DepthInterval (default 5s), by passive declares on the
	// consumer's connection: it never publishes, so a broker alarm does
	// not block it and the depths stay current during one.
	DepthQueues   []string
	DepthInterval time.Duration

	// Callbacks, each optional; they must return quickly.

	// OnConnection is called on every change between connected
	// (consuming) and disconnected. Calls are serialised.
	OnConnection func(connected bool)
	// OnError is called with a Problem's reason each time one stops a
	// connection attempt.
	OnError func(reason string)
	// OnSettled is called with the number of deliveries whose ack or
	// reject was sent; deliveries whose settlement was dropped (their
	// channel closed first) are not counted: they come back.
	OnSettled func(n int)
	// OnInflight is called with the bytes of the bodies taken from the
	// broker and not yet settled, each time that changes.
	OnInflight func(bytes int64)
	// OnQueueDepth is called with the messages ready in a queue, or
	// ok=false when the queue does not exist.
	OnQueueDepth func(queue string, messages int, ok bool)
}

// Delivery is one message taken from the queue. It stays tied to the
// channel that delivered it: it is only ever settled on that channel.
type Delivery struct {
	Body        []byte
	MessageID   string
	ContentType string
	Timestamp   time.Time
	// Redelivered is set when the broker delivered the message before
	// without it being settled.
	Redelivered bool
	// Queue is the queue the message was consumed from.
	Queue string
	// DeliveryCount is how many times the broker delivered the message
	// before without it being settled, as quorum queues count it
	// (x-delivery-count); 0 on a first delivery and on queues that do not
	// count (classic queues).
	DeliveryCount int64
	Headers       map[string]any

	gen uint64 // generation of the channel that delivered it
	tag uint64 // delivery tag on that channel
}

// Disposition is the fate of one handled delivery.
type Disposition int

const (
	// Ack removes the delivery from the queue: it was handled.
	Ack Disposition = iota
	// Reject removes the delivery without requeueing it (basic.nack with
	// requeue=false), dead-lettering it where the queue has a policy for
	// that. It is for deliveries that can never be handled.
	Reject
)

func (d Disposition) String() string {
	switch d {
	case Ack:
		return "ack"
	case Reject:
		return "reject"
	}
	return fmt.Sprintf("Disposition(%d)", int(d))
}

// Handler handles batches of deliveries.
type Handler interface {
	// Handle returns one Disposition per delivery, in order, or an error
	// meaning a transient failure of the whole batch: nothing of it is
	// settled and the same batch is handed over again after a backoff.
	Handle(ctx context.Context, batch []Delivery) ([]Disposition, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, batch []Delivery) ([]Disposition, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, batch []Delivery) ([]Disposition, error) {
	return f(ctx, batch)
}

// Consumer consumes one queue, or several, in batches over its own
// connection and one channel.
type Consumer struct {
	cfg       ConsumerConfig
	queues    []string // Queue, or Queues
	log       *slog.Logger
	state     linkState
	dialer    dialer
	tagPrefix string
	running   atomic.Bool
	alive     atomic.Bool
}

// NewConsumer validates cfg, filling in defaults, and returns a Consumer that
// has not connected yet.
func NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	var errs []error
	nodes, err := parseNodes(cfg.URLs)
	if err != nil {
		errs = append(errs, err)
	}
	queues := cfg.Queues
	if cfg.Queue != "" {
		queues = append([]string{cfg.Queue}, queues...)
	}
	if len(queues) == 0 {
		errs = append(errs, errors.New("queue name is empty"))
	}
	for i, q := range queues {
		if q == "" {
			errs = append(errs, errors.New("queue name is empty"))
		} else if slices.Contains(queues[:i], q) {
			errs = append(errs, fmt.Errorf("queue %q is named twice", q))
		}
	}
	if cfg.QueueType == "" {
		cfg.QueueType = QueueClassic
	}
	if err := checkQueueType(cfg.QueueType); err != nil {
		errs = append(errs, err)
	}
	if cfg.Prefetch < 1 || cfg.Prefetch > 65535 {
		errs = append(errs, fmt.Errorf("prefetch %d must be between 1 and 65535", cfg.Prefetch))
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = cfg.Prefetch
	}
	if cfg.BatchSize < 0 || (cfg.Prefetch > 0 && cfg.BatchSize > cfg.Prefetch) {
		errs = append(errs, fmt.Errorf("batch size %d must be between 1 and the prefetch count %d", cfg.BatchSize, cfg.Prefetch))
	}
	if cfg.MaxInflightBytes < 0 {
		errs = append(errs, errors.New("max in-flight bytes must not be negative"))
	}
	if cfg.BatchWait < 0 || cfg.ShutdownGrace < 0 || cfg.DepthInterval < 0 {
		errs = append(errs, errors.New("batch wait, shutdown grace and depth interval must not be negative"))
	}
	if cfg.BatchWait == 0 {
		cfg.BatchWait = 5 * time.Millisecond
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 5 * time.Second
	}
	if cfg.DepthInterval == 0 {
		cfg.DepthInterval = 5 * time.Second
	}
	cfg.Backoff = cfg.Backoff.withDefaults()
	if err := cfg.Backoff.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("consumer config: %w", err)
	}
	cfg.URLs = slices.Clone(cfg.URLs)
	cfg.DepthQueues = slices.Clone(cfg.DepthQueues)
	queues = slices.Clone(queues)
	log := discardLogger(cfg.Logger).With("component", "broker.consumer", "queue", strings.Join(queues, ","))
	return &Consumer{
		cfg:       cfg,
		queues:    queues,
		log:       log,
		state:     linkState{log: log, onConn: cfg.OnConnection, onError: cfg.OnError},
		dialer:    dialer{nodes: nodes, name: "audit-log-analysis consumer", tls: cfg.TLS, log: log},
		tagPrefix: "audit-log-analysis-" + randomHex(4),
	}, nil
}

// Alive reports whether Run's loop is running (connected or reconnecting).
func (c *Consumer) Alive() bool { return c.alive.Load() }

// Connected reports whether the consumer is currently consuming.
func (c *Consumer) Connected() bool { return c.state.get() }

// Problem returns the error that stopped the last connection attempt if
// retrying alone will not fix it (see Problem), or nil; it is cleared once
// the consumer connects.
func (c *Consumer) Problem() *Problem { return c.state.currentProblem() }

// Run consumes until ctx is cancelled, reconnecting whenever the connection
// or channel is lost. On cancellation it cancels the consumer, lets the
// batch in flight finish and settle, closes the channel and connection, and
// returns nil. It returns an error only if it is already running or the
// handler breaks its contract (wrong number or unknown dispositions); the
// unsettled batch then returns to the queue.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return errors.New("consumer: nil handler")
	}
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("consumer: already running")
	}
	defer c.running.Store(false)
	c.alive.Store(true)
	defer c.alive.Store(false)

	// The handler's context outlives ctx by the grace period, so a batch
	// whose alerts are being published when shutdown starts can complete.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(c.cfg.ShutdownGrace, hcancel) })
	defer stopGrace()

	c.state.connecting(c.dialer.nodes)
	var gen uint64
	return c.cfg.Backoff.retry(ctx, nil, func() attempt {
		gen++
		return c.session(ctx, hctx, gen, h)
	}, c.state.retrying)
}

// session runs one connection, from dialling to closing.
func (c *Consumer) session(ctx, hctx context.Context, gen uint64, h Handler) attempt {
	s, err := c.open(ctx, gen)
	if err != nil {
		return attempt{err: err}
	}
	start := time.Now()

	// consume reports the consumer up once every queue is consumed.
	err = c.consume(ctx, hctx, s, h)
	var reason error
	switch {
	case err != nil:
		c.log.Error("stopping: handler broke its contract", "error", err.Error())
	case ctx.Err() != nil:
	default:
		// The broker's basic.cancel is notified just before the
		// deliveries stop; give the watcher a moment to record it.
		select {
		case <-s.lost:
		case <-time.After(time.Second):
		}
		reason = s.endReason()
	}
	c.state.down(reason)
	s.close()
	c.inflight(0)
	if reason != nil {
		c.dialer.lost(s.link)
	}
	// A session that never consumed counts as a failed attempt to
	// connect, not as a loss.
	var up time.Duration
	if s.consumed {
		up = time.Since(start)
	}
	return attempt{up: up, err: reason, stop: err}
}

// consumerSession is one connection and its consuming channel: one
// generation. Only Run's goroutine uses it, apart from the watchers and the
// basic.cancel sent on shutdown.
type consumerSession struct {
	*link
	gen    uint64
	ch     *amqp.Channel
	window *window

	// subMu guards the subscription, which the shutdown cancels from
	// another goroutine.
	subMu    sync.Mutex
	sub      subscription
	subs     int  // subscriptions made so far, for unique tags
	next     int  // the prefetch count of the next subscription
	stopping bool // no new subscription: shutting down
	consumed bool // a subscription of every queue was made
	// merged joins the consumers' deliveries when there are several
	// queues; nextTag is the delivery tag the next merger expects.
	merged  *merger
	nextTag uint64
	// queues are the queues consumed; queueOf names the queue of each
	// consumer tag when there are several.
	queues  []string
	queueOf map[string]string

	lost      chan struct{} // closed when the connection or channel closes or the broker cancels the consumer
	reason    error         // why lost was closed; written before
	quit      chan struct{} // closed when the session is closing
	watchDone chan struct{}
	depthDone chan struct{}

	// pending is a delivery taken from the broker that did not fit in the
	// last batch's byte budget: it starts the next batch.
	pending *Delivery
	// settled is the highest tag such that every tag up to it is settled.
	settled uint64
	// broken is set when a settlement or a change of subscription could
	// not be sent: the session must end.
	broken error
}

// subscription is one basic.consume per queue on the session's channel,
// made together and cancelled together.
type subscription struct {
	tags       []string // one consumer tag per queue, in queue order
	prefetch   int      // the prefetch count the consumers share
	deliveries <-chan amqp.Delivery
	cancelled  bool // basic.cancel sent: the deliveries drain, then close
}

func (c *Consumer) open(ctx context.Context, gen uint64) (*consumerSession, error) {
	l, err := c.dialer.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	connClose := l.conn.NotifyClose(make(chan *amqp.Error, 1))
	for _, name := range c.queues {
		q, err := declareQueue(ctx, l, name, c.cfg.QueueType)
		if err != nil {
			l.close(nil, false)
			return nil, err
		}
		c.depth(name, q.Messages, true)
	}
	ch, err := l.channel(ctx)
	if err != nil {
		l.close(nil, false)
		return nil, err
	}
	s := &consumerSession{
		link:      l,
		gen:       gen,
		ch:        ch,
		window:    newWindow(c.cfg.Prefetch, c.cfg.MaxInflightBytes/2),
		lost:      make(chan struct{}),
		quit:      make(chan struct{}),
		watchDone: make(chan struct{}),
		depthDone: make(chan struct{}),
		nextTag:   1,
		queues:    c.queues,
	}
	if len(c.queues) > 1 {
		s.queueOf = make(map[string]string, len(c.queues))
	}
	s.next = s.window.size()
	chClose := ch.NotifyClose(make(chan *amqp.Error, 1))
	// The broker cancels each consumer of a deleted queue: room for one
	// cancel per queue, so the library never blocks on a full buffer.
	cancels := ch.NotifyCancel(make(chan string, len(c.queues)))
	go s.watch(connClose, chClose, cancels, &c.state)
	go c.watchDepths(s)
	return s, nil
}

// subscribe starts consuming with the prefetch count s.next, split over
// the queues. Each count must be set before its basic.consume: RabbitMQ
// applies it to consumers started afterwards only. Several queues share
// the count by per-consumer prefetch rather than the channel-wide (global)
// one, which quorum queues do not support (RabbitMQ 3.10 refuses the
// consume with 540 NOT_IMPLEMENTED).
func (c *Consumer) subscribe(ctx context.Context, s *consumerSession) error {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if s.stopping {
		return nil
	}
	s.subs++
	sub := subscription{tags: make([]string, len(c.queues)), prefetch: s.next}
	shares := prefetchShares(sub.prefetch, len(c.queues))
	sources := make([]<-chan amqp.Delivery, len(c.queues))
	err := s.bounded(ctx, opTimeout, func() error {
		for i, q := range c.queues {
			tag := fmt.Sprintf("%s-%d-%d", c.tagPrefix, s.gen, s.subs)
			if len(c.queues) > 1 {
				tag = fmt.Sprintf("%s-%d", tag, i+1)
			}
			if err := s.ch.Qos(shares[i], 0, false); err != nil {
				return fmt.Errorf("set prefetch %d: %w", shares[i], err)
			}
			d, err := s.ch.Consume(q, tag, false, false, false, false, nil)
			if err != nil {
				return fmt.Errorf("consume queue %q: %w", q, err)
			}
			sub.tags[i], sources[i] = tag, d
		}
		return nil
	})
	if err != nil {
		return err
	}
	if s.subs > 1 {
		c.log.Debug("prefetch changed", "prefetch", sub.prefetch)
	}
	if len(c.queues) == 1 {
		sub.deliveries = sources[0]
	} else {
		// The previous merger, if any, has closed its output: collect
		// saw the subscription drained before this one was made.
		if s.merged != nil {
			s.nextTag = s.merged.next
		}
		clear(s.queueOf)
		for i, tag := range sub.tags {
			s.queueOf[tag] = c.queues[i]
		}
		s.merged = newMerger(sources, s.nextTag, s.quit)
		sub.deliveries = s.merged.out
	}
	s.sub = sub
	return nil
}

// resize asks for the prefetch count n: the subscription is cancelled, what
// the broker already sent is handled and settled, and the next subscription
// starts with n.
func (c *Consumer) resize(s *consumerSession, n int) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	s.next = n
	if s.sub.cancelled || s.stopping {
		return
	}
	if err := s.cancel(opTimeout); err != nil {
		s.broken = fmt.Errorf("cancel the consumer to change its prefetch: %w", err)
	}
}

// stopConsuming cancels the subscription and allows no new one. The
// caller holds no lock.
func (s *consumerSession) stopConsuming() error {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	s.stopping = true
	if s.sub.cancelled || s.sub.deliveries == nil {
		return nil
	}
	return s.cancel(closeTimeout)
}

// cancel sends basic.cancel for each consumer of the subscription,
// waiting at most d for the replies; the caller holds subMu.
func (s *consumerSession) cancel(d time.Duration) error {
	s.sub.cancelled = true
	return s.bounded(context.Background(), d, func() error {
		for _, tag := range s.sub.tags {
			if err := s.ch.Cancel(tag, false); err != nil {
				return err
			}
		}
		return nil
	})
}

// watch waits for the first sign that the session is over. Each
// notification channel receives at most one value, into its buffer, so none
// needs draining afterwards.
func (s *consumerSession) watch(connClose, chClose <-chan *amqp.Error, cancels <-chan string, state *linkState) {
	defer close(s.watchDone)
	var reason error
	select {
	case e, ok := <-connClose:
		reason = closeReason("connection", e, ok)
	case e, ok := <-chClose:
		reason = closeReason("channel", e, ok)
	case tag, ok := <-cancels:
		if ok {
			reason = fmt.Errorf("consumer %s cancelled by the broker (queue deleted?)", tag)
		} else {
			reason = errors.New("channel closed")
		}
	}
	s.reason = reason
	close(s.lost)
	// Report the loss now, even if a batch is still being handled.
	state.down(reason)
}

// watchDepths reports the depth of the queues every DepthInterval, while
// the session lasts, from passive declares on a channel of its own: a
// queue that was deleted closes only that channel, which is opened again
// for the next one. Its calls are not bounded by a timeout that would close
// the connection under the consumer; closing the session ends them.
func (c *Consumer) watchDepths(s *consumerSession) {
	defer close(s.depthDone)
	if c.cfg.OnQueueDepth == nil {
		return
	}
	queues := append(slices.Clone(c.queues), c.cfg.DepthQueues...)
	t := time.NewTicker(c.cfg.DepthInterval)
	defer t.Stop()
	var ch *amqp.Channel
	for {
		select {
		case <-t.C:
		case <-s.lost:
			return
		case <-s.quit:
			return
		}
		for _, q := range queues {
			if ch == nil || ch.IsClosed() {
				var err error
				if ch, err = s.conn.Channel(); err != nil {
					return // the connection is going: the session ends
				}
			}
			info, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
			switch {
			case err == nil:
				c.depth(q, info.Messages, true)
			case isNotFound(err):
				c.depth(q, 0, false)
			default:
				return
			}
		}
	}
}

func (c *Consumer) depth(queue string, messages int, ok bool) {
	if c.cfg.OnQueueDepth != nil {
		c.cfg.OnQueueDepth(queue, messages, ok)
	}
}

func (c *Consumer) inflight(bytes int64) {
	if c.cfg.OnInflight != nil {
		c.cfg.OnInflight(bytes)
	}
}

func (s *consumerSession) isLost() bool { return isClosed(s.lost) }

// queueName names the queue a consumer tag consumes. With one queue there
// is no map to look in.
func (s *consumerSession) queueName(tag string) string {
	if s.queueOf == nil {
		return s.queues[0]
	}
	return s.queueOf[tag]
}

// endReason says why a session that was not asked to stop ended.
func (s *consumerSession) endReason() error {
	if s.isLost() {
		return s.reason
	}
	if s.broken != nil {
		return s.broken
	}
	return errors.New("deliveries stopped")
}

// close closes the channel and connection and waits for the watchers.
// Deliveries prefetched but not settled return to the queue.
func (s *consumerSession) close() {
	close(s.quit)
	s.link.close(s.ch, false)
	<-s.depthDone
	<-s.watchDone
}

// wrap ties d to the session and lets the window see it.
func (s *consumerSession) wrap(d amqp.Delivery) Delivery {
	count := deliveryCount(d.Headers)
	s.window.observe(len(d.Body), d.Redelivered || count > 0)
	return Delivery{
		Body:          d.Body,
		MessageID:     d.MessageId,
		ContentType:   d.ContentType,
		Timestamp:     d.Timestamp,
		Redelivered:   d.Redelivered,
		Queue:         s.queueName(d.ConsumerTag),
		DeliveryCount: count,
		Headers:       d.Headers,
		gen:           s.gen,
		tag:           d.DeliveryTag,
	}
}

// deliveryCount reads x-delivery-count, whatever integer type the broker
// encoded it with.
func deliveryCount(h amqp.Table) int64 {
	switch v := h["x-delivery-count"].(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	case int16:
		return int64(v)
	case int8:
		return int64(v)
	case int:
		return int64(v)
	case uint32:
		return int64(v)
	case uint16:
		return int64(v)
	case uint8:
		return int64(v)
	}
	return 0
}

// consume runs batches on one session until it ends or ctx is cancelled.
// This goroutine alone handles batches, owns the channel's acks (so acks go
// out in delivery order) and changes the subscription.
func (c *Consumer) consume(ctx, hctx context.Context, s *consumerSession, h Handler) error {
	// On shutdown stop deliveries at once; the batch in flight still
	// settles on this channel afterwards.
	cancelled := make(chan struct{})
	stopCancel := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		if err := s.stopConsuming(); err != nil {
			c.log.Debug("cancel consumer", "error", err.Error())
		}
	})
	defer func() {
		if !stopCancel() {
			<-cancelled
		}
	}()

	if err := c.subscribe(ctx, s); err != nil {
		s.broken = err
		return nil
	}
	if s.sub.deliveries != nil {
		// Up, for health and readiness, only once every queue is
		// consumed.
		s.consumed = true
		c.state.up(s.node)
	}
	for {
		batch, st := c.collect(ctx, s)
		if n := s.window.want(s.sub.prefetch); n != s.sub.prefetch {
			c.resize(s, n)
		}
		if len(batch) > 0 {
			c.inflight(batchBytes(batch) + s.pendingBytes())
			if err := c.handle(ctx, hctx, s, batch, h); err != nil {
				return err
			}
			c.inflight(s.pendingBytes())
		}
		if st == over || ctx.Err() != nil || s.broken != nil || s.isLost() {
			return nil
		}
		if st == drained {
			// The subscription ended: changed by resize, or cancelled
			// by the broker (then the watcher reports the loss).
			s.subMu.Lock()
			ours := s.sub.cancelled
			s.subMu.Unlock()
			if !ours {
				return nil
			}
			if err := c.subscribe(ctx, s); err != nil {
				s.broken = err
				return nil
			}
		}
	}
}

// collectState says how a batch collection ended.
type collectState int

const (
	// more: the batch is full, or no more deliveries came in time.
	more collectState = iota
	// drained: the subscription's deliveries are all taken.
	drained
	// over: the session is lost or ctx is done.
	over
)

// collect waits for one delivery, then gathers more until the batch is full
// (BatchSize deliveries, or bodies of a quarter of MaxInflightBytes) or
// BatchWait has passed. A batch collected when ctx is cancelled is still
// returned, to be handled within the grace period; one collected when the
// channel is lost is dropped: the broker redelivers it.
func (c *Consumer) collect(ctx context.Context, s *consumerSession) ([]Delivery, collectState) {
	var batch []Delivery
	var bytes int64
	limit := c.cfg.MaxInflightBytes / 4
	// take adds d, or keeps it for the next batch when its body would
	// take the batch past the byte limit; it reports whether the batch
	// can take more.
	take := func(d Delivery) bool {
		size := int64(len(d.Body))
		if len(batch) > 0 && limit > 0 && bytes+size > limit {
			s.pending = &d
			return false
		}
		if batch == nil {
			batch = make([]Delivery, 0, c.cfg.BatchSize)
		}
		batch = append(batch, d)
		bytes += size
		return len(batch) < c.cfg.BatchSize
	}

	deliveries := s.sub.deliveries
	if d := s.pending; d != nil {
		s.pending = nil
		if !take(*d) {
			return batch, more
		}
	} else {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return nil, drained
			}
			if !take(s.wrap(d)) {
				return batch, more
			}
		case <-s.lost:
			return nil, over
		case <-ctx.Done():
			return nil, over
		}
	}
	t := time.NewTimer(c.cfg.BatchWait)
	defer t.Stop()
	for {
		// Deliveries already waiting are taken without the full select,
		// which locks every channel it waits on: during a backlog that
		// was a select per delivery. The batch is bounded, and a lost
		// channel closes deliveries, so the checks below still come.
		select {
		case d, ok := <-deliveries:
			if !ok {
				return batch, drained
			}
			if !take(s.wrap(d)) {
				return batch, more
			}
			continue
		default:
		}
		select {
		case d, ok := <-deliveries:
			if !ok {
				return batch, drained
			}
			if !take(s.wrap(d)) {
				return batch, more
			}
		case <-t.C:
			return batch, more
		case <-s.lost:
			// The channel is gone: these will be redelivered.
			return nil, over
		case <-ctx.Done():
			return batch, over
		}
	}
}

func batchBytes(batch []Delivery) int64 {
	var n int64
	for _, d := range batch {
		n += int64(len(d.Body))
	}
	return n
}

func (s *consumerSession) pendingBytes() int64 {
	if s.pending == nil {
		return 0
	}
	return int64(len(s.pending.Body))
}

// handle calls the handler until it succeeds, then settles the batch. While
// it fails, nothing is settled and no new delivery is taken; the retries are
// paced by the backoff and end, leaving the batch to the broker, when the
// channel is lost or ctx is cancelled.
func (c *Consumer) handle(ctx, hctx context.Context, s *consumerSession, batch []Delivery, h Handler) error {
	for attempt := 0; ; attempt++ {
		disps, err := h.Handle(hctx, batch)
		if err == nil {
			if err := checkDispositions(len(batch), disps); err != nil {
				return err
			}
			if attempt > 0 {
				c.log.Info("batch handler recovered", "attempts", attempt+1)
			}
			c.settle(s, batch, disps)
			return nil
		}
		if ctx.Err() != nil {
			c.log.Info("batch handler failed during shutdown; the batch returns to the queue",
				"error", err.Error(), "size", len(batch))
			return nil
		}
		d := c.cfg.Backoff.delay(attempt)
		level := slog.LevelDebug
		if attempt == 0 {
			level = slog.LevelWarn
		}
		c.log.Log(ctx, level, "batch handler failed; retrying the same batch",
			"error", err.Error(), "size", len(batch), "attempt", attempt+1, "retry_in", d.Round(time.Millisecond).String())
		if !sleep(ctx, d, s.lost) {
			if s.isLost() {
				c.log.Info("dropping the failing batch: its channel closed and the broker will redeliver it", "size", len(batch))
			}
			return nil
		}
	}
}

func checkDispositions(n int, disps []Disposition) error {
	if len(disps) != n {
		return fmt.Errorf("handler returned %d dispositions for %d deliveries", len(disps), n)
	}
	for i, d := range disps {
		if d != Ack && d != Reject {
			return fmt.Errorf("handler returned %v for delivery %d", d, i)
		}
	}
	return nil
}

// settle acks and rejects a handled batch on the channel that delivered it.
// If that channel is gone the settlement is dropped: the broker redelivers.
func (c *Consumer) settle(s *consumerSession, batch []Delivery, disps []Disposition) {
	if s.isLost() {
		c.log.Debug("channel closed before settlement; the broker will redeliver the batch", "size", len(batch))
		return
	}
	tags := make([]uint64, 0, len(batch))
	kept := make([]Disposition, 0, len(batch))
	for i, d := range batch {
		if d.gen != s.gen {
			continue
		}
		tags = append(tags, d.tag)
		kept = append(kept, disps[i])
	}
	ops, settled := planSettlement(s.settled, tags, kept)
	err := s.bounded(context.Background(), opTimeout, func() error {
		for _, op := range ops {
			var err error
			if op.ack {
				err = s.ch.Ack(op.tag, op.multiple)
			} else {
				err = s.ch.Nack(op.tag, false, false)
			}
			if err != nil {
				return fmt.Errorf("settle delivery %d: %w", op.tag, err)
			}
		}
		return nil
	})
	if err != nil {
		// The channel is unusable; its unsettled deliveries are redelivered.
		s.broken = err
		return
	}
	s.settled = settled
	if c.cfg.OnSettled != nil {
		c.cfg.OnSettled(len(tags))
	}
	c.log.Debug("batch settled", "size", len(batch), "frames", len(ops))
}

// settleOp is one basic.ack (possibly multiple) or basic.nack.
type settleOp struct {
	tag      uint64
	ack      bool
	multiple bool
}

// planSettlement turns a batch's dispositions, in delivery order, into acks
// and nacks. A run of acks is sent as one multiple ack only when every tag
// before the run is already settled, so the multiple ack cannot reach a
// delivery the run does not contain; otherwise each delivery is settled by
// itself. It returns the new value of settled: the highest tag up to which
// everything is settled.
func planSettlement(settled uint64, tags []uint64, disps []Disposition) ([]settleOp, uint64) {
	ops := make([]settleOp, 0, len(tags))
	next := settled + 1 // lowest unsettled tag while contiguous
	contiguous := true
	var runEnd uint64
	runLen := 0
	flush := func() {
		if runLen > 0 {
			ops = append(ops, settleOp{tag: runEnd, ack: true, multiple: runLen > 1})
			runLen = 0
		}
	}
	for i, tag := range tags {
		if contiguous && tag != next {
			flush()
			contiguous = false
		}
		if contiguous && disps[i] == Ack {
			runEnd = tag
			runLen++
			next++
			continue
		}
		flush()
		ops = append(ops, settleOp{tag: tag, ack: disps[i] == Ack})
		if contiguous {
			next++
		}
	}
	flush()
	return ops, next - 1
}
