//go:build chaos

package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/sample"
	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// prefetch is the service's default RABBITMQ_PREFETCH: after a cut, at
// most this many deliveries it had handled come back unacknowledged.
const prefetch = 256

// brokerRestart: the application on the broker node stops with most of
// 50,000 events still queued, and starts again.
func (s *suite) brokerRestart(t *testing.T, f *figures) {
	node := s.node.In(t)
	redis := testenv.StartRedis(t)
	r := s.newRun(t, s.big, node, f)
	declare(t, r.url, r.queue, nil)
	r.publish(r.in.msgs)
	r.start(r.env(redisEnv(redis.Addr())))

	r.waitProcessed(len(r.in.msgs) / 20)
	stopped := true
	t.Cleanup(func() {
		if stopped {
			_, _ = node.Ctl("start_app")
		}
	})
	node.StopApp()
	atStop := r.processed()
	r.midRun(atStop, "stop_app")
	r.svc.waitHealth(503, time.Minute)
	time.Sleep(3 * time.Second) // the broker stays down a while
	node.StartApp()
	stopped = false
	f.recovery = r.svc.waitHealth(200, 2*time.Minute)
	f.note("stop_app after %.0f events processed; recovery is from start_app to /healthz 200", atStop)

	r.waitDrained(3 * time.Minute)
	r.finish(alertCheck{}, nil)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 1, f)
}

// closeConnections: the broker closes every connection five times while
// the service drains a backlog.
func (s *suite) closeConnections(t *testing.T, f *figures) {
	node := s.node.In(t)
	redis := testenv.StartRedis(t)
	r := s.newRun(t, s.medium, node, f)
	declare(t, r.url, r.queue, nil)
	r.publish(r.in.msgs)

	// The closes are timed on the node itself: rabbitmqctl takes a second
	// or more to start, in which the service would drain thousands of
	// events. The script starts first and waits for the service: each
	// close waits until it consumes again and has had a moment to work,
	// then closes every connection on the node, as rabbitmqctl
	// close_all_connections does.
	type evalResult struct {
		out string
		err error
	}
	started := filepath.Join(t.TempDir(), "eval-started")
	done := make(chan evalResult, 1)
	go func() {
		out, err := node.Ctl("eval", closeFiveTimes(r.queue, started, 250*time.Millisecond))
		done <- evalResult{out, err}
	}()
	waitFor(t, time.Minute, "the close script starts on the node", func() (bool, string) {
		select {
		case res := <-done:
			done <- res
			return true, ""
		default:
		}
		_, err := os.Stat(started)
		return err == nil, fmt.Sprint(err)
	})
	r.start(r.env(redisEnv(redis.Addr())))
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	closes := parseCloses(t, res.out)
	var recoveries []time.Duration
	for i, c := range closes {
		if c.ready == 0 {
			t.Errorf("close %d came after the drain: the input is too small for this machine", i+1)
		}
		recoveries = append(recoveries, c.reconsumed)
		f.note("close %d with %d events ready; consuming again %s later", i+1, c.ready, c.reconsumed)
	}
	f.recovery = slices.Max(recoveries)
	f.note("recovery is the longest of the five")

	r.waitDrained(3 * time.Minute)
	r.finish(alertCheck{}, nil)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 5, f)
}

// closeFiveTimes is an Erlang expression for rabbitmqctl eval: it writes
// the file started, then five times waits until queue has a consumer, lets
// it work for pause, and closes all connections of the node; it returns,
// for each close, the messages ready at that moment and the milliseconds
// until the queue had a consumer again.
func closeFiveTimes(queue, started string, pause time.Duration) string {
	return strings.NewReplacer("QUEUE", queue, "STARTED", started,
		"PAUSE", strconv.FormatInt(pause.Milliseconds(), 10)).Replace(`
ok = file:write_file("STARTED", <<"started">>),
Q = rabbit_misc:r(<<"/">>, queue, <<"QUEUE">>),
Info = fun(Key) -> {ok, Q1} = rabbit_amqqueue:lookup(Q), [{Key, N}] = rabbit_amqqueue:info(Q1, [Key]), N end,
Now = fun() -> erlang:monotonic_time(millisecond) end,
Consumed = fun W(Deadline) ->
	case Info(consumers) > 0 of
		true -> ok;
		false when Deadline < 0 -> error(no_consumer_within_a_minute);
		false -> timer:sleep(10), W(Deadline - 10)
	end
end,
Once = fun() ->
	Consumed(60000),
	timer:sleep(PAUSE),
	Ready = Info(messages_ready),
	rabbit_networking:close_all_connections("closed by test"),
	T0 = Now(),
	timer:sleep(10),
	Consumed(60000),
	{Ready, Now() - T0}
end,
[Once() || _ <- lists:seq(1, 5)].`)
}

// closeResult is one close of closeFiveTimes.
type closeResult struct {
	ready      int
	reconsumed time.Duration
}

func parseCloses(t *testing.T, out string) []closeResult {
	t.Helper()
	var closes []closeResult
	for _, m := range regexp.MustCompile(`\{(\d+),(\d+)\}`).FindAllStringSubmatch(out, -1) {
		ready, _ := strconv.Atoi(m[1])
		ms, _ := strconv.Atoi(m[2])
		closes = append(closes, closeResult{ready, time.Duration(ms) * time.Millisecond})
	}
	if len(closes) != 5 {
		t.Fatalf("rabbitmqctl eval did not report five closes: %s", out)
	}
	return closes
}

// redisRestart: Redis stops for 30 seconds while events wait, and comes
// back empty. The split between what the service handled before and
// after falls inside a burst of three failed logins, so that burst is
// what the reset loses, and nothing else.
func (s *suite) redisRestart(t *testing.T, f *figures) {
	node := s.node.In(t)
	redis := testenv.StartRedis(t)
	r := s.newRun(t, s.small, node, f)
	straddling, split := straddle(t, r.in)
	before, after := r.in.split(split)
	f.note("split at message %d, inside the burst of alert %s (messages %v)", split, straddling, r.in.alertEvents[straddling])
	declare(t, r.url, r.queue, nil)
	r.publish(before)
	r.start(r.env(redisEnv(redis.Addr())))
	r.waitDrained(2 * time.Minute)

	down := time.Now()
	cpu0 := r.svc.cpuTime()
	redis.Stop()
	r.publish(after)
	r.svc.waitHealth(503, 30*time.Second)
	consumed := r.svc.mustScrape()[mConsumed]
	time.Sleep(time.Until(down.Add(30 * time.Second)))
	cpu := r.svc.cpuTime() - cpu0
	outage := time.Since(down)
	m := r.svc.mustScrape()
	f.note("Redis down %s: the service used %s of CPU (%.1f%% of one core)", outage.Round(100*time.Millisecond),
		cpu, 100*cpu.Seconds()/outage.Seconds())
	// Idle means backing off, not spinning: a tenth of a core is far above
	// what retries every few seconds cost.
	if cpu > outage/10 {
		t.Errorf("the service used %s of CPU in %s while Redis was down: it does not back off", cpu, outage)
	}
	if m[mConsumed] != consumed {
		t.Errorf("consumed_total moved from %.0f to %.0f while Redis was down", consumed, m[mConsumed])
	}

	resets := m[mStateResets]
	restarted := time.Now()
	redis.Start()
	f.recovery = r.svc.waitHealth(200, time.Minute)
	waitFor(t, time.Minute, "the state reset is counted", func() (bool, string) {
		m, err := r.svc.scrape()
		return err == nil && m[mStateResets] > resets, fmt.Sprintf("%s %.0f", mStateResets, m[mStateResets])
	})
	f.note("state reset counted within %s of Redis coming back empty; recovery is from then to /healthz 200",
		time.Since(restarted).Round(100*time.Millisecond))
	r.waitDrained(2 * time.Minute)
	// The reset forgets the straddling burst's first two events, and the
	// matches suppressed before it: a group's next alert reports fewer.
	// Nothing else may change.
	r.finish(alertCheck{mayMiss: map[string]bool{straddling: true}, sameAsReplay: true, mayDiffer: []string{"suppressed_count"}}, nil)
	if r.f.missing == 0 {
		t.Errorf("alert %s of the burst straddling the reset arrived: its first two events were forgotten, so it cannot have", straddling)
	}
	f.note("the burst straddling the reset (alert %s) was missed; %d later alerts report fewer suppressed matches than replay's", straddling, f.differ)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 0, f)
}

// straddle picks a planted burst of exactly three failed logins near the
// middle of the input and returns its alert id and the index of its last
// event: split there, two events come before and one after.
func straddle(t *testing.T, in *input) (string, int) {
	t.Helper()
	best, split := "", -1
	for _, ids := range in.triples {
		var lines []int
		for _, id := range ids {
			lines = append(lines, in.eventLine[id])
		}
		last := slices.Max(lines)
		if split >= 0 && abs(last-len(in.msgs)/2) >= abs(split-len(in.msgs)/2) {
			continue
		}
		for alertID, events := range in.alertEvents {
			if slices.Equal(slices.Sorted(slices.Values(events)), slices.Sorted(slices.Values(lines))) {
				best, split = alertID, last
			}
		}
	}
	if best == "" {
		t.Fatal("no alert for a burst of three failed logins to split")
	}
	return best, split
}

func abs(n int) int { return max(n, -n) }

// memoryAlarm: the broker raises its memory alarm for 20 seconds; the
// service must say it is blocked, and carry on after.
func (s *suite) memoryAlarm(t *testing.T, f *figures) {
	node := s.node.In(t)
	redis := testenv.StartRedis(t)
	r := s.newRun(t, s.small, node, f)
	declare(t, r.url, r.queue, nil)
	r.publish(r.in.msgs)

	alarm := true
	node.SetMemoryAlarm(true)
	t.Cleanup(func() {
		if alarm {
			_, _ = node.Ctl("set_vm_memory_high_watermark", "0.4")
		}
	})
	raised := time.Now()
	r.start(r.env(redisEnv(redis.Addr())))
	// The broker blocks a connection when it publishes: the first batch
	// with an alert or a dead letter.
	var h healthStatus
	noticed := waitFor(t, time.Minute, "the service reports the broker blocking it", func() (bool, string) {
		m, err := r.svc.scrape()
		if err != nil {
			return false, err.Error()
		}
		h, err = r.svc.health()
		return err == nil && h.code == 503 && m[mBlocked] == 1, fmt.Sprintf("/healthz %v, %s %.0f", h, mBlocked, m[mBlocked])
	})
	f.note("/healthz during the alarm: %s (%s after the service started)", h, noticed.Round(time.Millisecond))
	if !strings.Contains(strings.ToLower(h.String()), "block") {
		t.Errorf("/healthz does not say the broker blocks publishing: %s", h)
	}
	for time.Since(raised) < 20*time.Second {
		h, err := r.svc.health()
		if err != nil || h.code != 503 {
			t.Errorf("/healthz during the memory alarm: %v (%v), want 503", h, err)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	node.SetMemoryAlarm(false)
	alarm = false
	f.recovery = r.svc.waitHealth(200, time.Minute)
	f.note("alarm held %s; recovery is from clearing it to /healthz 200", time.Since(raised).Round(100*time.Millisecond))

	r.waitDrained(2 * time.Minute)
	// A blocked batch is retried whole, in order: the alerts are replay's.
	r.finish(alertCheck{sameAsReplay: true}, nil)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 0, f)
}

// sigkill: the service is killed three times while it drains a backlog,
// and started again each time.
func (s *suite) sigkill(t *testing.T, f *figures) {
	node := s.node.In(t)
	redis := testenv.StartRedis(t)
	r := s.newRun(t, s.medium, node, f)
	declare(t, r.url, r.queue, nil)
	r.publish(r.in.msgs)
	env := r.env(redisEnv(redis.Addr()))
	r.start(env)

	startDepth := len(r.in.msgs)
	var settled []int // by the broker's count, per killed lifetime
	for i := 1; i <= 3; i++ {
		r.waitProcessed(len(r.in.msgs) / 10)
		r.svc.kill()
		left := idleDepth(t, r.url, r.queue)
		settled = append(settled, startDepth-left)
		startDepth = left
		restart := time.Now()
		r.svc.start()
		f.note("kill %d: %d deliveries settled by that lifetime, %d left; restarted in %s", i, settled[i-1], left,
			time.Since(restart).Round(time.Millisecond))
	}
	r.waitDrained(3 * time.Minute)
	r.finish(alertCheck{}, nil)

	lives := r.svc.ended()
	for i, n := range settled {
		// A killed lifetime's last scrape came before its end: it can only
		// be lower than what the broker saw it settle.
		if c := lives[i].metrics[mConsumed]; int(c) > n {
			t.Errorf("lifetime %d: consumed_total %.0f at its last scrape, but the broker saw %d settled", i+1, c, n)
		}
	}
	final := countsOf(lives[len(lives)-1].metrics)
	f.note("final lifetime: consumed_total %.0f for %d deliveries; processed %.0f + rejected %.0f",
		final.consumed, startDepth, final.processed, final.rejected)
	if int(final.consumed) != startDepth {
		t.Errorf("final lifetime: consumed_total %.0f, the broker held %d deliveries for it", final.consumed, startDepth)
	}
	if final.processed+final.rejected != final.consumed || final.deadLettered != final.rejected {
		t.Errorf("final lifetime: processed %.0f + rejected %.0f (dead-lettered %.0f) is not consumed %.0f",
			final.processed, final.rejected, final.deadLettered, final.consumed)
	}
}

// idleDepth waits until nothing consumes queue (a killed consumer's
// deliveries are back) and returns its depth.
func idleDepth(t *testing.T, url, queue string) int {
	t.Helper()
	var n int
	waitFor(t, time.Minute, "the killed consumer's deliveries return", func() (bool, string) {
		conn, err := dial(url)
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return false, err.Error()
		}
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			return false, err.Error()
		}
		n = q.Messages
		return q.Consumers == 0, fmt.Sprintf("%d consumers", q.Consumers)
	})
	return n
}

// alertQueueDeleted: the alert queue is deleted under the service while
// it publishes to it; the service must declare it again.
func (s *suite) alertQueueDeleted(t *testing.T, f *figures) {
	node := s.node.In(t)
	redis := testenv.StartRedis(t)
	r := s.newRun(t, s.small, node, f)
	declare(t, r.url, r.queue, nil)
	col := startCollector(t, r.url, r.alerts)
	r.publish(r.in.msgs)
	r.start(r.env(redisEnv(redis.Addr())))

	r.waitProcessed(r.in.events * 3 / 10)
	// Deleted only when empty, so that every alert it held was read: a
	// deletion takes the messages with it, and those would be lost by
	// the test, not by the service.
	var tried, deleted time.Time
	waitFor(t, time.Minute, "delete the alert queue while it is empty", func() (bool, string) {
		tried = time.Now()
		err := deleteIfEmpty(r.url, r.alerts)
		deleted = time.Now()
		return err == nil, fmt.Sprint(err)
	})
	before := col.count()
	f.recovery = waitFor(t, 2*time.Minute, "the service declares the alert queue again", func() (bool, string) {
		_, err := depth(r.url, r.alerts)
		return err == nil, fmt.Sprint(err)
	})
	f.note("alert queue deleted after %d alerts read; recovery is from the deletion to the queue declared again", before)

	r.waitDrained(2 * time.Minute)
	r.svc.stop()
	bodies := col.collected()
	// The deletion has a race of its own: alerts the broker routes to the
	// queue while it deletes it are confirmed, then gone with the queue,
	// like any message a deleted queue held. Only alerts the service saw
	// confirmed while the deletion ran may be missing.
	mayMiss := map[string]bool{}
	for id, at := range r.svc.alertsLogged() {
		if !at.Before(tried) && at.Before(deleted.Add(250*time.Millisecond)) {
			mayMiss[id] = true
		}
	}
	r.finish(alertCheck{sameAsReplay: true, mayMiss: mayMiss}, bodies)
	f.note("deletion took %s; %d alerts were confirmed while it ran, and %d alerts are missing",
		deleted.Sub(tried).Round(time.Millisecond), len(mayMiss), f.missing)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 0, f)
}

// deleteIfEmpty deletes queue only if it holds no message.
func deleteIfEmpty(url, queue string) error {
	conn, err := dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	_, err = ch.QueueDelete(queue, false, true, false)
	return err
}

// predeclared: the platform declared the event queue as a quorum queue
// and the alert queue with a length limit; the service is given the
// broker as the second of two URLs, the first one dead.
func (s *suite) predeclared(t *testing.T, f *figures) {
	node := s.node.In(t)
	redis := testenv.StartRedis(t)
	r := s.newRun(t, s.small, node, f)
	declare(t, r.url, r.queue, amqp.Table{"x-queue-type": "quorum"})
	declare(t, r.url, r.alerts, amqp.Table{"x-max-length": int64(100000)})
	r.publish(r.in.msgs)
	dead := "amqp://guest:guest@127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)) + "/"
	env := redisEnv(redis.Addr())
	env["RABBITMQ_URLS"] = dead + "," + r.url
	started := time.Now()
	r.start(r.env(env))
	r.svc.waitHealth(200, time.Minute)
	f.recovery = time.Since(started)
	f.note("RABBITMQ_URLS starts with a dead address; recovery is from start to /healthz 200")

	r.waitDrained(2 * time.Minute)
	r.finish(alertCheck{sameAsReplay: true}, nil)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 0, f)

	// The queues are still as the platform declared them.
	out, err := node.Ctl("list_queues", "name", "type", "arguments", "--formatter", "json")
	if err != nil {
		t.Fatal(err)
	}
	// Arguments are listed as [name, type, value] triples.
	var queues []struct {
		Name      string  `json:"name"`
		Type      string  `json:"type"`
		Arguments [][]any `json:"arguments"`
	}
	if err := json.Unmarshal([]byte(out), &queues); err != nil {
		t.Fatalf("list_queues: %v: %s", err, out)
	}
	found := 0
	for _, q := range queues {
		switch q.Name {
		case r.queue:
			found++
			if q.Type != "quorum" {
				t.Errorf("event queue is %s now", q.Type)
			}
		case r.alerts:
			found++
			if !slices.ContainsFunc(q.Arguments, func(a []any) bool { return len(a) > 0 && a[0] == "x-max-length" }) {
				t.Errorf("alert queue lost its x-max-length: %v", q.Arguments)
			}
		case r.dlq:
			found++
			f.note("dead-letter queue declared by the service: %s, arguments %v", q.Type, q.Arguments)
		}
	}
	if found != 3 {
		t.Errorf("list_queues shows %d of the scenario's 3 queues: %s", found, out)
	}
}

// clusterLeaderStopped: a 3-node cluster with a quorum event queue; the
// node that leads the queue dies while the service drains it.
func (s *suite) clusterLeaderStopped(t *testing.T, f *figures) {
	if s.cluster == nil {
		s.cluster = testenv.LaunchRabbitMQCluster(t, 3)
	}
	cluster := s.cluster.In(t)
	cluster.WaitReady()
	redis := testenv.StartRedis(t)
	r := s.newRun(t, s.medium, cluster.Nodes[0], f)
	declare(t, r.url, r.queue, amqp.Table{"x-queue-type": "quorum"})
	// Asked now: rabbitmqctl takes a second or more, in which the service
	// would drain the queue. Without a fault, the leader stays.
	leader, members, err := cluster.QuorumMembers(r.queue)
	if err != nil {
		t.Fatal(err)
	}
	f.note("quorum queue on %d members, leader %s", len(members), leader.Name)
	r.publish(r.in.msgs)
	env := redisEnv(redis.Addr())
	env["RABBITMQ_URLS"] = strings.Join(cluster.URLs(), ",")
	// The alert and dead-letter queues the service creates are replicated
	// too, so the leader's death takes none of them away.
	env["RABBITMQ_QUEUE_TYPE"] = "quorum"
	r.start(r.env(env))

	r.waitProcessed(r.in.events / 5)
	at := r.processed()
	leader.Kill()
	r.midRun(at, "the leader's death")
	for _, n := range cluster.Nodes {
		if n.Name != leader.Name {
			r.node, r.url = n, n.URL() // the suite talks to a node that runs
		}
	}
	f.recovery = waitFor(t, 3*time.Minute, "processing resumes after the leader died", func() (bool, string) {
		p := r.processed()
		return p > at || mustDepth(t, r.url, r.queue) == 0, fmt.Sprintf("processed_total %.0f", p)
	})
	f.note("leader %s killed after %.0f events processed; recovery is from the kill to processing again", leader.Name, at)
	if newLeader, _, err := cluster.QuorumMembers(r.queue); err == nil {
		f.note("new leader %s", newLeader.Name)
	}

	r.waitDrained(3 * time.Minute)
	r.finish(alertCheck{}, nil)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 1, f)
}

// sentinelFailover: Redis is a master and a replica watched by a Sentinel;
// the master is killed while the service works.
func (s *suite) sentinelFailover(t *testing.T, f *figures) {
	node := s.node.In(t)
	sentinel := testenv.StartRedisSentinel(t)
	r := s.newRun(t, s.small, node, f)
	declare(t, r.url, r.queue, nil)
	r.publish(r.in.msgs)
	r.start(r.env(map[string]string{
		"REDIS_SENTINEL_ADDRS":  strings.Join(sentinel.SentinelAddrs(), ","),
		"REDIS_SENTINEL_MASTER": sentinel.MasterName(),
	}))

	r.waitProcessed(r.in.events * 3 / 10)
	at := r.processed()
	killed := time.Now()
	old, promoted := sentinel.KillMaster(context.Background())
	r.midRun(at, "the master's death")
	failover := time.Since(killed)
	f.recovery = waitFor(t, 2*time.Minute, "processing resumes after the failover", func() (bool, string) {
		p := r.processed()
		return p > at || mustDepth(t, r.url, r.queue) == 0, fmt.Sprintf("processed_total %.0f", p)
	}) + failover
	f.note("master %s killed after %.0f events processed; %s promoted %s later; recovery is from the kill to processing again",
		old.Addr(), at, promoted.Addr(), failover.Round(time.Millisecond))

	r.waitDrained(2 * time.Minute)
	// Replication is asynchronous: writes the old master took in its last
	// moments may not have reached the replica. A burst with events
	// handled around the kill may then alert with another first event,
	// or not at all, and a group's next alert report fewer suppressed
	// matches; any other alert must be replay's. The events around the
	// kill are those the service handled in the few batches before and
	// after it (in queue order, hostile messages in between).
	lo, hi := int(at)-2*prefetch, int(at)+4*prefetch+len(r.in.hostile)
	near := func(lines []int) bool {
		return slices.ContainsFunc(lines, func(l int) bool { return l >= lo && l <= hi })
	}
	mayMiss := map[string]bool{}
	for id, lines := range r.in.alertEvents {
		if near(lines) {
			mayMiss[id] = true
		}
	}
	mayAdd := func(a map[string]any) bool { return near(eventLines(a, r.in)) }
	r.finish(alertCheck{mayMiss: mayMiss, mayAdd: mayAdd, sameAsReplay: true, mayDiffer: []string{"suppressed_count"}}, nil)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 0, f)
	f.note("%d alerts had events handled around the kill (messages %d to %d) and could have been lost; %d were",
		len(mayMiss), lo, hi, f.missing)
	f.note("state resets counted: %.0f", r.svc.ended()[0].metrics[mStateResets])
}

// eventLines returns the places in the input of the events an alert lists.
func eventLines(a map[string]any, in *input) []int {
	ids, _ := a["event_ids"].([]any)
	var lines []int
	for _, id := range ids {
		if s, ok := id.(string); ok {
			if l, ok := in.eventLine[s]; ok {
				lines = append(lines, l)
			}
		}
	}
	return lines
}

// redisCluster: Redis is a cluster of three masters; the alerts must be
// replay's, byte for byte, as with one Redis.
func (s *suite) redisCluster(t *testing.T, f *figures) {
	node := s.node.In(t)
	rc := testenv.StartRedisCluster(t, 3, 0)
	r := s.newRun(t, s.small, node, f)
	declare(t, r.url, r.queue, nil)
	r.publish(r.in.msgs)
	r.start(r.env(map[string]string{"REDIS_CLUSTER_ADDRS": strings.Join(rc.Addrs(), ",")}))
	r.waitDrained(2 * time.Minute)
	r.finish(alertCheck{sameAsReplay: true}, nil)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 0, f)

	var sizes []string
	for _, n := range rc.Nodes {
		size, err := n.Client().DBSize(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if size == 0 {
			t.Errorf("master %s holds no key: the state is not spread over the cluster", n.Addr())
		}
		sizes = append(sizes, strconv.FormatInt(size, 10))
	}
	f.note("keys per master: %s", strings.Join(sizes, ", "))
}

// largeEvents: 2,000 valid events of 900 KB each wait in the queue; the
// service drains them with its defaults, and its peak resident memory
// stays under 160 MiB.
func (s *suite) largeEvents(t *testing.T, f *figures) {
	const (
		events   = 2000
		size     = 900 << 10
		rssLimit = 160 << 20
	)
	node := s.node.In(t)
	redis := testenv.StartRedis(t)
	var lines bytes.Buffer
	// The generator adds its three malformed lines to the events.
	if _, err := sample.Generate(&lines, sample.Options{Seed: 11, Events: events + 3}); err != nil {
		t.Fatal(err)
	}
	in := buildInput(t, s.bin, "900KB", lines.Bytes(), false)
	if in.events != events {
		t.Fatalf("the input has %d events, want %d", in.events, events)
	}
	r := s.newRun(t, in, node, f)
	r.pad = padEvent(size)
	// 1.8 GB of persistent messages would take minutes to write to the
	// broker's disk; this scenario never restarts the broker.
	r.transient = true
	declare(t, r.url, r.queue, nil)
	r.publish(r.in.msgs)
	r.start(r.env(redisEnv(redis.Addr())))

	took := r.waitDrained(5 * time.Minute)
	peak := r.svc.peakRSS()
	f.note("peak RSS %.1f MiB (VmHWM) draining %d events of %d KB in about %s", float64(peak)/(1<<20), events, size>>10,
		took.Round(100*time.Millisecond))
	if peak >= rssLimit {
		t.Errorf("peak RSS %.1f MiB, the budget is %d MiB", float64(peak)/(1<<20), rssLimit>>20)
	}
	// The alerts carry the padded events; replay saw them without.
	r.finish(alertCheck{sameAsReplay: true, ignore: []string{"raw_event_data"}}, nil)
	checkCounts(t, countsOf(r.svc.ended()[0].metrics), len(r.in.msgs), r.in.events, len(r.in.hostile), 0, f)
}
