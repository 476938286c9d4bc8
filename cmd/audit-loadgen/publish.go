package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/sample"
)

// maxInFlight bounds the publishes waiting for their confirm.
const maxInFlight = 1024

// publishConfig is what the publish command runs with.
type publishConfig struct {
	URL        string
	Queue      string
	AlertQueue string
	// Sample describes the generated events; File, when set, replaces them.
	Sample sample.Options
	File   string
	// Rate is in events per second; 0 publishes as fast as confirms allow.
	Rate    float64
	Timeout time.Duration
	// Idle is how long no alert must come before the count is final.
	Idle time.Duration
	// KeepAlerts counts the alerts without taking them: they stay in the
	// alert queue, for whoever was told to look there.
	KeepAlerts bool
}

func (c publishConfig) validate() error {
	var errs []error
	if c.Queue == "" || c.AlertQueue == "" {
		errs = append(errs, errors.New("-queue and -alerts must name queues"))
	} else if c.Queue == c.AlertQueue {
		errs = append(errs, fmt.Errorf("-alerts %q is also -queue: alerts would be consumed as events", c.AlertQueue))
	}
	if c.File == "" && c.Sample.Events <= 0 {
		errs = append(errs, fmt.Errorf("-n %d: want a positive number of events", c.Sample.Events))
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		errs = append(errs, fmt.Errorf("-rate %v: want 0 (unlimited) or events per second", c.Rate))
	}
	if c.Timeout <= 0 || c.Idle <= 0 {
		errs = append(errs, errors.New("-timeout and -idle must be positive"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", errUsage, errors.Join(errs...))
	}
	return nil
}

// message is one line to publish.
type message struct {
	body []byte
	// id is the event_id, sent as the message id ("" when absent).
	id string
	// key is the correlation_id the service gives the event's alerts: the
	// event_id when it is a UUID, else one derived from it ("" when the
	// line is not an event).
	key string
}

// loadMessages returns the lines to publish and, for generated events,
// the plan of what the built-in rules raise for them.
func loadMessages(cfg publishConfig) ([]message, *sample.Plan, error) {
	var data []byte
	var plan *sample.Plan
	if cfg.File != "" {
		b, err := os.ReadFile(cfg.File)
		if err != nil {
			return nil, nil, err
		}
		data = b
	} else {
		var buf bytes.Buffer
		p, err := sample.Generate(&buf, cfg.Sample)
		if err != nil {
			return nil, nil, fmt.Errorf("generate events: %w", err)
		}
		data, plan = buf.Bytes(), &p
	}
	var msgs []message
	for line := range bytes.Lines(data) {
		line = bytes.TrimRight(line, "\r\n")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		m := message{body: line}
		// Lines that are not events are published too: the service
		// dead-letters them, which is part of the load.
		if ev, err := event.Decode(line, event.MaxBodyBytes); err == nil {
			m.id, m.key = ev.ID, ev.Key
		}
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 {
		return nil, nil, fmt.Errorf("%s has no lines to publish", cfg.File)
	}
	return msgs, plan, nil
}

// report is what one publish run measured. Times are from the start of
// publishing.
type report struct {
	Queue, AlertQueue string
	KeepAlerts        bool
	Events            int
	Published         int
	Confirmed         int
	Nacked            int
	PublishTime       time.Duration
	ConfirmLatency    []time.Duration
	// NoConsumer is set when nothing consumed the event queue; Depth is
	// then what waited in it.
	NoConsumer bool
	Depth      int
	Drained    bool
	DrainTime  time.Duration
	// Alerts counts by rule id the alerts for events of this run; Planned
	// is what the built-in rules raise for generated events (nil for a
	// file).
	Alerts  map[string]int
	Planned map[string]int
	// Other counts alerts for events this run did not publish,
	// Duplicates alerts whose alert_id came before, Unreadable alerts that
	// are not JSON.
	Other, Duplicates, Unreadable int
	LastAlert                     time.Duration
	EndToEnd                      []time.Duration
}

// loadRun is one publish run: the events, when each was published, and
// the alerts counted so far.
type loadRun struct {
	cfg   publishConfig
	msgs  []message
	byKey map[string]int
	t0    time.Time
	// sentAt holds, per message, 1 + nanoseconds from t0 to its publish;
	// 0 until then. The alert consumer reads it while publishing goes on.
	sentAt []atomic.Int64

	mu         sync.Mutex
	alerts     map[string]int
	seen       map[string]bool
	other      int
	duplicates int
	unreadable int
	lastAlert  time.Duration
	endToEnd   []time.Duration
}

// publish runs the publish command. It returns what it measured, also when
// it gives up.
func publish(ctx context.Context, cfg publishConfig, log io.Writer) (*report, error) {
	rep := &report{Queue: cfg.Queue, AlertQueue: cfg.AlertQueue, KeepAlerts: cfg.KeepAlerts, Alerts: map[string]int{}}
	msgs, plan, err := loadMessages(cfg)
	if err != nil {
		return rep, err
	}
	rep.Events = len(msgs)
	if plan != nil {
		rep.Planned = plan.AlertCounts()
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	pubConn, err := dial(cfg.URL, "audit-loadgen publisher")
	if err != nil {
		return rep, err
	}
	defer pubConn.Close()
	// Alerts come on a connection of their own, so that a broker blocking
	// publishers does not stop them.
	alertConn, err := dial(cfg.URL, "audit-loadgen alerts")
	if err != nil {
		return rep, err
	}
	defer alertConn.Close()
	ch, err := pubConn.Channel()
	if err != nil {
		return rep, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	// As the service does: queues are used as they exist (a quorum queue,
	// a length limit), and only a missing one is declared, durable.
	for _, q := range []string{cfg.Queue, cfg.AlertQueue} {
		if err := ensureQueue(pubConn, q); err != nil {
			return rep, err
		}
	}

	l := &loadRun{
		cfg: cfg, msgs: msgs, byKey: make(map[string]int, len(msgs)), sentAt: make([]atomic.Int64, len(msgs)),
		alerts: map[string]int{}, seen: map[string]bool{},
	}
	for i, m := range msgs {
		if m.key != "" {
			l.byKey[m.key] = i
		}
	}
	how := "counting alerts from %q\n"
	if cfg.KeepAlerts {
		how = "counting alerts in %q and leaving them there\n"
	}
	fmt.Fprintf(log, "publishing %d events to %q on %s, "+how, len(msgs), cfg.Queue, redact(cfg.URL), cfg.AlertQueue)
	l.t0 = time.Now()
	stopAlerts, err := l.consumeAlerts(alertConn)
	if err != nil {
		return rep, err
	}
	err = l.publishAll(ctx, pubConn, rep)
	if err == nil {
		err = l.waitDrain(ctx, ch, rep)
	}
	if err == nil {
		from := rep.PublishTime
		if rep.Drained {
			from = rep.DrainTime
		}
		err = l.waitIdle(ctx, from)
	}
	stopAlerts()
	l.fill(rep)
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("gave up after -timeout %s: %w", cfg.Timeout, err)
	}
	return rep, err
}

// dial connects to url, with a deadline on connecting.
// ensureQueue declares q passively and, when it does not exist, declares
// it durable with no arguments. Each step has a channel of its own: a
// failed passive declare closes its channel.
func ensureQueue(conn *amqp.Connection, q string) error {
	for _, passive := range []bool{true, false} {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		if passive {
			_, err = ch.QueueDeclarePassive(q, true, false, false, false, nil)
		} else {
			_, err = ch.QueueDeclare(q, true, false, false, false, nil)
		}
		var ae *amqp.Error
		switch {
		case err == nil:
			return ch.Close()
		case passive && errors.As(err, &ae) && ae.Code == amqp.NotFound:
			continue
		}
		return fmt.Errorf("declare queue %q: %w", q, err)
	}
	return nil
}

func dial(rawURL, name string) (*amqp.Connection, error) {
	conn, err := amqp.DialConfig(rawURL, amqp.Config{
		Dial:       amqp.DefaultDial(10 * time.Second),
		Properties: amqp.Table{"connection_name": name},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redact(rawURL), err)
	}
	return conn, nil
}

// redact hides the password of an AMQP URL.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unreadable URL)"
	}
	return u.Redacted()
}

// publishAll publishes every message with publisher confirms, at most
// maxInFlight unconfirmed at a time, paced to cfg.Rate when set.
func (l *loadRun) publishAll(ctx context.Context, conn *amqp.Connection, rep *report) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open publishing channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("enable publisher confirms: %w", err)
	}
	type pending struct {
		confirm *amqp.DeferredConfirmation
		at      time.Time
	}
	// The waiter takes confirms in publishing order; the channel's
	// capacity bounds the publishes in flight.
	inflight := make(chan pending, maxInFlight)
	var latencies []time.Duration
	var confirmed, nacked int
	var wg sync.WaitGroup
	wg.Go(func() {
		for p := range inflight {
			select {
			case <-p.confirm.Done():
			case <-ctx.Done():
				return
			}
			latencies = append(latencies, time.Since(p.at))
			if p.confirm.Acked() {
				confirmed++
			} else {
				nacked++
			}
		}
	})
	published, err := l.publishEach(ctx, ch, func(p *amqp.DeferredConfirmation, at time.Time) error {
		select {
		case inflight <- pending{p, at}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(inflight)
	wg.Wait()
	rep.Published, rep.Confirmed, rep.Nacked, rep.ConfirmLatency = published, confirmed, nacked, latencies
	rep.PublishTime = time.Since(l.t0)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("wait for publisher confirms: %w", ctx.Err())
	}
	return err
}

// publishEach publishes the messages in order, hands each confirm to
// wait, and returns how many it published.
func (l *loadRun) publishEach(ctx context.Context, ch *amqp.Channel, wait func(*amqp.DeferredConfirmation, time.Time) error) (int, error) {
	for i, m := range l.msgs {
		if l.cfg.Rate > 0 {
			due := l.t0.Add(time.Duration(float64(i) / l.cfg.Rate * float64(time.Second)))
			if err := sleepUntil(ctx, due); err != nil {
				return i, err
			}
		}
		msg := amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			Timestamp:    time.Now(),
			Body:         m.body,
		}
		if len(m.id) <= 255 { // the longest AMQP short string
			msg.MessageId = m.id
		}
		// Stored before publishing: the alert may come back before
		// Publish returns.
		at := time.Now()
		l.sentAt[i].Store(int64(at.Sub(l.t0)) + 1)
		confirm, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", l.cfg.Queue, false, false, msg)
		if err != nil {
			return i, fmt.Errorf("publish event %d to %q: %w", i+1, l.cfg.Queue, err)
		}
		if err := wait(confirm, at); err != nil {
			return i + 1, err
		}
	}
	return len(l.msgs), nil
}

// consumeAlerts counts the alerts of the alert queue until the returned
// function is called. With KeepAlerts it never acknowledges them, with no
// prefetch limit, so that closing the channel returns every alert to the
// queue, in order.
func (l *loadRun) consumeAlerts(conn *amqp.Connection) (stop func(), err error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open alert channel: %w", err)
	}
	prefetch := 256
	if l.cfg.KeepAlerts {
		prefetch = 0
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := ch.Consume(l.cfg.AlertQueue, "", false, false, false, false, nil)
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("consume queue %q: %w", l.cfg.AlertQueue, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range deliveries {
			l.record(d.Body, time.Now())
			if l.cfg.KeepAlerts {
				continue
			}
			// An ack fails only once the channel is closing; the broker
			// then requeues the alert, and the loop ends.
			if d.Ack(false) != nil {
				return
			}
		}
	}()
	return func() {
		ch.Close()
		<-done
	}, nil
}

// record counts one alert.
func (l *loadRun) record(body []byte, at time.Time) {
	var a struct {
		AlertID       string `json:"alert_id"`
		CorrelationID string `json:"correlation_id"`
		AnalysisRule  struct {
			RuleID string `json:"rule_id"`
		} `json:"analysis_rule"`
	}
	err := json.Unmarshal(body, &a)
	since := at.Sub(l.t0)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastAlert = since
	switch {
	case err != nil:
		l.unreadable++
		return
	case a.AlertID != "" && l.seen[a.AlertID]:
		l.duplicates++
		return
	}
	l.seen[a.AlertID] = true
	var sent int64
	if i, ok := l.byKey[a.CorrelationID]; ok {
		sent = l.sentAt[i].Load()
	}
	if sent == 0 {
		l.other++
		return
	}
	l.alerts[a.AnalysisRule.RuleID]++
	l.endToEnd = append(l.endToEnd, since-time.Duration(sent-1))
}

// waitDrain polls the depth of the event queue until it is empty, or
// finds that nothing consumes it.
func (l *loadRun) waitDrain(ctx context.Context, ch *amqp.Channel, rep *report) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		q, err := ch.QueueDeclarePassive(l.cfg.Queue, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("read the depth of queue %q: %w", l.cfg.Queue, err)
		}
		switch {
		case q.Messages == 0:
			rep.Drained, rep.DrainTime = true, time.Since(l.t0)
			return nil
		case q.Consumers == 0:
			rep.NoConsumer, rep.Depth = true, q.Messages
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			rep.Depth = q.Messages
			return fmt.Errorf("wait for queue %q to drain: %w", l.cfg.Queue, ctx.Err())
		}
	}
}

// waitIdle returns once no alert has come for cfg.Idle, counting from
// from (a time after t0) at the earliest.
func (l *loadRun) waitIdle(ctx context.Context, from time.Duration) error {
	for {
		l.mu.Lock()
		quiet := max(l.lastAlert, from)
		l.mu.Unlock()
		left := l.cfg.Idle - (time.Since(l.t0) - quiet)
		if left <= 0 {
			return nil
		}
		if err := sleepUntil(ctx, time.Now().Add(left)); err != nil {
			return fmt.Errorf("wait for alerts: %w", err)
		}
	}
}

// fill copies the alert counts into the report; the consumer has stopped.
func (l *loadRun) fill(rep *report) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rep.Alerts = maps.Clone(l.alerts)
	rep.Other, rep.Duplicates, rep.Unreadable = l.other, l.duplicates, l.unreadable
	rep.LastAlert = l.lastAlert
	rep.EndToEnd = slices.Clone(l.endToEnd)
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// write prints the report for people.
func (r *report) write(w io.Writer) {
	if r.Published == 0 {
		return
	}
	secs := r.PublishTime.Seconds()
	fmt.Fprintf(w, "published %d of %d events to %q in %.2fs", r.Published, r.Events, r.Queue, secs)
	if secs > 0 {
		fmt.Fprintf(w, " (%.0f events/s)", float64(r.Published)/secs)
	}
	fmt.Fprintf(w, ": %d confirmed, %d nacked\n", r.Confirmed, r.Nacked)
	fmt.Fprintf(w, "  confirm latency     %s\n", percentiles(r.ConfirmLatency))
	switch {
	case r.Drained:
		fmt.Fprintf(w, "%q drained %.2fs after publishing started\n", r.Queue, r.DrainTime.Seconds())
	case r.NoConsumer:
		fmt.Fprintf(w, "%q has no consumer: %d messages wait in it (is the service running?)\n", r.Queue, r.Depth)
	default:
		fmt.Fprintf(w, "%q did not drain: %d messages still ready\n", r.Queue, r.Depth)
	}
	total := 0
	for _, n := range r.Alerts {
		total += n
	}
	fmt.Fprintf(w, "%d alerts for these events from %q", total, r.AlertQueue)
	if total > 0 {
		fmt.Fprintf(w, ", the last %.2fs after publishing started", r.LastAlert.Seconds())
	}
	if r.KeepAlerts {
		fmt.Fprintf(w, "; every alert is still in %q", r.AlertQueue)
	}
	fmt.Fprintln(w)
	ids := slices.Sorted(maps.Keys(r.Alerts))
	for id := range r.Planned {
		if _, ok := r.Alerts[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	short := false
	for _, id := range ids {
		line := fmt.Sprintf("  %-24s %6d", id, r.Alerts[id])
		if r.Planned != nil {
			line += fmt.Sprintf("   (%d planted for the built-in rules)", r.Planned[id])
			short = short || r.Alerts[id] < r.Planned[id]
		}
		fmt.Fprintln(w, line)
	}
	if short {
		// The service keeps windows in Redis by event time: a run over the
		// same times finds the earlier run's events and suppressions.
		fmt.Fprintln(w, "  fewer alerts than planted: if the service saw events of the same times before, publish with another -start")
	}
	if r.Other+r.Duplicates+r.Unreadable > 0 {
		fmt.Fprintf(w, "  also received: %d alerts for other events, %d duplicates, %d unreadable\n", r.Other, r.Duplicates, r.Unreadable)
	}
	fmt.Fprintf(w, "  end-to-end latency  %s\n", percentiles(r.EndToEnd))
}

// percentiles summarises latencies, nearest rank.
func percentiles(d []time.Duration) string {
	if len(d) == 0 {
		return "no samples"
	}
	s := slices.Sorted(slices.Values(d))
	at := func(p float64) string {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return fmt.Sprintf("%.2fms", float64(s[max(i, 0)])/float64(time.Millisecond))
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s  (n=%d)", at(0.50), at(0.90), at(0.99), at(1), len(s))
}
