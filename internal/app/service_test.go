package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// service is one instance of the whole program, run in-process through
// Main on free ports against real RabbitMQ and Redis.
type service struct {
	t          *testing.T
	env        map[string]string
	appURL     string
	promURL    string
	queue      string
	alertQueue string
	deadQueue  string
	prefix     string
	cancel     context.CancelFunc
	done       chan error
	logs       *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serviceEnv returns the Python service's variables pointed at the test's
// servers, with queue names and a key prefix of the test's own.
func serviceEnv(t *testing.T, redisAddr string) map[string]string {
	t.Helper()
	amqpURL := testenv.RabbitMQURL(t)
	u, err := amqp.ParseURI(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(redisAddr, ":")
	queue := testenv.Name(t, "events")
	return map[string]string{
		"RABBITMQ_HOST":        u.Host,
		"RABBITMQ_PORT":        strconv.Itoa(u.Port),
		"RABBITMQ_USER":        u.Username,
		"RABBITMQ_PASS":        u.Password,
		"RABBITMQ_QUEUE":       queue,
		"RABBITMQ_ALERT_QUEUE": testenv.Name(t, "alerts"),
		"REDIS_HOST":           host,
		"REDIS_PORT":           port,
		"REDIS_KEY_PREFIX":     testenv.Name(t, "test") + ":",
		"APP_PORT":             strconv.Itoa(testenv.FreePort(t)),
		"PROMETHEUS_PORT":      strconv.Itoa(testenv.FreePort(t)),
		"ENVIRONMENT":          "TEST",
		"LOG_LEVEL":            "debug",
	}
}

// startService runs Main("serve") until the test ends, and cleans up its
// queues and keys afterwards.
func startService(t *testing.T, env map[string]string) *service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{
		t: t, env: env, cancel: cancel, done: make(chan error, 1), logs: &syncBuffer{},
		appURL:     "http://127.0.0.1:" + env["APP_PORT"],
		promURL:    "http://127.0.0.1:" + env["PROMETHEUS_PORT"],
		queue:      env["RABBITMQ_QUEUE"],
		alertQueue: env["RABBITMQ_ALERT_QUEUE"],
		deadQueue:  env["RABBITMQ_QUEUE"] + ".dead-letter",
		prefix:     env["REDIS_KEY_PREFIX"],
	}
	getenv := func(k string) string { return env[k] }
	go func() {
		s.done <- Main(ctx, Env{Args: []string{"audit-log-analysis"}, Getenv: getenv, Stdin: strings.NewReader(""), Stdout: s.logs, Stderr: s.logs, Build: Build{Version: "test"}})
	}()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("service logs:\n%s", s.logs.String())
		}
		deleteQueues(t, s.queue, s.alertQueue, s.deadQueue)
		if addr, ok := sharedRedis(env); ok {
			// The state-loss marker included: it is written at start.
			deleteKeys(t, addr, s.prefix)
		}
	})
	s.waitHealthy(20 * time.Second)
	return s
}

// sharedRedis returns the address of the Redis env points the service at
// when it is the one tests share: its keys must go when the test ends
// (private servers go with their data).
func sharedRedis(env map[string]string) (string, bool) {
	if env["REDIS_HOST"] == "" || env["REDIS_KEY_PREFIX"] == "" {
		return "", false
	}
	shared := os.Getenv("TEST_REDIS_ADDR")
	if shared == "" {
		shared = "127.0.0.1:6379"
	}
	port := env["REDIS_PORT"]
	if port == "" {
		port = "6379"
	}
	addr := net.JoinHostPort(env["REDIS_HOST"], port)
	return addr, addr == shared
}

// stop cancels the service and waits for Main to return.
func (s *service) stop() error {
	s.cancel()
	select {
	case err, ok := <-s.done:
		if ok {
			close(s.done)
		}
		return err
	case <-time.After(15 * time.Second):
		s.t.Errorf("service did not stop within 15s")
		return nil
	}
}

func (s *service) health() (int, map[string]any) {
	s.t.Helper()
	resp, err := http.Get(s.appURL + "/healthz")
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func (s *service) waitHealthy(d time.Duration) {
	s.t.Helper()
	s.waitStatus(http.StatusOK, d)
}

func (s *service) waitStatus(code int, d time.Duration) time.Duration {
	s.t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if got, _ := s.health(); got == code {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	got, body := s.health()
	s.t.Fatalf("/healthz = %d %v after %s, want %d", got, body, d, code)
	return 0
}

// metric returns the value of one series from /metrics at base, or -1.
func metric(t *testing.T, base, series string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, series+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, series)), 64)
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			return v
		}
	}
	return -1
}

// openChannel opens a connection and channel to the test broker; the
// caller closes the connection (a consumer left open would take the next
// caller's messages).
func openChannel(t *testing.T) (*amqp.Channel, func()) {
	t.Helper()
	return openChannelAt(t, testenv.RabbitMQURL(t))
}

// openChannelAt is openChannel on the broker at url.
func openChannelAt(t *testing.T, url string) (*amqp.Channel, func()) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	return ch, func() { conn.Close() }
}

// publish sends raw bodies to a queue with confirms.
func publish(t *testing.T, queue string, bodies ...[]byte) {
	t.Helper()
	publishAt(t, testenv.RabbitMQURL(t), queue, bodies...)
}

// publishAt is publish on the broker at url.
func publishAt(t *testing.T, url, queue string, bodies ...[]byte) {
	t.Helper()
	ch, done := openChannelAt(t, url)
	defer done()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Confirms are awaited after publishing everything: one round trip
	// per message is slow on a busy machine.
	confirms := make([]*amqp.DeferredConfirmation, 0, len(bodies))
	for _, b := range bodies {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
			ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: b,
		})
		if err != nil {
			t.Fatal(err)
		}
		confirms = append(confirms, dc)
	}
	for _, dc := range confirms {
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish not confirmed: %v", err)
		}
	}
}

// collect reads messages from a queue until want have arrived or the
// queue stays quiet for quiet after that; it fails past timeout.
func collect(t *testing.T, queue string, want int, quiet, timeout time.Duration) []amqp.Delivery {
	t.Helper()
	return collectAt(t, testenv.RabbitMQURL(t), queue, want, quiet, timeout)
}

// collectAt is collect on the broker at url.
func collectAt(t *testing.T, url, queue string, want int, quiet, timeout time.Duration) []amqp.Delivery {
	t.Helper()
	ch, done := openChannelAt(t, url)
	defer done()
	// Passively first: the queue may have arguments a plain declare would
	// contradict.
	if _, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil); err != nil {
		done()
		ch, done = openChannelAt(t, url)
		defer done()
		if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []amqp.Delivery
	deadline := time.After(timeout)
	for {
		wait := timeout
		if len(got) >= want {
			wait = quiet
		}
		select {
		case d := <-deliveries:
			got = append(got, d)
		case <-time.After(wait):
			if len(got) < want {
				t.Fatalf("queue %s: %d messages, want %d", queue, len(got), want)
			}
			return got
		case <-deadline:
			t.Fatalf("queue %s: %d messages after %s, want %d", queue, len(got), timeout, want)
		}
	}
}

func queueDepth(t *testing.T, queue string) int {
	t.Helper()
	ch, done := openChannel(t)
	defer done()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

func deleteQueues(t *testing.T, queues ...string) {
	conn, err := amqp.Dial(testenv.RabbitMQURL(t))
	if err != nil {
		return
	}
	defer conn.Close()
	for _, q := range queues {
		ch, err := conn.Channel()
		if err != nil {
			return
		}
		_, _ = ch.QueueDelete(q, false, false, false)
		ch.Close()
	}
}

func deleteKeys(t *testing.T, addr, prefix string) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := rdb.Scan(ctx, 0, prefix+"*", 500).Iterator()
	for iter.Next(ctx) {
		rdb.Del(ctx, iter.Val())
	}
}

// ev builds a generator-shaped event.
func ev(id, ts, typ, result, user, host string, details map[string]any) []byte {
	m := map[string]any{
		"event_id": id, "timestamp": ts, "source_service": "audit-event-generator",
		"server_hostname": host, "event_type": typ, "severity": "WARNING", "user_id": user,
		"action_result": result,
	}
	if details != nil {
		m["details"] = details
	}
	b, _ := json.Marshal(m)
	return b
}

func uuidFor(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

func decodeAlerts(t *testing.T, ds []amqp.Delivery) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, d := range ds {
		var a map[string]any
		if err := json.Unmarshal(d.Body, &a); err != nil {
			t.Fatalf("alert is not JSON: %v: %s", err, d.Body)
		}
		if d.MessageId != a["alert_id"] || d.ContentType != "application/json" || d.DeliveryMode != amqp.Persistent {
			t.Errorf("alert message properties: id %q content type %q mode %d", d.MessageId, d.ContentType, d.DeliveryMode)
		}
		out = append(out, a)
	}
	return out
}

func TestServiceDetectsBurstsAndSensitiveFilesEndToEnd(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })

	base := time.Now().UTC().Add(-10 * time.Minute).Truncate(time.Second)
	ts := func(sec float64) string {
		return base.Add(time.Duration(sec * float64(time.Second))).Format("2006-01-02T15:04:05.000000Z")
	}
	ip := map[string]any{"reason": "Incorrect password", "ip_address": "192.168.1.150", "protocol": "ssh"}
	publish(t, s.queue,
		// Three failures for bob on web-01 within 60 s: one alert.
		ev(uuidFor(1), ts(0), "user_login", "FAILURE", "attacker_bob", "prod-web-01", ip),
		ev(uuidFor(2), ts(10), "user_login", "FAILURE", "attacker_bob", "prod-web-01", ip),
		ev(uuidFor(3), ts(20), "user_login", "FAILURE", "attacker_bob", "prod-web-01", ip),
		// Two failures for carol: none.
		ev(uuidFor(4), ts(0), "user_login", "FAILURE", "carol", "prod-web-01", nil),
		ev(uuidFor(5), ts(5), "user_login", "FAILURE", "carol", "prod-web-01", nil),
		// A sensitive file through a path with a double slash, and a decoy.
		ev(uuidFor(6), ts(30), "file_modified", "MODIFIED", "eve", "db-01", map[string]any{"resource": "/etc//shadow"}),
		ev(uuidFor(7), ts(31), "file_modified", "MODIFIED", "eve", "db-01", map[string]any{"resource": "/etc/passwd.bak"}),
	)
	alerts := decodeAlerts(t, collect(t, s.alertQueue, 2, 2*time.Second, 30*time.Second))
	if len(alerts) != 2 {
		t.Fatalf("got %d alerts, want 2: %v", len(alerts), alerts)
	}
	byRule := map[string]map[string]any{}
	for _, a := range alerts {
		byRule[a["analysis_rule"].(map[string]any)["rule_id"].(string)] = a
	}
	burst, file := byRule["ANLY-SEC-001"], byRule["ANLY-SEC-002"]
	if burst == nil || file == nil {
		t.Fatalf("alerts by rule = %v, want ANLY-SEC-001 and ANLY-SEC-002", byRule)
	}
	checkFields(t, burst, map[string]any{
		"alert_name": "Multiple Failed Login Attempts", "alert_type": "SECURITY", "severity": "CRITICAL",
		"description":                       "3 or more failed login attempts for user 'attacker_bob' on 'prod-web-01' within 60 seconds.",
		"source_service_name":               "audit-event-generator",
		"action_observed":                   "LOGIN_FAILURE",
		"correlation_id":                    uuidFor(3),
		"analysis_rule.rule_name":           "Failed Login Burst Detection",
		"analysis_rule.rule_description":    "Detects 3 failed logins within 60 seconds.",
		"triggered_by.actor_type":           "USER",
		"triggered_by.actor_id":             "attacker_bob",
		"triggered_by.client_ip":            "192.168.1.150",
		"impacted_resource.resource_type":   "SERVER",
		"impacted_resource.resource_id":     "prod-web-01",
		"impacted_resource.server_hostname": "prod-web-01",
		"metadata.environment":              "TEST",
		"metadata.playbook_url":             "https://example.com/playbooks/failed_login_burst",
		"window.count":                      float64(3),
		"window.threshold":                  float64(3),
		"raw_event_data.event_id":           uuidFor(3),
	})
	checkFields(t, file, map[string]any{
		"alert_name":                        "Sensitive File Modification Detected",
		"action_observed":                   "FILE_MODIFIED",
		"impacted_resource.resource_type":   "FILE",
		"impacted_resource.resource_id":     "/etc//shadow",
		"impacted_resource.server_hostname": "db-01",
		"triggered_by.client_ip":            nil,
		"correlation_id":                    uuidFor(6),
	})
	if ts, _ := burst["timestamp"].(string); !strings.HasSuffix(ts, "Z") || strings.Contains(ts, "+00:00") {
		t.Errorf("timestamp %q is not RFC 3339 UTC with Z", ts)
	}

	// Bad input is dead-lettered with its reason; the service stays
	// healthy and goes on processing.
	publish(t, s.queue, []byte("not json"), []byte(`[{"event_type":"user_login"}]`), []byte("{\"user_id\": \"\xff\"}"))
	dead := collect(t, s.deadQueue, 3, time.Second, 30*time.Second)
	reasons := map[string]bool{}
	for _, d := range dead {
		reasons[fmt.Sprint(d.Headers["x-rejection-reason"])] = true
	}
	for _, r := range []string{"invalid_json", "not_object", "invalid_utf8"} {
		if !reasons[r] {
			t.Errorf("dead letters %v lack reason %s", reasons, r)
		}
	}
	publish(t, s.queue, ev(uuidFor(8), ts(40), "file_modified", "MODIFIED", "eve", "db-01", map[string]any{"resource": "/etc/ssh/../shadow"}))
	more := decodeAlerts(t, collect(t, s.alertQueue, 1, time.Second, 30*time.Second))
	if len(more) != 1 || more[0]["correlation_id"] != uuidFor(8) {
		t.Fatalf("after bad input got %v, want one alert for event 8", more)
	}
	if code, _ := s.health(); code != http.StatusOK {
		t.Errorf("/healthz = %d after bad input, want 200", code)
	}
	if n := queueDepth(t, s.queue); n != 0 {
		t.Errorf("event queue holds %d messages, want 0 (nothing requeued)", n)
	}

	for _, base := range []string{s.appURL, s.promURL} {
		for series, want := range map[string]float64{
			"audit_analysis_processed_total":                                                        8,
			"audit_analysis_rabbitmq_messages_consumed_total":                                       11,
			`audit_analysis_alerts_total{alert_type="failed_login_burst",severity="CRITICAL"}`:      1,
			`audit_analysis_alerts_total{alert_type="sensitive_file_modified",severity="CRITICAL"}`: 2,
			"audit_analysis_rabbitmq_consumer_connection_status":                                    1,
			"audit_analysis_redis_connection_status":                                                1,
			`audit_analysis_rejected_messages_total{reason="invalid_json"}`:                         1,
			`audit_analysis_rejected_messages_total{reason="not_object"}`:                           1,
			`audit_analysis_rejected_messages_total{reason="invalid_utf8"}`:                         1,
		} {
			if got := metric(t, base, series); got != want {
				t.Errorf("%s %s = %v, want %v", base, series, got, want)
			}
		}
	}
}

// checkFields compares dotted paths of a decoded alert.
func checkFields(t *testing.T, a map[string]any, want map[string]any) {
	t.Helper()
	for path, w := range want {
		var cur any = a
		for _, part := range strings.Split(path, ".") {
			m, _ := cur.(map[string]any)
			cur = m[part]
		}
		if fmt.Sprint(cur) != fmt.Sprint(w) {
			t.Errorf("%s = %v, want %v", path, cur, w)
		}
	}
}

func TestHealthFollowsRedisAndNoEventIsLostWhileItIsDown(t *testing.T) {
	t.Parallel()
	rs := testenv.StartRedis(t)
	s := startService(t, serviceEnv(t, rs.Addr()))

	rs.Stop()
	took := s.waitStatus(http.StatusServiceUnavailable, 10*time.Second)
	if took > 5*time.Second {
		t.Errorf("/healthz turned 503 after %s, want within 5s", took)
	}
	_, body := s.health()
	if body["redis_connected"] != false || body["rabbitmq_connected"] != true || body["status"] != "unhealthy" {
		t.Errorf("/healthz body while Redis is down = %v", body)
	}
	if resp, err := http.Get(s.appURL + "/livez"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/livez while Redis is down: %v %v, want 200", resp, err)
	}

	// Events that arrive while Redis is down wait in the queue.
	base := time.Now().UTC().Add(-time.Minute)
	for i := range 3 {
		publish(t, s.queue, ev(uuidFor(100+i), base.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano),
			"user_login", "FAILURE", "mallory", "prod-db-01", nil))
	}
	time.Sleep(2 * time.Second)
	rs.Start()
	s.waitHealthy(15 * time.Second)
	alerts := decodeAlerts(t, collect(t, s.alertQueue, 1, 2*time.Second, 30*time.Second))
	if len(alerts) != 1 || alerts[0]["correlation_id"] != uuidFor(102) {
		t.Fatalf("after Redis returned got %v, want one ANLY-SEC-001 alert triggered by event 102", alerts)
	}
}

func TestTheBinaryReloadsOnSIGHUPAndStopsCleanlyOnSIGTERM(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	bin := testenv.BuildService(t)
	cmd := exec.Command(bin)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		deleteQueues(t, env["RABBITMQ_QUEUE"], env["RABBITMQ_ALERT_QUEUE"], env["RABBITMQ_QUEUE"]+".dead-letter")
		deleteKeys(t, redisAddr, env["REDIS_KEY_PREFIX"])
	})
	s := &service{t: t, appURL: "http://127.0.0.1:" + env["APP_PORT"]}
	s.waitHealthy(20 * time.Second)
	publish(t, env["RABBITMQ_QUEUE"], ev(uuidFor(200), time.Now().UTC().Format(time.RFC3339), "file_modified", "MODIFIED", "x", "h", map[string]any{"resource": "/etc/sudoers"}))
	if got := collect(t, env["RABBITMQ_ALERT_QUEUE"], 1, time.Second, 10*time.Second); len(got) != 1 {
		t.Errorf("got %d alerts, want the one for the event sent", len(got))
	}

	// SIGHUP reloads the rules and does not stop the service.
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), `"msg":"rules reloaded","component":"rules","trigger":"SIGHUP"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.waitHealthy(5 * time.Second)

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after the signal\n%s", logs.String())
	}
	t.Logf("stopped %s after the signal", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(logs.String(), `"msg":"stopped"`) {
		t.Errorf("no clean stop in the logs:\n%s", logs.String())
	}
	if n := queueDepth(t, env["RABBITMQ_QUEUE"]); n != 0 {
		t.Errorf("event queue holds %d messages after a clean stop, want 0", n)
	}
}

func TestServiceRunsACustomRulesFileAndSurvivesABadReload(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	rulesFile := filepath.Join(t.TempDir(), "rules.yaml")
	writeRules := func(src string) {
		t.Helper()
		// Write then rename, as config management does.
		tmp := rulesFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, rulesFile); err != nil {
			t.Fatal(err)
		}
	}
	writeRules(`
rules:
  - id: CUSTOM-SPRAY
    name: Password spray
    severity: HIGH
    match:
      event_type: user_login
      action_result: FAILURE
      client_ip: {cidr: [203.0.113.0/24]}
    threshold: {count: 3, window: 10m, group_by: [client_ip], distinct: user_id}
  - id: CUSTOM-ADMIN
    severity: HIGH
    match:
      event_type: user_login
      user_id: {regex: "^admin[0-9]+$"}
  - id: CUSTOM-PAM
    severity: HIGH
    resource_type: FILE
    match:
      event_type: file_modified
      resource: {path: [/etc/pam.d/*]}
`)
	env["RULES_FILE"] = rulesFile
	env["RULES_BUILTIN"] = "false"
	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })

	base := time.Now().UTC().Add(-time.Hour)
	at := func(sec int) string { return base.Add(time.Duration(sec) * time.Second).Format(time.RFC3339) }
	spray := func(id int, user, ip string, sec int) []byte {
		return ev(uuidFor(id), at(sec), "user_login", "FAILURE", user, "vpn-01", map[string]any{"ip_address": ip})
	}
	publish(t, s.queue,
		spray(1, "u1", "203.0.113.7", 0), spray(2, "u1", "203.0.113.7", 10), spray(3, "u2", "203.0.113.7", 20),
		spray(4, "u3", "198.51.100.1", 30), // outside the CIDR
		spray(5, "u3", "203.0.113.7", 300), // third distinct user: alert
		ev(uuidFor(6), at(310), "user_login", "SUCCESS", "admin7", "vpn-01", nil),
		ev(uuidFor(7), at(311), "user_login", "SUCCESS", "xadmin7", "vpn-01", nil),
		ev(uuidFor(8), at(312), "file_modified", "MODIFIED", "root", "vpn-01", map[string]any{"resource": "/etc/pam.d//sshd"}),
		ev(uuidFor(9), at(313), "file_modified", "MODIFIED", "root", "vpn-01", map[string]any{"resource": "/etc/shadow"}),
	)
	got := map[string]string{}
	for _, a := range decodeAlerts(t, collect(t, s.alertQueue, 3, 2*time.Second, 30*time.Second)) {
		got[a["analysis_rule"].(map[string]any)["rule_id"].(string)] = fmt.Sprint(a["correlation_id"])
	}
	want := map[string]string{"CUSTOM-SPRAY": uuidFor(5), "CUSTOM-ADMIN": uuidFor(6), "CUSTOM-PAM": uuidFor(8)}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("alerts by rule = %v, want %v", got, want)
	}

	// A broken file is refused; the running rules stay.
	writeRules("rules:\n  - id: BROKEN\n    severity: HIGH\n    match: {user_id: {like: x}}\n")
	waitMetric(t, s.promURL, `audit_analysis_rules_reload_total{result="failure"}`, 1, 10*time.Second)
	publish(t, s.queue, ev(uuidFor(10), at(400), "user_login", "SUCCESS", "admin8", "vpn-01", nil))
	if a := decodeAlerts(t, collect(t, s.alertQueue, 1, time.Second, 30*time.Second)); len(a) != 1 {
		t.Fatalf("after a failed reload got %d alerts, want 1 from the running rules", len(a))
	}

	// A good file replaces them.
	writeRules("rules:\n  - id: ONLY-PAM\n    severity: HIGH\n    resource_type: FILE\n    match: {resource: {path: [/etc/pam.d/*]}}\n")
	waitMetric(t, s.promURL, `audit_analysis_rules_reload_total{result="success"}`, 1, 10*time.Second)
	if n := metric(t, s.promURL, "audit_analysis_rules_loaded"); n != 1 {
		t.Errorf("audit_analysis_rules_loaded = %v, want 1", n)
	}
	publish(t, s.queue,
		ev(uuidFor(11), at(500), "user_login", "SUCCESS", "admin9", "vpn-01", nil),
		ev(uuidFor(12), at(501), "file_modified", "MODIFIED", "root", "vpn-01", map[string]any{"resource": "/etc/pam.d/login"}))
	a := decodeAlerts(t, collect(t, s.alertQueue, 1, 2*time.Second, 30*time.Second))
	if len(a) != 1 || a[0]["analysis_rule"].(map[string]any)["rule_id"] != "ONLY-PAM" {
		t.Fatalf("after reload got %v, want one ONLY-PAM alert", a)
	}
}

func waitMetric(t *testing.T, base, series string, want float64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if metric(t, base, series) == want {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s = %v after %s, want %v", series, metric(t, base, series), d, want)
}

func TestServiceAndReplayProduceTheSameAlerts(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	// The built-in and the example rules together: thresholds, distinct
	// thresholds, sequences and new-value rules.
	rulesFile := filepath.Join(t.TempDir(), "rules.yaml")
	defaults, err := os.ReadFile("../../rules/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	examples, err := os.ReadFile("../../rules/examples.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, exampleRules, _ := bytes.Cut(examples, []byte("\nrules:\n"))
	if err := os.WriteFile(rulesFile, append(append(defaults, '\n'), exampleRules...), 0o644); err != nil {
		t.Fatal(err)
	}
	env["RULES_FILE"] = rulesFile
	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })
	checkSameAlertsAsReplay(t, s)
}

// checkSameAlertsAsReplay publishes events to s and requires the alerts
// replay raises from the same file with the same rules, and the malformed
// lines dead-lettered. The events are the sample's, after sequences and
// first-seen values for the example rules in October.
func checkSameAlertsAsReplay(t *testing.T, s *service) {
	t.Helper()
	sample, err := os.ReadFile("../../testdata/sample-events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	data := append(sequencesAndNewValues(), sample...)
	input := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(input, data, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"audit-log-analysis", "replay", "--quiet", input}
	rulesFile := s.env["RULES_FILE"]
	if rulesFile != "" {
		args = []string{"audit-log-analysis", "replay", "--quiet", "--rules", rulesFile, input}
	}
	var replayed bytes.Buffer
	err = Main(context.Background(), Env{
		Args:   args,
		Getenv: func(k string) string { return map[string]string{"ENVIRONMENT": "TEST"}[k] },
		Stdin:  strings.NewReader(""), Stdout: &replayed, Stderr: io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]any{}
	kinds := map[string]int{}
	for _, line := range bytes.Split(bytes.TrimSpace(replayed.Bytes()), []byte("\n")) {
		var a map[string]any
		if err := json.Unmarshal(line, &a); err != nil {
			t.Fatal(err)
		}
		want[a["alert_id"].(string)] = a
		switch {
		case a["steps"] != nil:
			kinds["sequence"]++
		case a["new_value"] != nil:
			kinds["new_value"]++
		case a["window"] != nil:
			kinds["threshold"]++
		default:
			kinds["stateless"]++
		}
	}
	if len(want) == 0 {
		t.Fatal("replay produced no alerts")
	}
	if rulesFile != "" {
		checkPlanted(t, want, kinds)
	}

	publish(t, s.queue, bytes.Split(bytes.TrimSpace(data), []byte("\n"))...)
	got := decodeAlerts(t, collect(t, s.alertQueue, len(want), 3*time.Second, 60*time.Second))
	if len(got) != len(want) {
		t.Fatalf("service raised %d alerts, replay %d", len(got), len(want))
	}
	for _, a := range got {
		id := a["alert_id"].(string)
		w, ok := want[id]
		if !ok {
			t.Errorf("service alert %s (%v) is not in the replay", id, a["analysis_rule"])
			continue
		}
		// The alert's own timestamp is its arrival time: the wall clock in
		// the service, the newest event time in replay. Everything else,
		// ids included, must match.
		delete(a, "timestamp")
		delete(w, "timestamp")
		ga, _ := json.Marshal(a)
		wa, _ := json.Marshal(w)
		if !bytes.Equal(ga, wa) {
			t.Errorf("alert %s differs:\nservice %s\nreplay  %s", id, ga, wa)
		}
	}
	if n := len(collect(t, s.deadQueue, 3, time.Second, 30*time.Second)); n != 3 {
		t.Errorf("dead letters = %d, want the 3 malformed lines", n)
	}
}

// checkPlanted requires every kind of alert among those replay raised, and
// exactly the alerts planted by sequencesAndNewValues.
func checkPlanted(t *testing.T, want map[string]map[string]any, kinds map[string]int) {
	t.Helper()
	for _, k := range []string{"sequence", "new_value", "threshold", "stateless"} {
		if kinds[k] == 0 {
			t.Fatalf("replay raised no %s alert (%v): the input misses a case", k, kinds)
		}
	}
	planted := map[string]int{}
	for _, a := range want {
		rule := a["analysis_rule"].(map[string]any)["rule_id"].(string)
		actor := a["triggered_by"].(map[string]any)["actor_id"].(string)
		if strings.HasPrefix(actor, "seq-") || actor == "root" || actor == "svc-report" {
			planted[rule+" "+actor]++
		}
	}
	if wantPlanted := map[string]int{
		"EX-AUTH-010 seq-a": 1, "EX-AUTH-010 seq-b": 1, "EX-PRIV-010 seq-d": 1, "EX-FILE-001 seq-d": 1,
		"EX-AUTH-020 root": 1, "EX-AUTH-021 svc-report": 1, "EX-AUTH-005 svc-report": 10,
	}; !maps.Equal(planted, wantPlanted) {
		t.Errorf("replay raised %v for the planted sequences and first-seen values, want %v", planted, wantPlanted)
	}
}

// sequencesAndNewValues are events for the example sequence and new-value
// rules, in October 2026, some delivered out of order.
func sequencesAndNewValues() []byte {
	var b bytes.Buffer
	n := 900000
	at := func(day int, sec float64) string {
		return time.Date(2026, 10, 1+day, 8, 0, 0, 0, time.UTC).Add(time.Duration(sec * float64(time.Second))).Format(time.RFC3339Nano)
	}
	login := func(ts, result, user, host, ip string) {
		n++
		b.Write(ev(uuidFor(n), ts, "user_login", result, user, host, map[string]any{"ip_address": ip, "protocol": "ssh"}))
		b.WriteByte('\n')
	}
	// Brute force then success, in order; out of order; one failure short.
	for i := range 4 {
		login(at(0, float64(i*40)), "FAILURE", "seq-a", "prod-web-09", "10.20.0.1")
	}
	login(at(0, 170), "SUCCESS", "seq-a", "prod-web-09", "10.20.0.1")
	login(at(0, 400), "SUCCESS", "seq-b", "prod-web-09", "10.20.0.2")
	for _, i := range []int{2, 0, 3, 1} {
		login(at(0, 200+float64(i*40)), "Failure", "seq-b", "prod-web-09", "10.20.0.2")
	}
	for i := range 3 {
		login(at(0, 600+float64(i*40)), "FAILURE", "seq-c", "prod-web-09", "10.20.0.3")
	}
	login(at(0, 780), "SUCCESS", "seq-c", "prod-web-09", "10.20.0.3")
	// A sudoers change, then sudo by the same user.
	n++
	b.Write(ev(uuidFor(n), at(0, 900), "file_modified", "MODIFIED", "seq-d", "prod-web-09", map[string]any{"resource": "/etc/sudoers.d/90-seq"}))
	b.WriteByte('\n')
	n++
	b.Write(ev(uuidFor(n), at(0, 960), "process_started", "STARTED", "seq-d", "prod-web-09", map[string]any{"command": "/usr/bin/sudo -i"}))
	b.WriteByte('\n')
	// A privileged account and a service account learn for a week, then
	// see a new address (and a mapped old one) and a new host.
	for day := range 9 {
		login(at(day, 1200), "SUCCESS", "root", "prod-db-09", "10.30.0.1")
		login(at(day, 1300), "SUCCESS", "svc-report", "prod-db-09", "10.30.0.9")
	}
	login(at(8, 1400), "SUCCESS", "root", "prod-db-09", "::ffff:10.30.0.1")
	login(at(8, 1500), "SUCCESS", "root", "prod-db-09", "10.30.0.2")
	login(at(8, 1600), "SUCCESS", "svc-report", "prod-db-10", "10.30.0.9")
	return b.Bytes()
}

func TestServiceRidesOutARabbitMQOutage(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	u, err := amqp.ParseURI(testenv.RabbitMQURL(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartProxy(t, net.JoinHostPort(u.Host, strconv.Itoa(u.Port)))
	host, port, _ := net.SplitHostPort(proxy.Addr())
	env["RABBITMQ_HOST"], env["RABBITMQ_PORT"] = host, port
	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })

	// The network to the broker fails: every connection cut, new ones
	// refused.
	proxy.SetRefuse(true)
	proxy.Cut()
	s.waitStatus(http.StatusServiceUnavailable, 10*time.Second)
	if _, body := s.health(); body["rabbitmq_connected"] != false || body["redis_connected"] != true {
		t.Errorf("/healthz during the outage = %v", body)
	}
	if resp, err := http.Get(s.appURL + "/livez"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/livez during the outage: %v %v, want 200", resp, err)
	}
	if got := metric(t, s.promURL, "audit_analysis_rabbitmq_consumer_connection_status"); got != 0 {
		t.Errorf("consumer connection status during the outage = %v, want 0", got)
	}

	// Events sent meanwhile wait in the queue and are analysed once the
	// service is back, without anyone restarting it.
	base := time.Now().UTC().Add(-time.Minute)
	for i := range 3 {
		publish(t, s.queue, ev(uuidFor(300+i), base.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano),
			"user_login", "FAILURE", "trudy", "prod-app-01", nil))
	}
	proxy.SetRefuse(false)
	s.waitHealthy(30 * time.Second)
	alerts := decodeAlerts(t, collect(t, s.alertQueue, 1, 2*time.Second, 30*time.Second))
	if len(alerts) != 1 || alerts[0]["correlation_id"] != uuidFor(302) {
		t.Fatalf("after the outage got %v, want one alert triggered by event 302", alerts)
	}
	if got := metric(t, s.promURL, "audit_analysis_rabbitmq_consumer_connection_status"); got != 1 {
		t.Errorf("consumer connection status after the outage = %v, want 1", got)
	}
}

func TestTwoReplicasShareStateThroughRedis(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	// Prefetch 1 makes the broker hand the events out in turn, so every
	// burst is split between the replicas.
	env["RABBITMQ_PREFETCH"] = "1"
	a := startService(t, env)
	envB := maps.Clone(env)
	envB["APP_PORT"] = strconv.Itoa(testenv.FreePort(t))
	envB["PROMETHEUS_PORT"] = strconv.Itoa(testenv.FreePort(t))
	b := startService(t, envB)
	t.Cleanup(func() { deleteKeys(t, redisAddr, a.prefix) })

	const users = 10
	base := time.Now().UTC().Add(-5 * time.Minute)
	var bodies [][]byte
	for i := range 4 {
		for u := range users {
			at := base.Add(time.Duration(i*5+u) * time.Second).Format(time.RFC3339Nano)
			bodies = append(bodies, ev(uuidFor(1000+i*users+u), at, "user_login", "FAILURE", fmt.Sprint("user", u), "prod-web-01", nil))
		}
	}
	publish(t, a.queue, bodies...)
	alerts := decodeAlerts(t, collect(t, a.alertQueue, users, 3*time.Second, 60*time.Second))
	perUser := map[string]int{}
	for _, al := range alerts {
		perUser[al["triggered_by"].(map[string]any)["actor_id"].(string)]++
	}
	if len(alerts) != users || len(perUser) != users {
		t.Fatalf("got %d alerts for %d users, want exactly one per user: %v", len(alerts), len(perUser), perUser)
	}
	for _, s := range []*service{a, b} {
		if n := metric(t, s.promURL, "audit_analysis_processed_total"); n == 0 || n == float64(len(bodies)) {
			t.Errorf("replica %s processed %v of %d events; the test needs both to take part", s.appURL, n, len(bodies))
		}
	}
}
