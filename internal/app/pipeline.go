package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/broker"
	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	"github.com/audit-platform/audit-log-analysis/internal/state"
)

// Publisher sends messages and returns once the broker has confirmed every
// one of them.
type Publisher interface {
	Publish(ctx context.Context, msgs []broker.Message) error
}

// Engine runs the rules over a batch of events.
type Engine interface {
	Process(ctx context.Context, events []*event.Event, now time.Time) (rules.Output, error)
}

// pipeline handles one batch of deliveries: decode, run the rules, publish
// the alerts and the dead letters with confirms, then let the consumer
// acknowledge. Any failure of a dependency fails the whole batch, which the
// consumer holds and retries: nothing is acknowledged before everything it
// caused is confirmed.
type pipeline struct {
	engine          Engine
	publisher       Publisher
	sourceQueue     string // for deliveries that do not name their queue (tests)
	alertQueue      string
	deadLetterQueue string // "" rejects without requeue instead
	maxBodyBytes    int
	// maxDeliveries: a delivery the broker says it delivered more often
	// than this (quorum queues count) is dead-lettered unread. 0: no
	// limit.
	maxDeliveries int
	metrics       *metrics
	logger        *slog.Logger
	now           func() time.Time
	// onStoreFailure reports that the state store failed, so health turns
	// at once instead of at the next periodic ping.
	onStoreFailure func()
	// rejectLog keeps a flood of bad messages from flooding the log too;
	// the metric still counts every one.
	rejectLog logLimit
	// shadowQueue receives the alerts of rules in shadow mode; "" means
	// they are only counted and logged.
	shadowQueue string
}

// logLimit allows a burst of log lines per interval and counts the rest,
// so the next line allowed can say how many were left out.
type logLimit struct {
	mu      sync.Mutex
	start   time.Time
	lines   int
	dropped int
}

const (
	logLimitLines    = 20
	logLimitInterval = 10 * time.Second
)

// allow reports whether a line may be logged now and, if so, how many were
// left out since the last one.
func (l *logLimit) allow(now time.Time) (dropped int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= logLimitInterval {
		l.start, l.lines = now, 0
	}
	if l.lines >= logLimitLines {
		l.dropped++
		return 0, false
	}
	l.lines++
	dropped, l.dropped = l.dropped, 0
	return dropped, true
}

// isolate runs the events one at a time after the state store refused the
// batch as invalid, which no retry can change: the events it refuses are
// dead-lettered and the others processed, in order, so one event can never
// hold the queue.
func (p *pipeline) isolate(ctx context.Context, events []*event.Event, index []int, rejected []rejection, now time.Time) (rules.Output, []rejection, error) {
	var all rules.Output
	for i, ev := range events {
		out, err := p.engine.Process(ctx, []*event.Event{ev}, now)
		if errors.Is(err, state.ErrInvalidUpdate) {
			rejected = append(rejected, rejection{index: index[i], reason: event.ReasonUnprocessable, err: err})
			continue
		}
		if err != nil {
			return rules.Output{}, nil, err
		}
		all.Add(out)
	}
	return all, rejected, nil
}

// deadLetter is the copy of a rejected delivery for the dead-letter queue.
func (p *pipeline) deadLetter(d broker.Delivery, r rejection, now time.Time) broker.Message {
	// The producer's headers travel with the message; the rejection is
	// described in headers of its own.
	headers := make(map[string]any, len(d.Headers)+6)
	maps.Copy(headers, d.Headers)
	headers["x-rejection-reason"] = string(r.reason)
	headers["x-rejection-error"] = alert.Shorten(r.err.Error(), 1024)
	headers["x-original-queue"] = d.Queue
	if d.Queue == "" {
		headers["x-original-queue"] = p.sourceQueue
	}
	headers["x-rejected-at"] = now.UTC().Format(time.RFC3339Nano)
	if !d.Timestamp.IsZero() {
		headers["x-original-timestamp"] = d.Timestamp.UTC().Format(time.RFC3339)
	}
	id := d.MessageID
	if id != "" {
		headers["x-original-message-id"] = id
	} else {
		// The publisher recognises returns by id; a body-derived id keeps
		// a retried dead letter the same message.
		id = uuid.NewSHA1(event.Namespace, append([]byte("dead-letter\x00"), d.Body...)).String()
	}
	return broker.Message{
		Queue:       p.deadLetterQueue,
		Body:        d.Body,
		MessageID:   id,
		ContentType: d.ContentType,
		Headers:     headers,
		Timestamp:   now,
	}
}

// rejection is a delivery that can never be processed.
type rejection struct {
	index  int
	reason event.Reason
	err    error
}

// Handle handles a batch. A panic while handling it (a bug: no input should
// cause one) must not become a crash loop that blinds detection: the batch
// is handled again one delivery at a time, and a delivery that panics alone
// is dead-lettered.
func (p *pipeline) Handle(ctx context.Context, batch []broker.Delivery) ([]broker.Disposition, error) {
	disps, err, crash := p.safeHandle(ctx, batch)
	if crash == nil {
		return disps, err
	}
	p.logger.Error("batch handling panicked; handling its deliveries one at a time", "error", crash, "size", len(batch))
	disps = make([]broker.Disposition, len(batch))
	for i := range batch {
		one, err, crash := p.safeHandle(ctx, batch[i:i+1])
		switch {
		case crash != nil:
			if err := p.rejectAlone(ctx, batch[i], crash); err != nil {
				return nil, err
			}
			disps[i] = broker.Reject
		case err != nil:
			return nil, err
		default:
			disps[i] = one[0]
		}
	}
	return disps, nil
}

// safeHandle runs handle, turning a panic into crash.
func (p *pipeline) safeHandle(ctx context.Context, batch []broker.Delivery) (disps []broker.Disposition, err error, crash error) {
	defer func() {
		if r := recover(); r != nil {
			disps, err, crash = nil, nil, fmt.Errorf("internal error: %v\n%s", r, debug.Stack())
		}
	}()
	disps, err = p.handle(ctx, batch)
	return disps, err, nil
}

// rejectAlone dead-letters one delivery whose handling panicked.
func (p *pipeline) rejectAlone(ctx context.Context, d broker.Delivery, crash error) error {
	r := rejection{reason: event.ReasonUnprocessable, err: crash}
	if p.deadLetterQueue != "" {
		if err := p.publisher.Publish(ctx, []broker.Message{p.deadLetter(d, r, p.now())}); err != nil {
			p.metrics.publishFailures.Inc()
			return fmt.Errorf("publish a dead letter: %w", err)
		}
		p.metrics.deadLettered.Inc()
	}
	p.metrics.rejected.WithLabelValues(string(r.reason)).Inc()
	p.logger.Error("message rejected: its handling panicked", "message_id", d.MessageID, "bytes", len(d.Body),
		"dead_letter_queue", p.deadLetterQueue, "error", alert.Shorten(crash.Error(), 4096))
	return nil
}

// handle runs a batch through its steps: decode, rules, publish what they
// produced, count and log. Nothing is counted before the publish is
// confirmed, so a retried batch is counted once.
func (p *pipeline) handle(ctx context.Context, batch []broker.Delivery) ([]broker.Disposition, error) {
	start := p.now()
	dec := p.decode(batch)
	out, err := p.runRules(ctx, &dec, start)
	if err != nil {
		return nil, err
	}
	msgs, disps, err := p.messages(batch, dec.rejected, out, start)
	if err != nil {
		return nil, err
	}
	if len(msgs) > 0 {
		if err := p.publisher.Publish(ctx, msgs); err != nil {
			p.metrics.publishFailures.Inc()
			p.metrics.batchRetries.WithLabelValues("publish").Inc()
			return nil, fmt.Errorf("publish %d messages: %w", len(msgs), err)
		}
	}
	p.record(batch, dec, out, start)
	return disps, nil
}

// decoded is a batch after decoding: its events, where each came from, and
// the deliveries that can never be processed.
type decoded struct {
	events   []*event.Event
	index    []int // events[i] is batch[index[i]]
	rejected []rejection
}

// decode turns the batch's bodies into events. A delivery past the
// delivery limit is rejected unread: its earlier deliveries ended without
// a settlement, which is what a message that kills the process looks like.
func (p *pipeline) decode(batch []broker.Delivery) decoded {
	dec := decoded{events: make([]*event.Event, 0, len(batch)), index: make([]int, 0, len(batch))}
	for i, d := range batch {
		if p.maxDeliveries > 0 && d.DeliveryCount >= int64(p.maxDeliveries) {
			dec.rejected = append(dec.rejected, rejection{index: i, reason: event.ReasonRedeliveryLimit,
				err: fmt.Errorf("delivered %d times without being settled, more than RABBITMQ_MAX_DELIVERIES (%d): its handling may be what stops the service",
					d.DeliveryCount+1, p.maxDeliveries)})
			continue
		}
		ev, err := event.Decode(d.Body, p.maxBodyBytes)
		if err != nil {
			var de *event.DecodeError
			reason := event.ReasonInvalidJSON
			if errors.As(err, &de) {
				reason = de.Reason
			}
			dec.rejected = append(dec.rejected, rejection{index: i, reason: reason, err: err})
			continue
		}
		dec.events = append(dec.events, ev)
		dec.index = append(dec.index, i)
	}
	return dec
}

// runRules runs the engine over the decoded events. An event the state
// store refuses as invalid joins dec.rejected; any other store failure
// fails the batch.
func (p *pipeline) runRules(ctx context.Context, dec *decoded, now time.Time) (rules.Output, error) {
	out, err := p.engine.Process(ctx, dec.events, now)
	if errors.Is(err, state.ErrInvalidUpdate) {
		out, dec.rejected, err = p.isolate(ctx, dec.events, dec.index, dec.rejected, now)
	}
	if err != nil {
		p.metrics.batchRetries.WithLabelValues("state_store").Inc()
		if p.onStoreFailure != nil {
			p.onStoreFailure()
		}
		return rules.Output{}, fmt.Errorf("run rules: %w", err)
	}
	return out, nil
}

// messages builds the alerts and dead letters to publish, and the
// batch's dispositions.
func (p *pipeline) messages(batch []broker.Delivery, rejected []rejection, out rules.Output, now time.Time) ([]broker.Message, []broker.Disposition, error) {
	disps := make([]broker.Disposition, len(batch))
	msgs := make([]broker.Message, 0, len(out.Alerts)+len(rejected))
	for _, f := range out.Alerts {
		queue := p.alertQueue
		if f.Rule.Mode == rules.Shadow {
			// A rule on trial never pages anyone.
			if queue = p.shadowQueue; queue == "" {
				continue
			}
		}
		body, err := alert.Marshal(f.Alert)
		if err != nil {
			return nil, nil, err
		}
		msgs = append(msgs, broker.Message{
			Queue:       queue,
			Body:        body,
			MessageID:   f.Alert.AlertID,
			ContentType: "application/json",
			Timestamp:   now,
		})
	}
	for _, r := range rejected {
		// Rejected without requeue either way: after its copy in the
		// dead-letter queue is confirmed, or alone when there is none
		// (then only a dead-letter policy on the queue keeps it).
		disps[r.index] = broker.Reject
		if p.deadLetterQueue != "" {
			msgs = append(msgs, p.deadLetter(batch[r.index], r, now))
		}
	}
	return msgs, disps, nil
}

// record counts and logs a handled batch.
func (p *pipeline) record(batch []broker.Delivery, dec decoded, out rules.Output, start time.Time) {
	end := p.now()
	p.metrics.processed.Add(float64(len(dec.events)))
	p.metrics.batchSize.Observe(float64(len(batch)))
	p.metrics.clamped.Add(float64(out.Clamped))
	p.metrics.badTimestamps.Add(float64(out.InvalidTimestamps))
	p.metrics.duplicates.Add(float64(out.Duplicates))
	for id, n := range out.Suppressed {
		p.metrics.suppressed.WithLabelValues(id).Add(float64(n))
	}
	for id, n := range out.Evicted {
		p.metrics.newValueEvictions.WithLabelValues(id).Add(float64(n))
	}
	for _, ev := range dec.events {
		if !ev.Timestamp.IsZero() {
			p.metrics.eventLag.Observe(max(end.Sub(ev.Timestamp).Seconds(), 0))
		}
	}
	p.recordAlerts(out.Alerts, end)
	p.recordRejections(batch, dec.rejected, end)
	p.metrics.duration.Observe(end.Sub(start).Seconds())
}

func (p *pipeline) recordAlerts(fired []rules.Fired, now time.Time) {
	live := 0
	for _, f := range fired {
		a := f.Alert
		p.metrics.ruleAlerts.WithLabelValues(f.Rule.ID(), string(f.Rule.Mode)).Inc()
		msg := "alert published"
		if f.Rule.Mode == rules.Shadow {
			msg = "shadow alert"
		} else {
			live++
			p.metrics.alerts.WithLabelValues(f.Rule.Category, a.Severity).Inc()
		}
		p.logger.Info(msg,
			"alert_id", a.AlertID, "rule_id", a.AnalysisRule.RuleID, "mode", string(f.Rule.Mode), "severity", a.Severity,
			"actor_id", a.TriggeredBy.ActorID, "server_hostname", a.ImpactedResource.ServerHostname,
			"correlation_id", a.CorrelationID)
	}
	if live > 0 {
		p.metrics.lastAlertUnixSec.Set(float64(now.Unix()))
	}
}

func (p *pipeline) recordRejections(batch []broker.Delivery, rejected []rejection, now time.Time) {
	for _, r := range rejected {
		d := batch[r.index]
		p.metrics.rejected.WithLabelValues(string(r.reason)).Inc()
		if p.deadLetterQueue != "" {
			p.metrics.deadLettered.Inc()
		}
		if n, ok := p.rejectLog.allow(now); ok {
			p.logger.Warn("message rejected",
				"reason", string(r.reason), "error", alert.Shorten(r.err.Error(), 256),
				"message_id", d.MessageID, "bytes", len(d.Body), "dead_letter_queue", p.deadLetterQueue,
				"not_logged_before", n)
		}
	}
}
