package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/sample"
	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// queues returns an event and an alert queue of the test's own, declared,
// and deleted when the test ends, with a channel to reach them.
func queues(t *testing.T, url string) (events, alerts string, ch *amqp.Channel) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	ch, err = conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	events, alerts = testenv.Name(t, "loadgen_events"), testenv.Name(t, "loadgen_alerts")
	t.Cleanup(func() {
		defer conn.Close()
		// A fresh channel: the test may have broken the first one.
		c, err := conn.Channel()
		if err != nil {
			t.Errorf("delete test queues: %v", err)
			return
		}
		for _, q := range []string{events, alerts} {
			if _, err := c.QueueDelete(q, false, false, false); err != nil {
				t.Errorf("delete queue %s: %v", q, err)
			}
		}
	})
	for _, q := range []string{events, alerts} {
		if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	return events, alerts, ch
}

// alertBody is the part of an alert the load tool reads.
func alertBody(ruleID, correlationID string) amqp.Publishing {
	b, _ := json.Marshal(map[string]any{ // maps of strings always encode
		"alert_id":       uuid.NewString(),
		"correlation_id": correlationID,
		"analysis_rule":  map[string]string{"rule_id": ruleID},
	})
	return amqp.Publishing{ContentType: "application/json", Body: b}
}

// fakeService stands in for the detection service: it consumes the event
// queue and raises a TEST-FILE alert for every file_modified event, the
// first one twice.
type fakeService struct {
	mu       sync.Mutex
	events   int
	badProps []string
	raised   int
}

func (f *fakeService) run(t *testing.T, ch *amqp.Channel, events, alerts string) (stop func()) {
	t.Helper()
	if err := ch.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(events, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range deliveries {
			f.handle(t, ch, alerts, d)
			if d.Ack(false) != nil {
				return
			}
		}
	}()
	return func() {
		ch.Close()
		<-done
	}
}

func (f *fakeService) handle(t *testing.T, ch *amqp.Channel, alerts string, d amqp.Delivery) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events++
	ev, err := event.Decode(d.Body, event.MaxBodyBytes)
	if d.DeliveryMode != amqp.Persistent || d.ContentType != "application/json" || (err == nil && d.MessageId != ev.ID) {
		f.badProps = append(f.badProps, d.MessageId)
	}
	if err != nil || ev.EventType != "file_modified" {
		return
	}
	times := 1
	if f.raised == 0 {
		times = 2
	}
	msg := alertBody("TEST-FILE", ev.Key)
	for range times {
		if err := ch.PublishWithContext(context.Background(), "", alerts, false, false, msg); err != nil {
			t.Errorf("raise alert: %v", err)
			return
		}
	}
	f.raised++
}

func TestPublishCountsTheAlertsRaisedForItsEvents(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	events, alerts, ch := queues(t, url)
	// An alert already waiting belongs to no event of this run.
	if err := ch.PublishWithContext(context.Background(), "", alerts, false, false, alertBody("TEST-FILE", uuid.NewString())); err != nil {
		t.Fatal(err)
	}
	svcConn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer svcConn.Close()
	svcCh, err := svcConn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var svc fakeService
	stop := svc.run(t, svcCh, events, alerts)

	opts := sample.Options{Seed: 9, Events: 300}
	cfg := publishConfig{URL: url, Queue: events, AlertQueue: alerts, Sample: opts, Timeout: time.Minute, Idle: time.Second}
	rep, err := publish(context.Background(), cfg, &bytes.Buffer{})
	stop()
	if err != nil {
		t.Fatalf("publish: %v", err)
	}

	var buf bytes.Buffer
	if _, err := sample.Generate(&buf, opts); err != nil {
		t.Fatal(err)
	}
	modified := 0
	for line := range bytes.Lines(buf.Bytes()) {
		if ev, err := event.Decode(line, event.MaxBodyBytes); err == nil && ev.EventType == "file_modified" {
			modified++
		}
	}
	if rep.Published != 300 || rep.Confirmed != 300 || rep.Nacked != 0 || len(rep.ConfirmLatency) != 300 {
		t.Errorf("published %d, confirmed %d, nacked %d, %d confirm latencies; want 300 each and no nack",
			rep.Published, rep.Confirmed, rep.Nacked, len(rep.ConfirmLatency))
	}
	if !rep.Drained || rep.NoConsumer {
		t.Errorf("drained %v, no consumer %v; want a drained queue", rep.Drained, rep.NoConsumer)
	}
	if want := map[string]int{"TEST-FILE": modified}; !maps.Equal(rep.Alerts, want) {
		t.Errorf("alerts %v, want %v", rep.Alerts, want)
	}
	if rep.Other != 1 || rep.Duplicates != 1 || rep.Unreadable != 0 {
		t.Errorf("other %d, duplicates %d, unreadable %d; want 1, 1, 0", rep.Other, rep.Duplicates, rep.Unreadable)
	}
	if len(rep.EndToEnd) != modified {
		t.Errorf("%d end-to-end latencies, want %d", len(rep.EndToEnd), modified)
	}
	for _, d := range rep.EndToEnd {
		if d <= 0 || d > time.Minute {
			t.Errorf("end-to-end latency %s", d)
		}
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if svc.events != 300 || len(svc.badProps) > 0 {
		t.Errorf("the service got %d events, %d with wrong properties (%v)", svc.events, len(svc.badProps), svc.badProps)
	}

	var out bytes.Buffer
	rep.write(&out)
	for _, want := range []string{"published 300 of 300 events", "300 confirmed, 0 nacked", "drained", "TEST-FILE", "end-to-end latency  p50"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestPublishSendsAFileAsItIsAndSaysWhenNothingConsumes(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	events, alerts, ch := queues(t, url)
	lines := []string{
		`{"event_id": "evt-1", "event_type": "user_login", "user_id": "bob"}`,
		`{"event_type": "user_logout", "user_id": "bob"}`,
		`not json`,
	}
	file := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"audit-loadgen", "publish", "-url", url, "-queue", events, "-alerts", alerts,
		"-file", file, "-idle", "200ms", "-timeout", "30s"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "has no consumer: 3 messages wait in it") {
		t.Errorf("report does not say nothing consumes the queue:\n%s", stdout.String())
	}
	for i, want := range lines {
		d, ok, err := ch.Get(events, true)
		if err != nil || !ok {
			t.Fatalf("message %d: ok %v, %v", i+1, ok, err)
		}
		wantID := map[int]string{0: "evt-1"}[i]
		if string(d.Body) != want || d.MessageId != wantID || d.DeliveryMode != amqp.Persistent {
			t.Errorf("message %d: body %s, id %q, delivery mode %d; want %s, id %q, persistent", i+1, d.Body, d.MessageId, d.DeliveryMode, want, wantID)
		}
	}
}

func TestPublishWithKeepAlertsLeavesEveryAlertInTheQueue(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	events, alerts, ch := queues(t, url)
	svcConn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer svcConn.Close()
	svcCh, err := svcConn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var svc fakeService
	stop := svc.run(t, svcCh, events, alerts)
	cfg := publishConfig{URL: url, Queue: events, AlertQueue: alerts, Sample: sample.Options{Seed: 3, Events: 300},
		Timeout: time.Minute, Idle: time.Second, KeepAlerts: true}
	rep, err := publish(context.Background(), cfg, &bytes.Buffer{})
	stop()
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	counted := rep.Alerts["TEST-FILE"] + rep.Duplicates
	if counted == 0 {
		t.Fatal("no alert counted")
	}
	// Every alert the service raised is counted and still waits in the
	// queue (they come back once the tool's channel has closed).
	deadline := time.Now().Add(15 * time.Second)
	for {
		q, err := ch.QueueDeclarePassive(alerts, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if q.Messages == counted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alert queue holds %d messages, want the %d counted", q.Messages, counted)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var out bytes.Buffer
	rep.write(&out)
	if !strings.Contains(out.String(), "every alert is still in") {
		t.Errorf("report does not say the alerts were left:\n%s", out.String())
	}
}
