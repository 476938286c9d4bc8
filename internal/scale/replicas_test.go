package scale

import (
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// Three replicas on one queue and one Redis, one of them killed mid-run,
// raise the alerts one replica raises, and replay raises, from the same
// events: the same ids, and no burst under two.
func TestThreeReplicasRaiseTheAlertsOfOne(t *testing.T) {
	url, redisAddr := testenv.RabbitMQURL(t), testenv.RedisAddr(t)
	bin := buildService(t)
	in := newInput(t, bin, 3, 40)
	b := dialBroker(t, url)
	host, port, _ := strings.Cut(redisAddr, ":")

	run := func(t *testing.T, replicas int, kill bool) map[string][]string {
		qs := b.queues("events", 1)
		alerts := b.queues("alerts", 1)[0]
		env := map[string]string{
			"RABBITMQ_URL": url, "RABBITMQ_QUEUE": qs[0], "RABBITMQ_ALERT_QUEUE": alerts,
			"REDIS_HOST": host, "REDIS_PORT": port, "REDIS_KEY_PREFIX": redisPrefix(t, redisAddr),
		}
		// A backlog, as after an outage: the replicas start on it
		// together.
		b.declare(qs...)
		b.publish("", qs[0], in.msgs)
		start := time.Now()
		rs := startReplicas(t, bin, replicas, env)
		if kill {
			// The first replica to have settled some events is killed,
			// with most still queued: its unsettled deliveries go to
			// the others.
			victim := -1
			deadline := time.Now().Add(30 * time.Second)
			for victim < 0 && time.Now().Before(deadline) {
				for i, r := range rs {
					if r.consumed() >= 100 {
						victim = i
						break
					}
				}
				if victim < 0 {
					// Scraping without a pause would take CPU from the
					// replicas it waits on.
					time.Sleep(5 * time.Millisecond)
				}
			}
			if victim < 0 {
				t.Fatal("no replica settled 100 events within 30s")
			}
			rs[victim].kill()
			left := b.ready(qs...)
			t.Logf("killed %s; %d of %d messages still queued", rs[victim].name, left, len(in.msgs))
			if left == 0 {
				t.Errorf("the kill came after the drain: the input is too small for this machine")
			}
			rs = append(rs[:victim], rs[victim+1:]...)
		}
		got := finish(t, b, bin, env, rs, qs, alerts)
		t.Logf("%d replicas: %d messages handled and %d alerts in %s", replicas, len(in.msgs), len(got),
			time.Since(start).Round(time.Millisecond))
		return got
	}

	t.Logf("%d messages (%d repeated events), %d planted bursts, replay raised %d alerts",
		len(in.msgs), len(in.msgs)-len(uniqueBodies(in.msgs)), len(in.bursts), len(in.expected))
	checkAlerts(t, "one replica", in, run(t, 1, false))
	checkAlerts(t, "three replicas, one killed", in, run(t, 3, true))
}

func uniqueBodies(msgs []message) map[string]bool {
	out := map[string]bool{}
	for _, m := range msgs {
		out[string(m.body)] = true
	}
	return out
}
