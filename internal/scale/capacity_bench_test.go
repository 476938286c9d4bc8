package scale

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// The figures of README "Scaling": what one replica, one queue and one
// Redis shard sustain. Each sub-benchmark runs once (-benchtime 1x) on a
// private RabbitMQ node and a private Redis, so that the CPU each server
// spends is theirs alone:
//
//	go test -run '^$' -bench . -benchtime 1x -timeout 20m ./internal/scale
//
// BenchmarkDrain drains a preloaded backlog with replicas × queues and
// reports the wall-clock rate and the CPU each part spent per event (and
// what publishing the backlog cost the broker);
// BenchmarkRedisGroup measures the Redis memory and keys one one-event
// failed-login group costs.

const backlogChunks = 12 // 60,000 generator events

func BenchmarkDrain(b *testing.B) {
	redisSrv := testenv.StartRedis(b)
	node := testenv.LaunchRabbitMQ(b, testenv.RabbitMQOptions{Plugins: []string{"rabbitmq_consistent_hash_exchange"}})
	bin := buildService(b)
	in := newInput(b, bin, backlogChunks, 40)
	node.WaitReady()
	for _, c := range []struct{ replicas, queues int }{{1, 1}, {2, 1}, {1, 4}, {2, 4}} {
		b.Run(fmt.Sprintf("replicas=%d/queues=%d", c.replicas, c.queues), func(b *testing.B) {
			drain(b, bin, node, redisSrv, in, c.replicas, c.queues)
		})
	}
}

func drain(b *testing.B, bin string, node *testenv.RabbitMQ, redisSrv *testenv.RedisServer, in *input, replicas, queues int) {
	br := dialBroker(b, node.URL())
	qs := br.queues("events", queues)
	alerts := br.queues("alerts", 1)[0]
	br.declare(qs...)
	publishCPU0 := nodeCPU(b, node.Name)
	if queues == 1 {
		br.publish("", qs[0], in.msgs)
	} else {
		exchange := testenv.Name(b, "events")
		err := br.do(func(ch *amqp.Channel) error {
			if err := ch.ExchangeDeclare(exchange, "x-consistent-hash", false, true, false, false, nil); err != nil {
				return err
			}
			for _, q := range qs {
				if err := ch.QueueBind(q, "1", exchange, false, nil); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		br.publish(exchange, "", in.msgs)
	}
	publishCPU := nodeCPU(b, node.Name) - publishCPU0
	host, port, _ := strings.Cut(redisSrv.Addr(), ":")
	env := map[string]string{
		"RABBITMQ_URL": node.URL(), "RABBITMQ_QUEUE": strings.Join(qs, ","), "RABBITMQ_ALERT_QUEUE": alerts,
		"REDIS_HOST": host, "REDIS_PORT": port, "REDIS_KEY_PREFIX": testenv.Name(b, "bench") + ":",
	}
	rc := redisSrv.Client()
	defer rc.Close()
	brokerCPU0, redisCPU0 := nodeCPU(b, node.Name), redisCPU(b, rc)

	b.ResetTimer()
	start := time.Now()
	rs := startReplicas(b, bin, replicas, env)
	for br.ready(qs...) > 0 || consumedBy(rs) < float64(len(in.msgs)) {
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("not drained after 5 minutes: %.0f of %d consumed", consumedBy(rs), len(in.msgs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	brokerCPU, redisCPUUsed := nodeCPU(b, node.Name)-brokerCPU0, redisCPU(b, rc)-redisCPU0
	var serviceCPU time.Duration
	for _, r := range rs {
		r.stop()
		serviceCPU += r.cmd.ProcessState.UserTime() + r.cmd.ProcessState.SystemTime()
	}
	n := float64(len(in.msgs))
	b.ReportMetric(n/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(serviceCPU.Microseconds())/n, "service-µs/event")
	b.ReportMetric(brokerCPU.Seconds()*1e6/n, "broker-µs/event")
	// What taking the events in cost the broker (persistent, confirmed,
	// 512 in flight from one publisher), apart from delivering them.
	b.ReportMetric(publishCPU.Seconds()*1e6/n, "broker-publish-µs/event")
	b.ReportMetric(redisCPUUsed.Seconds()*1e6/n, "redis-µs/event")
}

func consumedBy(rs []*replica) float64 {
	var n float64
	for _, r := range rs {
		n += max(r.consumed(), 0)
	}
	return n
}

// nodeCPU is the CPU time the Erlang VM of the named node has used, from
// /proc: the VM whose environment names the node.
func nodeCPU(tb testing.TB, name string) time.Duration {
	tb.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), "beam") {
			continue
		}
		// The VM learns its name from the environment, not its
		// arguments.
		environ, err := os.ReadFile(filepath.Join(d, "environ"))
		if err != nil || !strings.Contains(string(environ), "RABBITMQ_NODENAME="+name+"\x00") {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis: utime and
		// stime are the 12th and 13th, in clock ticks (100 a second).
		_, rest, _ := strings.Cut(string(stat), ") ")
		f := strings.Fields(rest)
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		return time.Duration(utime+stime) * 10 * time.Millisecond
	}
	tb.Fatalf("no Erlang VM for node %s in /proc", name)
	return 0
}

// redisCPU is the CPU time the server has used (INFO cpu).
func redisCPU(tb testing.TB, c *redis.Client) time.Duration {
	tb.Helper()
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		tb.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\r\n") {
		k, v, _ := strings.Cut(line, ":")
		if k == "used_cpu_sys" || k == "used_cpu_user" {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}

// BenchmarkRedisGroup has one replica handle failed logins of distinct
// users on distinct hosts, one event each: the shape of a password spray
// over new accounts, where every event starts a group that never alerts.
func BenchmarkRedisGroup(b *testing.B) {
	const groups = 20000
	redisSrv := testenv.StartRedis(b)
	bin := buildService(b)
	url := testenv.RabbitMQURL(b)
	br := dialBroker(b, url)
	qs := br.queues("events", 1)
	alerts := br.queues("alerts", 1)[0]
	br.declare(qs...)
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	msgs := make([]message, groups)
	for i := range msgs {
		msgs[i].body = fmt.Appendf(nil, `{"event_id":"g-%d","timestamp":%q,"source_service":"bench","server_hostname":"host-%d",`+
			`"event_type":"user_login","severity":"WARNING","user_id":"user-%d","action_result":"FAILURE",`+
			`"details":{"reason":"Incorrect password","ip_address":"10.0.%d.%d","protocol":"ssh"}}`,
			i, start.Add(time.Duration(i)*time.Millisecond).Format(time.RFC3339Nano), i%50, i, i/250%250, i%250)
	}
	rc := redisSrv.Client()
	defer rc.Close()
	ctx := context.Background()
	mem0, cpu0 := usedMemory(b, rc), redisCPU(b, rc)
	keys0, _ := rc.DBSize(ctx).Result()
	br.publish("", qs[0], msgs)
	host, port, _ := strings.Cut(redisSrv.Addr(), ":")
	rs := startReplicas(b, bin, 1, map[string]string{
		"RABBITMQ_URL": url, "RABBITMQ_QUEUE": qs[0], "RABBITMQ_ALERT_QUEUE": alerts,
		"REDIS_HOST": host, "REDIS_PORT": port, "REDIS_KEY_PREFIX": "bench:",
	})
	for br.ready(qs...) > 0 || consumedBy(rs) < groups {
		time.Sleep(20 * time.Millisecond)
	}
	rs[0].stop()
	cpu := redisCPU(b, rc) - cpu0
	mem, keys := usedMemory(b, rc)-mem0, int64(0)
	if n, err := rc.DBSize(ctx).Result(); err == nil {
		keys = n - keys0
	}
	var ttl time.Duration
	if ks, _, err := rc.Scan(ctx, 0, "bench:*", 10).Result(); err == nil && len(ks) > 0 {
		ttl, _ = rc.PTTL(ctx, ks[0]).Result()
	}
	b.ReportMetric(float64(mem)/groups, "bytes/group")
	b.ReportMetric(float64(keys)/groups, "keys/group")
	b.ReportMetric(ttl.Seconds(), "ttl-s")
	// Each event is one script run: the CPU a shard spends per update.
	b.ReportMetric(cpu.Seconds()*1e6/groups, "redis-µs/update")
}

func usedMemory(tb testing.TB, c *redis.Client) int64 {
	tb.Helper()
	info, err := c.Info(context.Background(), "memory").Result()
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	tb.Fatal("INFO memory without used_memory")
	return 0
}
