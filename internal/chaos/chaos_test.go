//go:build chaos

package chaos

import (
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// suite is what the scenarios share: the service binary, a private broker
// node reused by scenarios that leave it as they found it, a 3-node
// cluster, and the inputs with their expected outcome.
type suite struct {
	bin     string
	node    *testenv.RabbitMQ
	cluster *testenv.RabbitMQCluster
	// big is 50,000 events, medium 20,000 and small 10,000, with their
	// hostile messages (see newInput).
	big, medium, small *input

	mu      sync.Mutex
	results []*figures
}

func TestChaos(t *testing.T) {
	start := time.Now()
	s := &suite{bin: buildService(t)}
	// The servers boot side by side while the inputs are made; the
	// cluster only when its scenario is to run.
	s.node = testenv.LaunchRabbitMQ(t, testenv.RabbitMQOptions{})
	if selected(clusterScenario) {
		s.cluster = testenv.LaunchRabbitMQCluster(t, 3)
	}
	s.big = newInput(t, s.bin, "50k", 100)
	s.medium = newInput(t, s.bin, "20k", 40)
	s.small = newInput(t, s.bin, "10k", 20)
	t.Logf("inputs: %s; %s; %s", s.big.describe(), s.medium.describe(), s.small.describe())
	s.node.WaitReady()
	t.Logf("private broker node ready after %s", time.Since(start).Round(100*time.Millisecond))

	s.scenario(t, "01 broker stop_app and start_app with 50,000 events queued", s.brokerRestart)
	s.scenario(t, "02 close_all_connections five times during a drain", s.closeConnections)
	s.scenario(t, "03 Redis stopped for 30s then started empty", s.redisRestart)
	s.scenario(t, "04 memory alarm for 20s", s.memoryAlarm)
	s.scenario(t, "05 SIGKILL three times", s.sigkill)
	s.scenario(t, "06 alert queue deleted mid-run", s.alertQueueDeleted)
	s.scenario(t, "07 quorum event queue and alert queue with x-max-length, first URL dead", s.predeclared)
	s.scenario(t, clusterScenario, s.clusterLeaderStopped)
	s.scenario(t, "09 Redis Sentinel, master killed", s.sentinelFailover)
	s.scenario(t, "10 Redis Cluster of 3 masters", s.redisCluster)
	s.scenario(t, "11 2,000 events of 900 KB within the memory budget", s.largeEvents)

	var b strings.Builder
	fmt.Fprintf(&b, "chaos suite: %d scenarios in %s\n", len(s.results), time.Since(start).Round(time.Second))
	for _, f := range s.results {
		b.WriteString(f.String())
	}
	t.Log("\n" + b.String())
}

// clusterScenario is the one scenario that needs the cluster.
const clusterScenario = "08 3-node cluster, quorum queue leader stopped"

// selected reports whether -test.run lets the scenario called name run
// (a pattern it cannot read counts as yes).
func selected(name string) bool {
	f := flag.Lookup("test.run")
	if f == nil {
		return true
	}
	parts := strings.SplitN(f.Value.String(), "/", 3)
	if len(parts) < 2 {
		return true
	}
	re, err := regexp.Compile(parts[1])
	return err != nil || re.MatchString(strings.ReplaceAll(name, " ", "_"))
}

// scenario runs fn as a subtest and records its figures.
func (s *suite) scenario(t *testing.T, name string, fn func(t *testing.T, f *figures)) {
	t.Run(name, func(t *testing.T) {
		f := &figures{name: name}
		start := time.Now()
		defer func() {
			f.elapsed = time.Since(start)
			t.Logf("\n%s", f)
			s.mu.Lock()
			s.results = append(s.results, f)
			s.mu.Unlock()
		}()
		fn(t, f)
	})
}

// buildService builds the service binary once, as make build does, or
// returns CHAOS_SERVICE_BINARY when that names one to test instead (a
// release build, say).
func buildService(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("CHAOS_SERVICE_BINARY"); bin != "" {
		t.Logf("testing %s", bin)
		return bin
	}
	return testenv.BuildService(t)
}

// run is one scenario's queues, input and service.
type run struct {
	t   *testing.T
	bin string
	in  *input
	// node is the broker node the suite itself talks to, url its URL.
	node   *testenv.RabbitMQ
	url    string
	queue  string
	alerts string
	dlq    string
	svc    *service
	f      *figures
	// pad rewrites event bodies as they are published; transient
	// publishes them as transient messages.
	pad       func([]byte) []byte
	transient bool
}

// newRun names the scenario's queues on node and deletes them when the
// scenario ends.
func (s *suite) newRun(t *testing.T, in *input, node *testenv.RabbitMQ, f *figures) *run {
	t.Helper()
	r := &run{t: t, bin: s.bin, in: in, node: node, url: node.URL(), queue: testenv.Name(t, "events"), alerts: testenv.Name(t, "alerts"), f: f}
	r.dlq = r.queue + ".dead-letter"
	f.published, f.events, f.hostile = len(in.msgs), in.events, len(in.hostile)
	t.Cleanup(func() {
		for _, q := range []string{r.queue, r.alerts, r.dlq} {
			_ = deleteQueue(r.url, q)
		}
	})
	return r
}

// env is the service's environment for this run: the queues, the broker
// (RABBITMQ_URL unless extra names RABBITMQ_URLS) and extra.
func (r *run) env(extra map[string]string) map[string]string {
	env := map[string]string{
		"RABBITMQ_QUEUE":       r.queue,
		"RABBITMQ_ALERT_QUEUE": r.alerts,
	}
	if _, ok := extra["RABBITMQ_URLS"]; !ok {
		env["RABBITMQ_URL"] = r.url
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// redisEnv points the service at one Redis.
func redisEnv(addr string) map[string]string {
	host, port, _ := strings.Cut(addr, ":")
	return map[string]string{"REDIS_HOST": host, "REDIS_PORT": port}
}

// publish queues msgs on the event queue.
func (r *run) publish(msgs []message) {
	r.t.Helper()
	start := time.Now()
	if r.pad != nil {
		padded := make([]message, 0, 256)
		for i, m := range msgs {
			if _, hostile := r.in.hostile[sha256.Sum256(m.body)]; !hostile {
				m.body = r.pad(m.body)
			}
			padded = append(padded, m)
			if len(padded) == cap(padded) || i == len(msgs)-1 {
				publish(r.t, r.url, r.queue, padded, !r.transient)
				padded = padded[:0]
			}
		}
	} else {
		publish(r.t, r.url, r.queue, msgs, !r.transient)
	}
	r.t.Logf("published %d messages in %s", len(msgs), time.Since(start).Round(time.Millisecond))
}

// start runs the service.
func (r *run) start(env map[string]string) {
	r.t.Helper()
	r.svc = startService(r.t, r.bin, env)
}

// processed returns the running lifetime's processed_total.
func (r *run) processed() float64 {
	m, err := r.svc.scrape()
	if err != nil {
		return -1
	}
	return m[mProcessed]
}

// midRun fails the test unless processed, read when a fault came, shows
// events still to handle: a fault after the drain proves nothing.
func (r *run) midRun(processed float64, fault string) {
	r.t.Helper()
	if int(processed) >= r.in.events {
		r.t.Errorf("%s came after the drain (%.0f events processed): the input is too small for this machine", fault, processed)
	}
}

// waitProcessed waits until the running lifetime has processed n events.
func (r *run) waitProcessed(n int) {
	r.t.Helper()
	waitFor(r.t, 2*time.Minute, "processed_total reaches "+strconv.Itoa(n), func() (bool, string) {
		p := r.processed()
		return p >= float64(n), fmt.Sprintf("processed_total %.0f", p)
	})
}

// waitDrained waits until the broker holds no message of the event
// queue, neither ready nor unacknowledged: everything the service took is
// settled. It returns how long that took.
func (r *run) waitDrained(timeout time.Duration) time.Duration {
	r.t.Helper()
	r.t.Cleanup(func() {
		if r.t.Failed() && r.svc.running() {
			r.t.Logf("where the service's goroutines wait:\n%s", r.svc.dumpGoroutines())
		}
	})
	return waitFor(r.t, timeout, "the event queue drains", func() (bool, string) {
		// The cheap check first; rabbitmqctl takes a second.
		if d, err := depth(r.url, r.queue); err != nil || d > 0 {
			return false, fmt.Sprintf("%d ready (%v)", d, err)
		}
		n, err := queueMessages(r.node, r.queue)
		if err == nil && n > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		return err == nil && n == 0, fmt.Sprintf("%d ready or unacknowledged (%v)", n, err)
	})
}

// queueMessages returns the messages of queue the broker holds, ready or
// delivered and not yet acknowledged.
func queueMessages(node *testenv.RabbitMQ, queue string) (int, error) {
	out, err := node.Ctl("list_queues", "name", "messages", "--formatter", "json")
	if err != nil {
		return 0, err
	}
	var queues []struct {
		Name     string `json:"name"`
		Messages int    `json:"messages"`
	}
	if err := json.Unmarshal([]byte(out), &queues); err != nil {
		return 0, fmt.Errorf("list_queues: %w: %s", err, out)
	}
	for _, q := range queues {
		if q.Name == queue {
			return q.Messages, nil
		}
	}
	return 0, fmt.Errorf("queue %s not listed", queue)
}

// finish stops the service (if it runs), checks that no event is left,
// and checks the alerts and dead letters. extra are alerts read during
// the run.
func (r *run) finish(check alertCheck, extra [][]byte) {
	r.t.Helper()
	if r.svc.running() {
		r.svc.stop()
	}
	if n := mustDepth(r.t, r.url, r.queue); n != 0 {
		r.t.Errorf("%d messages left in the event queue after the service stopped", n)
	}
	var bodies [][]byte
	bodies = append(bodies, extra...)
	for _, d := range drain(r.t, r.url, r.alerts) {
		bodies = append(bodies, d.Body)
	}
	check.logged = r.svc.alertsLogged()
	checkAlerts(r.t, r.in, bodies, check, r.f)
	checkDeadLetters(r.t, r.in, drain(r.t, r.url, r.dlq), r.queue, r.f)
}
