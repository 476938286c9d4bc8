package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/audit-platform/audit-log-analysis/internal/broker"
	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	"github.com/audit-platform/audit-log-analysis/internal/state"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

type fakePublisher struct {
	fail error
	got  [][]broker.Message
}

func (f *fakePublisher) Publish(_ context.Context, msgs []broker.Message) error {
	if f.fail != nil {
		return f.fail
	}
	f.got = append(f.got, msgs)
	return nil
}

func newTestPipeline(t *testing.T, pub *fakePublisher, deadLetter string) (*pipeline, *metrics) {
	t.Helper()
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	m := newMetrics(prometheus.NewRegistry())
	return &pipeline{
		engine:          rules.NewEngine(state.NewMemory(), set, rules.Options{}),
		publisher:       pub,
		sourceQueue:     "events",
		alertQueue:      "alerts",
		deadLetterQueue: deadLetter,
		metrics:         m,
		logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		now:             func() time.Time { return time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC) },
	}, m
}

func deliveries(bodies ...string) []broker.Delivery {
	out := make([]broker.Delivery, len(bodies))
	for i, b := range bodies {
		out[i] = broker.Delivery{Body: []byte(b)}
	}
	return out
}

const shadowEdit = `{"event_id":"e1","event_type":"file_modified","action_result":"MODIFIED","details":{"resource":"/etc/shadow"}}`

func TestPipelineDeadLettersBadInputWithItsReason(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{}
	p, m := newTestPipeline(t, pub, "events.dead-letter")
	batch := deliveries(shadowEdit, "nope", "[1]")
	batch[1].Headers = map[string]any{"producer": "edge-7"}
	disps, err := p.Handle(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if want := []broker.Disposition{broker.Ack, broker.Reject, broker.Reject}; !slices.Equal(disps, want) {
		t.Errorf("dispositions = %v, want %v (dead letters are published, then rejected without requeue)", disps, want)
	}
	if len(pub.got) != 1 || len(pub.got[0]) != 3 {
		t.Fatalf("published %v, want one batch of an alert and two dead letters", pub.got)
	}
	dead := pub.got[0][1:]
	for i, want := range []string{"invalid_json", "not_object"} {
		if dead[i].Queue != "events.dead-letter" || dead[i].Headers["x-rejection-reason"] != want || dead[i].MessageID == "" {
			t.Errorf("dead letter %d = %+v, want reason %s", i, dead[i], want)
		}
	}
	if dead[0].Headers["producer"] != "edge-7" {
		t.Errorf("dead letter lost the producer's headers: %v", dead[0].Headers)
	}
	if got := testutil.ToFloat64(m.rejected.WithLabelValues("invalid_json")); got != 1 {
		t.Errorf("rejected{invalid_json} = %v", got)
	}
}

func TestPipelineRejectsWithoutRequeueWhenDeadLetteringIsOff(t *testing.T) {
	t.Parallel()
	p, _ := newTestPipeline(t, &fakePublisher{}, "")
	disps, err := p.Handle(context.Background(), deliveries("nope", shadowEdit))
	if err != nil {
		t.Fatal(err)
	}
	if disps[0] != broker.Reject || disps[1] != broker.Ack {
		t.Errorf("dispositions = %v, want [reject ack]", disps)
	}
}

func TestPipelineFailsTheWholeBatchWhenPublishingFailsAndCountsOnce(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{fail: errors.New("broker: not connected")}
	p, m := newTestPipeline(t, pub, "dead")
	batch := deliveries(shadowEdit, "nope")
	if _, err := p.Handle(context.Background(), batch); err == nil {
		t.Fatal("Handle succeeded while publishing failed; the batch would be acked without its alert")
	}
	if got := testutil.ToFloat64(m.processed); got != 0 {
		t.Errorf("processed = %v after a failed batch, want 0", got)
	}
	pub.fail = nil
	if _, err := p.Handle(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.processed); got != 1 {
		t.Errorf("processed = %v after the retry, want 1", got)
	}
	if got := testutil.ToFloat64(m.publishFailures); got != 1 {
		t.Errorf("publish failures = %v, want 1", got)
	}
}

// poisonEngine refuses, as invalid, any batch holding the event "poison".
type poisonEngine struct{ inner Engine }

func (p poisonEngine) Process(ctx context.Context, evs []*event.Event, now time.Time) (rules.Output, error) {
	for _, ev := range evs {
		if ev.ID == "poison" {
			return rules.Output{}, fmt.Errorf("apply: %w", state.ErrInvalidUpdate)
		}
	}
	return p.inner.Process(ctx, evs, now)
}

func TestPipelineDeadLettersAnEventTheStoreRefusesAndProcessesTheRest(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{}
	p, m := newTestPipeline(t, pub, "dead")
	p.engine = poisonEngine{inner: p.engine}
	disps, err := p.Handle(context.Background(), deliveries(`{"event_id":"poison"}`, shadowEdit))
	if err != nil {
		t.Fatalf("Handle: %v (a permanent refusal must not fail the batch forever)", err)
	}
	if disps[0] != broker.Reject || disps[1] != broker.Ack {
		t.Errorf("dispositions = %v, want [reject ack]", disps)
	}
	if len(pub.got) != 1 || len(pub.got[0]) != 2 || pub.got[0][1].Headers["x-rejection-reason"] != "unprocessable" {
		t.Fatalf("published %+v, want the alert and one dead letter", pub.got)
	}
	if got := testutil.ToFloat64(m.rejected.WithLabelValues("unprocessable")); got != 1 {
		t.Errorf("rejected{unprocessable} = %v", got)
	}
}

func TestLogLimitAllowsABurstThenSaysHowManyItLeftOut(t *testing.T) {
	t.Parallel()
	var l logLimit
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for i := range logLimitLines {
		if _, ok := l.allow(now); !ok {
			t.Fatalf("line %d refused inside the burst", i)
		}
	}
	for range 5 {
		if _, ok := l.allow(now.Add(time.Second)); ok {
			t.Fatal("a line past the burst was allowed")
		}
	}
	dropped, ok := l.allow(now.Add(logLimitInterval))
	if !ok || dropped != 5 {
		t.Errorf("next interval: allowed %v, dropped %d; want true, 5", ok, dropped)
	}
}

// boomEngine panics on any batch holding the event "boom".
type boomEngine struct{ inner Engine }

func (b boomEngine) Process(ctx context.Context, evs []*event.Event, now time.Time) (rules.Output, error) {
	for _, ev := range evs {
		if ev.ID == "boom" {
			panic("index out of range")
		}
	}
	return b.inner.Process(ctx, evs, now)
}

func TestPipelineDeadLettersTheOneDeliveryWhoseHandlingPanics(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{}
	p, m := newTestPipeline(t, pub, "dead")
	p.engine = boomEngine{inner: p.engine}
	disps, err := p.Handle(context.Background(), deliveries(shadowEdit, `{"event_id":"boom"}`, "nope"))
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if want := []broker.Disposition{broker.Ack, broker.Reject, broker.Reject}; !slices.Equal(disps, want) {
		t.Fatalf("dispositions = %v, want %v", disps, want)
	}
	var reasons []any
	alerts := 0
	for _, batch := range pub.got {
		for _, msg := range batch {
			if msg.Queue == "dead" {
				reasons = append(reasons, msg.Headers["x-rejection-reason"])
			} else {
				alerts++
			}
		}
	}
	if alerts != 1 || len(reasons) != 2 {
		t.Fatalf("published %d alerts and dead letters %v; want the alert and two dead letters", alerts, reasons)
	}
	if got := testutil.ToFloat64(m.rejected.WithLabelValues("unprocessable")); got != 1 {
		t.Errorf("rejected{unprocessable} = %v", got)
	}
}

func TestPipelineSendsShadowAlertsOnlyToTheShadowQueue(t *testing.T) {
	t.Parallel()
	set, err := rules.Parse("shadow.yaml", []byte(`
rules:
  - id: LIVE
    severity: HIGH
    match: {event_type: file_modified}
  - id: TRIAL
    severity: HIGH
    mode: shadow
    match: {event_type: file_modified}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, shadowQueue := range []string{"shadow", ""} {
		t.Run("shadow queue "+fmt.Sprintf("%q", shadowQueue), func(t *testing.T) {
			t.Parallel()
			pub := &fakePublisher{}
			p, m := newTestPipeline(t, pub, "")
			p.engine = rules.NewEngine(state.NewMemory(), set, rules.Options{})
			p.shadowQueue = shadowQueue
			if _, err := p.Handle(context.Background(), deliveries(shadowEdit)); err != nil {
				t.Fatal(err)
			}
			var queues []string
			for _, batch := range pub.got {
				for _, msg := range batch {
					queues = append(queues, msg.Queue)
				}
			}
			want := []string{"alerts"}
			if shadowQueue != "" {
				want = append(want, shadowQueue)
			}
			if !slices.Equal(queues, want) {
				t.Errorf("published to %v, want %v", queues, want)
			}
			for _, c := range []struct {
				rule, mode string
			}{{"LIVE", "live"}, {"TRIAL", "shadow"}} {
				if got := testutil.ToFloat64(m.ruleAlerts.WithLabelValues(c.rule, c.mode)); got != 1 {
					t.Errorf("rule_alerts_total{rule_id=%q,mode=%q} = %v, want 1", c.rule, c.mode, got)
				}
			}
			if got := testutil.ToFloat64(m.alerts.WithLabelValues("TRIAL", "HIGH")); got != 0 {
				t.Errorf("the shadow rule's alert counts as a published alert: %v", got)
			}
		})
	}
}

func TestPipelineDeadLettersADeliveryPastTheDeliveryLimitUnread(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{}
	p, m := newTestPipeline(t, pub, "dead")
	p.maxDeliveries = 3
	p.engine = boomEngine{inner: p.engine}
	batch := deliveries(`{"event_id":"boom"}`, shadowEdit, shadowEdit)
	// The first was delivered three times before (this is its fourth
	// delivery): it is not decoded, so it cannot panic again. The second
	// is at its third delivery, within the limit.
	batch[0].DeliveryCount = 3
	batch[1].DeliveryCount = 2
	disps, err := p.Handle(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if want := []broker.Disposition{broker.Reject, broker.Ack, broker.Ack}; !slices.Equal(disps, want) {
		t.Fatalf("dispositions = %v, want %v", disps, want)
	}
	var dead []broker.Message
	for _, msg := range pub.got[0] {
		if msg.Queue == "dead" {
			dead = append(dead, msg)
		}
	}
	if len(dead) != 1 || dead[0].Headers["x-rejection-reason"] != "redelivery_limit" || string(dead[0].Body) != `{"event_id":"boom"}` {
		t.Fatalf("dead letters %+v, want the first delivery with reason redelivery_limit", dead)
	}
	if got := testutil.ToFloat64(m.rejected.WithLabelValues("redelivery_limit")); got != 1 {
		t.Errorf("rejected{redelivery_limit} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.rejected.WithLabelValues("unprocessable")); got != 0 {
		t.Errorf("rejected{unprocessable} = %v, want 0: the delivery must not be handled", got)
	}
}

func TestPipelineObservesEventLagFromTheEventsOwnTime(t *testing.T) {
	t.Parallel()
	p, m := newTestPipeline(t, &fakePublisher{}, "dead")
	now := p.now()
	at := func(d time.Duration) string {
		return fmt.Sprintf(`{"event_id":"x","event_type":"user_login","timestamp":%q}`, now.Add(-d).Format(time.RFC3339Nano))
	}
	if _, err := p.Handle(context.Background(), deliveries(at(90*time.Second), at(2*time.Second), `{"event_id":"no-time"}`)); err != nil {
		t.Fatal(err)
	}
	var out dto.Metric
	if err := m.eventLag.(prometheus.Metric).Write(&out); err != nil {
		t.Fatal(err)
	}
	h := out.GetHistogram()
	if h.GetSampleCount() != 2 || h.GetSampleSum() != 92 {
		t.Errorf("event lag: %d samples summing to %vs, want 2 summing to 92s (the event without a time left out)",
			h.GetSampleCount(), h.GetSampleSum())
	}
}
