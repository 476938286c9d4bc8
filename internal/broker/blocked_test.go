package broker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// The memory alarm is raised on a private node only: on the shared one it
// would block every other test's publishers.
func TestABlockedConnectionEndsTheConfirmWaitAtOnce(t *testing.T) {
	t.Parallel()
	node := testenv.StartRabbitMQ(t, testenv.RabbitMQOptions{})
	q := testenv.Name(t, "alerts")
	var mu sync.Mutex
	var blockedCalls []bool
	p := newTestPublisher(t, PublisherConfig{URLs: []string{node.URL()}, Queues: []string{q},
		ConfirmTimeout: 60 * time.Second,
		OnBlocked:      func(b bool, _ string) { mu.Lock(); blockedCalls = append(blockedCalls, b); mu.Unlock() }})
	stop := runPublisher(t, p)
	waitFor(t, 30*time.Second, "publisher ready", p.Connected)
	msgs := []Message{{Queue: q, MessageID: "m", Body: []byte("{}")}}
	if err := p.Publish(context.Background(), msgs); err != nil {
		t.Fatalf("Publish before the alarm: %v", err)
	}

	node.SetMemoryAlarm(true)
	alarmOn := true
	t.Cleanup(func() {
		if alarmOn {
			node.SetMemoryAlarm(false)
		}
	})
	// RabbitMQ blocks a connection at its first publish during an alarm:
	// that publish waits for confirms that cannot come until the block is
	// notified, then fails at once instead of at the 60s confirm timeout.
	var err error
	var took time.Duration
	for deadline := time.Now().Add(30 * time.Second); ; {
		begin := time.Now()
		err = p.Publish(context.Background(), msgs)
		took = time.Since(begin)
		if errors.Is(err, ErrBlocked) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // the alarm may take a moment to rise
	}
	t.Logf("Publish during the alarm returned after %s: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, ErrBlocked) {
		t.Fatalf("Publish during the alarm returned %v, want ErrBlocked", err)
	}
	if took > 30*time.Second {
		t.Errorf("Publish took %s, want it to end when the block is notified, well before the confirm timeout", took)
	}
	reason, blocked := p.Blocked()
	if !blocked || reason == "" {
		t.Errorf("Blocked() = %q, %v during the alarm", reason, blocked)
	}
	begin := time.Now()
	if err := p.Publish(context.Background(), msgs); !errors.Is(err, ErrBlocked) {
		t.Errorf("second Publish during the alarm returned %v, want ErrBlocked", err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("second Publish took %s, want it to fail at once", d)
	}

	node.SetMemoryAlarm(false)
	alarmOn = false
	waitFor(t, 30*time.Second, "unblocked", func() bool { _, b := p.Blocked(); return !b })
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := p.Publish(context.Background(), msgs)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish after the alarm: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Stopping while blocked does not wait for a clean close the broker
	// would never read.
	node.SetMemoryAlarm(true)
	alarmOn = true
	waitFor(t, 30*time.Second, "blocked again", func() bool {
		_ = p.Publish(context.Background(), msgs)
		_, b := p.Blocked()
		return b
	})
	begin = time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("publisher stopped %s after cancellation while blocked", time.Since(begin).Round(time.Millisecond))
	if d := time.Since(begin); d > 3*closeTimeout {
		t.Errorf("stopping while blocked took %s", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(blockedCalls) < 3 || !blockedCalls[0] || blockedCalls[1] {
		t.Errorf("OnBlocked calls %v, want blocked, unblocked, blocked...", blockedCalls)
	}
}

// A connection opened during an alarm is blocked only once it publishes: the
// publisher probes as it opens its channel, so it reports the block before
// it has anything of its own to publish (a start, or a reconnect, during
// the alarm).
func TestAPublisherOpenedDuringAnAlarmReportsItBeforePublishing(t *testing.T) {
	t.Parallel()
	node := testenv.StartRabbitMQ(t, testenv.RabbitMQOptions{})
	q := testenv.Name(t, "alerts")
	node.SetMemoryAlarm(true)
	alarmOn := true
	t.Cleanup(func() {
		if alarmOn {
			node.SetMemoryAlarm(false)
		}
	})
	p := newTestPublisher(t, PublisherConfig{URLs: []string{node.URL()}, Queues: []string{q}})
	stop := runPublisher(t, p)
	waitFor(t, 60*time.Second, "blocked without a publish of its own", func() bool { _, b := p.Blocked(); return b })

	node.SetMemoryAlarm(false)
	alarmOn = false
	waitFor(t, 30*time.Second, "unblocked", func() bool { _, b := p.Blocked(); return !b })
	msgs := []Message{{Queue: q, MessageID: "m", Body: []byte("{}")}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := p.Publish(context.Background(), msgs)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish after the alarm: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
