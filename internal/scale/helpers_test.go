package scale

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/sample"
	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// buildService builds the service binary, as make build does.
func buildService(t testing.TB) string { return testenv.BuildService(t) }

// message is one body to publish, with the routing key a consistent-hash
// exchange shards it by.
type message struct {
	body []byte
	key  string
}

// input is a stream of events with planted failed-login bursts, some
// published twice, and the alerts replay raises from it.
type input struct {
	msgs []message
	// bursts are the planted failed-login bursts, by their event ids.
	bursts [][]string
	// expected are replay's alert ids, with the event ids of each.
	expected map[string][]string
}

// newInput generates chunks of the sample generator's stream, six hours
// apart in event time, and publishes every dupEvery-th event a second
// time further on.
//
// Replicas handle events in a different order from the stream's, so the
// input keeps to what the rules alert on the same way in any order: a
// burst keeps its first three failed logins (a longer burst alerts on
// whichever three arrive first), and a user and host attacked twice keep
// only the first attack (which of two windows alerts first depends on
// arrival). README "How stateful rules count" says why.
func newInput(t testing.TB, bin string, chunks, dupEvery int) *input {
	t.Helper()
	var stream bytes.Buffer
	drop := map[string]bool{}
	in := &input{}
	attacked := map[string]bool{}
	for i := range chunks {
		plan, err := sample.Generate(&stream, sample.Options{
			Seed:  uint64(100 + i),
			Start: sample.DefaultStart().Add(time.Duration(i) * 6 * time.Hour),
		})
		if err != nil {
			t.Fatalf("generate events: %v", err)
		}
		for _, sc := range plan.Scenarios {
			if sc.Kind != sample.FailedLoginBurst {
				continue
			}
			evs := slices.Clone(sc.Events)
			slices.SortStableFunc(evs, func(a, b sample.Planted) int { return a.Time.Compare(b.Time) })
			// Chunks are hours apart: the same names in two are
			// different groups' lifetimes.
			group := fmt.Sprint(i, "\x00", sc.UserID, "\x00", sc.Host)
			var ids []string
			for j, e := range evs {
				if j >= 3 || attacked[group] {
					drop[e.ID] = true
				} else {
					ids = append(ids, e.ID)
				}
			}
			if !attacked[group] {
				in.bursts = append(in.bursts, ids)
			}
			attacked[group] = true
		}
	}
	var events []message
	for line := range bytes.Lines(stream.Bytes()) {
		body := bytes.TrimRight(line, "\n")
		// Malformed lines spread over the shards, by their position.
		key := fmt.Sprintf("malformed-%d", len(events))
		if ev, err := event.Decode(body, event.MaxBodyBytes); err == nil {
			if drop[ev.ID] {
				continue
			}
			key = ev.UserID
		}
		events = append(events, message{body: bytes.Clone(body), key: key})
	}
	// A repeated event comes back 100 messages later: as a producer's
	// retry would.
	for i, m := range events {
		in.msgs = append(in.msgs, m)
		if i >= 100 && i%dupEvery == 0 {
			in.msgs = append(in.msgs, events[i-100])
		}
	}
	in.expected = replay(t, bin, in.msgs)
	if len(in.expected) == 0 || len(in.bursts) == 0 {
		t.Fatal("replay raised no alert: the input is not meaningful")
	}
	return in
}

// replay runs the binary's replay over msgs and returns its alerts' ids
// with their event ids.
func replay(t testing.TB, bin string, msgs []message) map[string][]string {
	t.Helper()
	dir := t.TempDir()
	var lines bytes.Buffer
	for _, m := range msgs {
		lines.Write(m.body)
		lines.WriteByte('\n')
	}
	file := filepath.Join(dir, "events.jsonl")
	if err := os.WriteFile(file, lines.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "replay", "--quiet", file)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("replay: %v\n%s", err, stderr.String())
	}
	return alertIDs(t, bytes.Split(bytes.TrimSpace(stdout.Bytes()), []byte("\n")))
}

// alertIDs reads alert bodies into their ids and event ids.
func alertIDs(t testing.TB, bodies [][]byte) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, b := range bodies {
		if len(b) == 0 {
			continue
		}
		var a struct {
			AlertID  string   `json:"alert_id"`
			EventIDs []string `json:"event_ids"`
		}
		if err := json.Unmarshal(b, &a); err != nil || a.AlertID == "" {
			t.Fatalf("not an alert: %.200q: %v", b, err)
		}
		out[a.AlertID] = a.EventIDs
	}
	return out
}

// checkAlerts compares the alert ids a run published with replay's, and
// checks that no planted burst alerted under two ids.
func checkAlerts(t testing.TB, what string, in *input, got map[string][]string) {
	t.Helper()
	var missing, extra []string
	for id := range in.expected {
		if _, ok := got[id]; !ok {
			missing = append(missing, id)
		}
	}
	for id := range got {
		if _, ok := in.expected[id]; !ok {
			extra = append(extra, id)
		}
	}
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("%s: %d alert ids, replay %d; missing %v; not raised by replay %v",
			what, len(got), len(in.expected), first(missing), first(extra))
	}
	byEvent := map[string]string{}
	for id, evs := range got {
		for _, e := range evs {
			byEvent[e] = id
		}
	}
	for _, burst := range in.bursts {
		ids := map[string]bool{}
		for _, e := range burst {
			if id, ok := byEvent[e]; ok {
				ids[id] = true
			}
		}
		if len(ids) > 1 {
			t.Errorf("%s: the burst of events %v alerted under %d ids: %v", what, burst, len(ids), slices.Collect(maps.Keys(ids)))
		}
	}
}

func first(ids []string) []string {
	slices.Sort(ids)
	return ids[:min(len(ids), 5)]
}

// broker is a connection for the test's own declarations and publishes.
type broker struct {
	t    testing.TB
	url  string
	conn *amqp.Connection
}

func dialBroker(t testing.TB, url string) *broker {
	t.Helper()
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("dial the broker: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &broker{t: t, url: url, conn: conn}
}

// do runs f on a channel of its own, closed afterwards.
func (b *broker) do(f func(ch *amqp.Channel) error) error {
	ch, err := b.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	return f(ch)
}

// queues names n queues of the test and deletes them, with the dead-letter
// queue the service makes for the first, when the test ends.
func (b *broker) queues(prefix string, n int) []string {
	b.t.Helper()
	var names []string
	for i := range n {
		names = append(names, testenv.Name(b.t, fmt.Sprintf("%s%d", prefix, i+1)))
	}
	b.t.Cleanup(func() {
		for _, q := range append(slices.Clone(names), names[0]+".dead-letter") {
			_ = b.do(func(ch *amqp.Channel) error {
				_, err := ch.QueueDelete(q, false, false, false)
				return err
			})
		}
	})
	return names
}

// declare declares queues as the service would.
func (b *broker) declare(queues ...string) {
	b.t.Helper()
	for _, q := range queues {
		err := b.do(func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "classic"})
			return err
		})
		if err != nil {
			b.t.Fatalf("declare %s: %v", q, err)
		}
	}
}

// publish publishes msgs with publisher confirms, to queue through the
// default exchange, or to exchange with each message's key.
func (b *broker) publish(exchange, queue string, msgs []message) {
	b.t.Helper()
	err := b.do(func(ch *amqp.Channel) error {
		if err := ch.Confirm(false); err != nil {
			return err
		}
		// Published mandatory: a message no queue takes comes back,
		// before its confirm, so a window's returns fit the buffer.
		const window = 512
		returns := ch.NotifyReturn(make(chan amqp.Return, window))
		for start := 0; start < len(msgs); start += window {
			var confirms []*amqp.DeferredConfirmation
			for _, m := range msgs[start:min(start+window, len(msgs))] {
				key := queue
				if exchange != "" {
					key = m.key
				}
				c, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), exchange, key, true, false,
					amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: m.body})
				if err != nil {
					return err
				}
				confirms = append(confirms, c)
			}
			for _, c := range confirms {
				if !c.Wait() {
					return fmt.Errorf("publish %d not confirmed", c.DeliveryTag)
				}
			}
			select {
			case r := <-returns:
				return fmt.Errorf("message returned unroutable (%s, key %q)", r.ReplyText, r.RoutingKey)
			default:
			}
		}
		return nil
	})
	if err != nil {
		b.t.Fatalf("publish: %v", err)
	}
}

// ready returns the messages ready in queues, together.
func (b *broker) ready(queues ...string) int {
	b.t.Helper()
	n := 0
	for _, q := range queues {
		err := b.do(func(ch *amqp.Channel) error {
			info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			n += info.Messages
			return err
		})
		if err != nil {
			b.t.Fatalf("inspect %s: %v", q, err)
		}
	}
	return n
}

// drain takes every message from queue and returns their bodies.
func (b *broker) drain(queue string) [][]byte {
	b.t.Helper()
	var out [][]byte
	for _, d := range b.drainDeliveries(queue) {
		out = append(out, d.Body)
	}
	return out
}

// drainDeliveries takes every message from queue.
func (b *broker) drainDeliveries(queue string) []amqp.Delivery {
	b.t.Helper()
	var out []amqp.Delivery
	err := b.do(func(ch *amqp.Channel) error {
		for {
			d, ok, err := ch.Get(queue, true)
			if err != nil || !ok {
				return err
			}
			out = append(out, d)
		}
	})
	if err != nil {
		b.t.Fatalf("drain %s: %v", queue, err)
	}
	return out
}

// redisPrefix returns a key prefix of the test's own on the shared Redis,
// whose keys are deleted when the test ends.
func redisPrefix(t testing.TB, addr string) string {
	t.Helper()
	prefix := testenv.Name(t, "scale") + ":"
	t.Cleanup(func() {
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		for start := 0; start < len(keys); start += 500 {
			c.Unlink(ctx, keys[start:min(start+500, len(keys))]...)
		}
	})
	return prefix
}

// replica is the service binary run as a process.
type replica struct {
	t      testing.TB
	name   string
	env    map[string]string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// startReplicas starts n replicas with env and waits until each serves
// /livez.
func startReplicas(t testing.TB, bin string, n int, env map[string]string) []*replica {
	t.Helper()
	var rs []*replica
	for i := range n {
		rs = append(rs, startReplica(t, bin, fmt.Sprintf("replica %d", i+1), env))
	}
	for _, r := range rs {
		r.waitLive()
	}
	return rs
}

func startReplica(t testing.TB, bin, name string, env map[string]string) *replica {
	t.Helper()
	r := &replica{t: t, name: name, log: filepath.Join(t.TempDir(), "service.log"), exited: make(chan struct{}), env: map[string]string{
		"APP_PORT":        strconv.Itoa(testenv.FreePort(t)),
		"PROMETHEUS_PORT": strconv.Itoa(testenv.FreePort(t)),
		"LOG_LEVEL":       "warn",
		"ENVIRONMENT":     "DEVELOPMENT",
	}}
	maps.Copy(r.env, env)
	out, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	r.cmd = exec.Command(bin, "serve")
	r.cmd.Dir = filepath.Dir(r.log)
	r.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range r.env {
		r.cmd.Env = append(r.cmd.Env, k+"="+v)
	}
	r.cmd.Stdout, r.cmd.Stderr = out, out
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.kill()
		if t.Failed() {
			b, _ := os.ReadFile(r.log)
			t.Logf("%s log:\n%s", r.name, tail(b, 30))
		}
	})
	return r
}

func (r *replica) waitLive() {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.1:" + r.env["APP_PORT"] + "/livez")
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case <-r.exited:
			b, _ := os.ReadFile(r.log)
			r.t.Fatalf("%s exited at start:\n%s", r.name, tail(b, 30))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s does not serve /livez: %v", r.name, err)
		}
	}
}

// ready reports whether the replica's /readyz answers 200.
func (r *replica) ready() bool {
	resp, err := http.Get("http://127.0.0.1:" + r.env["APP_PORT"] + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// depths returns the queues the replica reports a depth for
// (audit_analysis_rabbitmq_queue_messages{queue}).
func (r *replica) depths() map[string]bool {
	out := map[string]bool{}
	resp, err := http.Get("http://127.0.0.1:" + r.env["PROMETHEUS_PORT"] + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), `audit_analysis_rabbitmq_queue_messages{queue="`); ok {
			q, _, _ := strings.Cut(rest, `"`)
			out[q] = true
		}
	}
	return out
}

// consumed reads the replica's consumed_total, -1 when it does not answer.
func (r *replica) consumed() float64 {
	resp, err := http.Get("http://127.0.0.1:" + r.env["PROMETHEUS_PORT"] + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "audit_analysis_rabbitmq_messages_consumed_total "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// kill ends the process with SIGKILL, as the kernel's OOM killer would.
func (r *replica) kill() {
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.exited
}

// stop asks for a clean shutdown and waits for it.
func (r *replica) stop() {
	r.t.Helper()
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(20 * time.Second):
		r.t.Errorf("%s did not stop within 20s of SIGTERM", r.name)
		r.kill()
	}
}

// finish waits until the queues hold nothing ready, stops the replicas
// cleanly and, if deliveries they held came back, runs one replica more
// until those are handled too; then it returns the alerts published.
func finish(t testing.TB, b *broker, bin string, env map[string]string, rs []*replica, queues []string, alerts string) map[string][]string {
	t.Helper()
	for round := 0; ; round++ {
		deadline := time.Now().Add(60 * time.Second)
		for b.ready(queues...) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d events still queued after a minute", b.ready(queues...))
			}
			time.Sleep(50 * time.Millisecond)
		}
		var wg sync.WaitGroup
		for _, r := range rs {
			wg.Add(1)
			go func() { defer wg.Done(); r.stop() }()
		}
		wg.Wait()
		if b.ready(queues...) == 0 {
			break
		}
		if round == 3 {
			t.Fatal("events keep coming back after the replicas stop")
		}
		rs = startReplicas(t, bin, 1, env)
	}
	return alertIDs(t, b.drain(alerts))
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
