package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ConsumerConfig configures a Consumer. Zero durations and sizes take the
// defaults given with each field.
type ConsumerConfig struct {
	// URL is the amqp:// or amqps:// URL of the broker. It holds the
	// password, so only its redacted form is ever logged.
	URL string
	// Queue is declared durable with no arguments, exactly as the rest of
	// the platform declares it, then consumed with manual acks.
	Queue string
	// Prefetch is the channel's basic.qos prefetch count (1 to 65535).
	Prefetch int
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
	// Logger receives state changes at Info and Warn and per-batch detail
	// at Debug (default: discard).
	Logger *slog.Logger
	// OnConnection, if set, is called on every change between connected
	// (consuming) and disconnected. Calls are serialised.
	OnConnection func(connected bool)
	// Backoff paces reconnection attempts and retries of a failing batch.
	Backoff Backoff
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
	Headers     map[string]any

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

// Consumer consumes one queue in batches over its own connection.
type Consumer struct {
	cfg       ConsumerConfig
	log       *slog.Logger
	state     linkState
	tagPrefix string
	running   atomic.Bool
	alive     atomic.Bool
}

// NewConsumer validates cfg, filling in defaults, and returns a Consumer that
// has not connected yet.
func NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	var errs []error
	redacted, err := checkURL(cfg.URL)
	if err != nil {
		errs = append(errs, err)
	}
	if cfg.Queue == "" {
		errs = append(errs, errors.New("queue name is empty"))
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
	if cfg.BatchWait < 0 || cfg.ShutdownGrace < 0 {
		errs = append(errs, errors.New("batch wait and shutdown grace must not be negative"))
	}
	if cfg.BatchWait == 0 {
		cfg.BatchWait = 5 * time.Millisecond
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 5 * time.Second
	}
	cfg.Backoff = cfg.Backoff.withDefaults()
	if err := cfg.Backoff.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("consumer config: %w", err)
	}
	log := discardLogger(cfg.Logger).With("component", "broker.consumer", "queue", cfg.Queue)
	return &Consumer{
		cfg:       cfg,
		log:       log,
		state:     linkState{on: cfg.OnConnection, log: log, broker: redacted},
		tagPrefix: "audit-log-analysis-" + randomHex(4),
	}, nil
}

// Alive reports whether Run's loop is running (connected or reconnecting).
func (c *Consumer) Alive() bool { return c.alive.Load() }

// Connected reports whether the consumer is currently consuming.
func (c *Consumer) Connected() bool { return c.state.get() }

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

	var gen uint64
	failures := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		gen++
		s, err := c.open(ctx, gen)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d := c.cfg.Backoff.delay(failures)
			failures++
			c.log.Warn("connect failed", "error", err.Error(), "failures", failures, "retry_in", d)
			if !sleep(ctx, d, nil) {
				return nil
			}
			continue
		}
		c.state.set(true, nil)
		connectedAt := time.Now()

		err = c.consume(ctx, hctx, s, h)
		switch {
		case err != nil:
			c.log.Error("stopping: handler broke its contract", "error", err.Error())
			c.state.set(false, nil)
		case ctx.Err() != nil:
			c.state.set(false, nil)
		default:
			// The broker's basic.cancel is notified just before the
			// deliveries stop; give the watcher a moment to record it.
			select {
			case <-s.lost:
			case <-time.After(time.Second):
			}
			c.state.set(false, s.endReason())
		}
		s.close()
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		// A session that failed soon after it started counts as a failed
		// attempt, so a broker that keeps dropping us is not hammered.
		if time.Since(connectedAt) > c.cfg.Backoff.Max {
			failures = 0
		}
		d := c.cfg.Backoff.delay(failures)
		failures++
		c.log.Info("reconnecting", "in", d)
		if !sleep(ctx, d, nil) {
			return nil
		}
	}
}

// consumerSession is one connection and its consuming channel: one
// generation. Only Run's goroutine uses it, apart from the watcher and the
// basic.cancel sent on shutdown.
type consumerSession struct {
	*link
	gen        uint64
	ch         *amqp.Channel
	tag        string
	deliveries <-chan amqp.Delivery

	lost      chan struct{} // closed when the connection or channel closes or the broker cancels the consumer
	reason    error         // why lost was closed; written before
	watchDone chan struct{}

	// settled is the highest tag such that every tag up to it is settled.
	settled uint64
	// broken is set when a settlement could not be sent: the session must
	// end.
	broken error
}

func (c *Consumer) open(ctx context.Context, gen uint64) (*consumerSession, error) {
	l, err := dial(ctx, c.cfg.URL, "audit-log-analysis consumer")
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	s := &consumerSession{
		link:      l,
		gen:       gen,
		tag:       fmt.Sprintf("%s-%d", c.tagPrefix, gen),
		lost:      make(chan struct{}),
		watchDone: make(chan struct{}),
	}
	connClose := l.conn.NotifyClose(make(chan *amqp.Error, 1))
	var chClose chan *amqp.Error
	var cancels chan string
	err = l.bounded(ctx, opTimeout, func() error {
		ch, err := l.conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		s.ch = ch
		chClose = ch.NotifyClose(make(chan *amqp.Error, 1))
		cancels = ch.NotifyCancel(make(chan string, 1))
		if _, err := ch.QueueDeclare(c.cfg.Queue, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare queue %q: %w", c.cfg.Queue, err)
		}
		if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
			return fmt.Errorf("set prefetch %d: %w", c.cfg.Prefetch, err)
		}
		d, err := ch.Consume(c.cfg.Queue, s.tag, false, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("consume queue %q: %w", c.cfg.Queue, err)
		}
		s.deliveries = d
		return nil
	})
	if err != nil {
		l.close(nil)
		return nil, err
	}
	go s.watch(connClose, chClose, cancels, &c.state)
	return s, nil
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
	state.set(false, reason)
}

func (s *consumerSession) isLost() bool {
	select {
	case <-s.lost:
		return true
	default:
		return false
	}
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

// close closes the channel and connection and waits for the watcher.
// Deliveries prefetched but not settled return to the queue.
func (s *consumerSession) close() {
	s.link.close(s.ch)
	<-s.watchDone
}

func (s *consumerSession) wrap(d amqp.Delivery) Delivery {
	return Delivery{
		Body:        d.Body,
		MessageID:   d.MessageId,
		ContentType: d.ContentType,
		Timestamp:   d.Timestamp,
		Redelivered: d.Redelivered,
		Headers:     d.Headers,
		gen:         s.gen,
		tag:         d.DeliveryTag,
	}
}

// consume runs batches on one session until it ends or ctx is cancelled.
// This goroutine alone handles batches and owns the channel's acks, so acks
// go out in delivery order.
func (c *Consumer) consume(ctx, hctx context.Context, s *consumerSession, h Handler) error {
	// On shutdown stop deliveries at once; the batch in flight still
	// settles on this channel afterwards.
	cancelled := make(chan struct{})
	stopCancel := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		err := s.bounded(context.Background(), closeTimeout, func() error { return s.ch.Cancel(s.tag, false) })
		if err != nil {
			c.log.Debug("cancel consumer", "error", err.Error())
		}
	})
	defer func() {
		if !stopCancel() {
			<-cancelled
		}
	}()

	for {
		batch, more := c.collect(ctx, s)
		if len(batch) > 0 {
			if err := c.handle(ctx, hctx, s, batch, h); err != nil {
				return err
			}
		}
		if !more || ctx.Err() != nil || s.broken != nil || s.isLost() {
			return nil
		}
	}
}

// collect waits for one delivery, then gathers more until the batch is full
// or BatchWait has passed. more is false when the session or ctx is over;
// a batch collected when ctx is cancelled is still returned, to be handled
// within the grace period.
func (c *Consumer) collect(ctx context.Context, s *consumerSession) (batch []Delivery, more bool) {
	select {
	case d, ok := <-s.deliveries:
		if !ok {
			return nil, false
		}
		batch = make([]Delivery, 0, c.cfg.BatchSize)
		batch = append(batch, s.wrap(d))
	case <-s.lost:
		return nil, false
	case <-ctx.Done():
		return nil, false
	}
	if len(batch) == c.cfg.BatchSize {
		return batch, true
	}
	t := time.NewTimer(c.cfg.BatchWait)
	defer t.Stop()
	for len(batch) < c.cfg.BatchSize {
		select {
		case d, ok := <-s.deliveries:
			if !ok {
				return batch, false
			}
			batch = append(batch, s.wrap(d))
		case <-t.C:
			return batch, true
		case <-s.lost:
			// The channel is gone: these will be redelivered.
			return nil, false
		case <-ctx.Done():
			return batch, false
		}
	}
	return batch, true
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
			"error", err.Error(), "size", len(batch), "attempt", attempt+1, "retry_in", d)
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
