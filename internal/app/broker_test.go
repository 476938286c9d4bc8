package app

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// declareQueue declares queue with args on the shared broker, as the
// platform would before the service starts.
func declareQueue(t *testing.T, queue string, args amqp.Table) {
	t.Helper()
	ch, done := openChannel(t)
	defer done()
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}
}

// hasArgs reports whether queue is still declared with exactly args.
func hasArgs(t *testing.T, queue string, args amqp.Table) error {
	t.Helper()
	ch, done := openChannel(t)
	defer done()
	_, err := ch.QueueDeclare(queue, true, false, false, false, args)
	return err
}

// onlyURLs replaces the broker variables of env with RABBITMQ_URLS.
func onlyURLs(env map[string]string, urls ...string) {
	for _, k := range []string{"RABBITMQ_HOST", "RABBITMQ_PORT", "RABBITMQ_USER", "RABBITMQ_PASS"} {
		delete(env, k)
	}
	env["RABBITMQ_URLS"] = strings.Join(urls, ",")
}

// deadBrokerURL is url with its host and port replaced by an address where
// nothing listens.
func deadBrokerURL(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	return u.String()
}

func TestServiceUsesTheClustersQuorumEventQueueAndALimitedAlertQueue(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	onlyURLs(env, deadBrokerURL(t, testenv.RabbitMQURL(t)), testenv.RabbitMQURL(t))
	quorum := amqp.Table{"x-queue-type": "quorum"}
	limited := amqp.Table{"x-max-length": int32(1000)}
	declareQueue(t, env["RABBITMQ_QUEUE"], quorum)
	declareQueue(t, env["RABBITMQ_ALERT_QUEUE"], limited)
	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })

	at := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	publish(t, s.queue, ev(uuidFor(1), at, "file_modified", "MODIFIED", "eve", "db-01", map[string]any{"resource": "/etc/shadow"}))
	alerts := decodeAlerts(t, collect(t, s.alertQueue, 1, time.Second, 30*time.Second))
	if len(alerts) != 1 || alerts[0]["correlation_id"] != uuidFor(1) {
		t.Fatalf("alerts %v, want the one for event 1", alerts)
	}
	if err := hasArgs(t, s.queue, quorum); err != nil {
		t.Errorf("event queue changed: %v", err)
	}
	if err := hasArgs(t, s.alertQueue, limited); err != nil {
		t.Errorf("alert queue changed: %v", err)
	}
	if code, body := s.health(); code != http.StatusOK || body["rabbitmq_error"] != nil {
		t.Errorf("/healthz = %d %v, want healthy without an error: a node that is down is not a problem to fix", code, body)
	}
	waitMetric(t, s.promURL, fmt.Sprintf(`audit_analysis_rabbitmq_queue_messages{queue=%q}`, s.queue), 0, 20*time.Second)
	if !strings.Contains(s.logs.String(), "connect failed") && !strings.Contains(s.logs.String(), `"msg":"connected"`) {
		t.Errorf("no connection logged:\n%s", s.logs.String())
	}
}

func TestServiceDeadLettersAMessageDeliveredTooOftenWithoutReadingIt(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	env["RABBITMQ_MAX_DELIVERIES"] = "3"
	declareQueue(t, env["RABBITMQ_QUEUE"], amqp.Table{"x-queue-type": "quorum"})
	at := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	killer := ev(uuidFor(1), at, "file_modified", "MODIFIED", "eve", "db-01", map[string]any{"resource": "/etc/shadow"})
	publish(t, env["RABBITMQ_QUEUE"], killer)
	// Three deliveries that ended without a settlement: what a message
	// that kills the process looks like from the broker.
	for range 3 {
		takeAndDrop(t, env["RABBITMQ_QUEUE"])
	}
	innocent := ev(uuidFor(2), at, "file_modified", "MODIFIED", "eve", "db-01", map[string]any{"resource": "/etc/sudoers"})
	publish(t, env["RABBITMQ_QUEUE"], innocent)

	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })
	dead := collect(t, s.deadQueue, 1, time.Second, 30*time.Second)
	if len(dead) != 1 || dead[0].Headers["x-rejection-reason"] != "redelivery_limit" || string(dead[0].Body) != string(killer) {
		t.Fatalf("dead letters %v, want the message delivered three times before, with reason redelivery_limit", dead)
	}
	alerts := decodeAlerts(t, collect(t, s.alertQueue, 1, time.Second, 30*time.Second))
	if len(alerts) != 1 || alerts[0]["correlation_id"] != uuidFor(2) {
		t.Fatalf("alerts %v, want only the one for the message within the limit", alerts)
	}
	waitMetric(t, s.promURL, `audit_analysis_rejected_messages_total{reason="redelivery_limit"}`, 1, 10*time.Second)
	if n := queueDepth(t, s.queue); n != 0 {
		t.Errorf("event queue holds %d messages, want 0", n)
	}
}

// takeAndDrop takes one message from queue and closes its channel without
// settling it, so the broker delivers it again.
func takeAndDrop(t *testing.T, queue string) {
	t.Helper()
	ch, done := openChannel(t)
	defer done()
	d, ok, err := ch.Get(queue, false)
	if err != nil || !ok {
		t.Fatalf("get from %s: %v %v", queue, ok, err)
	}
	_ = d
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestHealthSaysWhatToFixWhenTheBrokerRefusesTheService(t *testing.T) {
	t.Parallel()
	redisAddr := testenv.RedisAddr(t)
	tests := []struct {
		name   string
		edit   func(u *url.URL)
		reason string
	}{
		{"a wrong password", func(u *url.URL) { u.User = url.UserPassword(u.User.Username(), "not-the-password") }, "authentication_failed"},
		{"a virtual host that does not exist", func(u *url.URL) { u.Path = "/" + testenv.Name(t, "no-such-vhost") }, "vhost_not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := serviceEnv(t, redisAddr)
			u, err := url.Parse(testenv.RabbitMQURL(t))
			if err != nil {
				t.Fatal(err)
			}
			tt.edit(u)
			onlyURLs(env, u.String())
			s := startServiceUnhealthy(t, env)
			var body map[string]any
			deadline := time.Now().Add(30 * time.Second)
			for {
				var code int
				code, body = s.health()
				if code == http.StatusServiceUnavailable && body["rabbitmq_error"] != nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("/healthz = %d %v, want 503 with rabbitmq_error", code, body)
				}
				time.Sleep(100 * time.Millisecond)
			}
			msg, _ := body["rabbitmq_error"].(string)
			if !strings.HasPrefix(msg, tt.reason+":") || strings.Contains(msg, "not-the-password") {
				t.Errorf("rabbitmq_error %q, want reason %s without the password", msg, tt.reason)
			}
			for _, field := range []string{"status", "rabbitmq_connected", "redis_connected", "consumer_thread_alive"} {
				if _, ok := body[field]; !ok {
					t.Errorf("/healthz lost field %s: %v", field, body)
				}
			}
			waitMetricAtLeast(t, s.promURL, fmt.Sprintf(`audit_analysis_rabbitmq_errors_total{reason=%q}`, tt.reason), 2, 30*time.Second)
			if resp, err := http.Get(s.appURL + "/livez"); err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("/livez: %v %v, want 200: a restart cannot fix credentials", resp, err)
			}
			if !strings.Contains(s.logs.String(), `"level":"ERROR"`) || !strings.Contains(s.logs.String(), `"fix":`) {
				t.Errorf("no ERROR log saying what to fix:\n%s", s.logs.String())
			}
		})
	}
}

// startServiceUnhealthy starts the service and waits until /healthz
// answers, whatever it says.
func startServiceUnhealthy(t *testing.T, env map[string]string) *service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{
		t: t, env: env, cancel: cancel, done: make(chan error, 1), logs: &syncBuffer{},
		appURL:  "http://127.0.0.1:" + env["APP_PORT"],
		promURL: "http://127.0.0.1:" + env["PROMETHEUS_PORT"],
		queue:   env["RABBITMQ_QUEUE"], alertQueue: env["RABBITMQ_ALERT_QUEUE"], deadQueue: env["RABBITMQ_QUEUE"] + ".dead-letter",
		prefix: env["REDIS_KEY_PREFIX"],
	}
	go func() {
		s.done <- Main(ctx, Env{Args: []string{"audit-log-analysis"}, Getenv: func(k string) string { return env[k] },
			Stdin: strings.NewReader(""), Stdout: s.logs, Stderr: s.logs, Build: Build{Version: "test"}})
	}()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("service logs:\n%s", s.logs.String())
		}
		if addr, ok := sharedRedis(env); ok {
			deleteKeys(t, addr, s.prefix)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if code, _ := s.health(); code != 0 {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz never answered")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitMetricAtLeast(t *testing.T, base, series string, least float64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if metric(t, base, series) >= least {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s = %v after %s, want at least %v", series, metric(t, base, series), d, least)
}

func TestAFailedStartReleasesItsPorts(t *testing.T) {
	t.Parallel()
	env := serviceEnv(t, testenv.RedisAddr(t))
	// The metrics port is taken: the start fails after the app port was
	// bound, and must give it back.
	taken, err := net.Listen("tcp", ":"+env["PROMETHEUS_PORT"])
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	err = Main(context.Background(), Env{Args: []string{"audit-log-analysis"}, Getenv: func(k string) string { return env[k] },
		Stdin: strings.NewReader(""), Stdout: &syncBuffer{}, Stderr: &syncBuffer{}, Build: Build{Version: "test"}})
	if err == nil || !strings.Contains(err.Error(), "PROMETHEUS_PORT") {
		t.Fatalf("Main returned %v, want an error about PROMETHEUS_PORT", err)
	}
	ln, err := net.Listen("tcp", ":"+env["APP_PORT"])
	if err != nil {
		t.Fatalf("APP_PORT still taken after the failed start: %v", err)
	}
	ln.Close()
}

func TestServiceReportsABlockedBrokerAndStopsInTimeDuringTheAlarm(t *testing.T) {
	t.Parallel()
	node := testenv.StartRabbitMQ(t, testenv.RabbitMQOptions{})
	// Redis goes away through a proxy, so it keeps its data.
	redisAddr := testenv.RedisAddr(t)
	rp := testenv.StartProxy(t, redisAddr)
	env := serviceEnv(t, rp.Addr())
	onlyURLs(env, node.URL())
	env["SHUTDOWN_TIMEOUT"] = "8s"
	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })
	alarm := false
	t.Cleanup(func() {
		if alarm {
			node.SetMemoryAlarm(false)
		}
	})

	// An alert has to be published during the alarm, and nobody can
	// publish the event that causes it then. So the third failed login of
	// a burst is taken while Redis is unreachable and held, the alarm is
	// raised, and Redis comes back.
	failures := 0
	blockedAlert := func(user string) {
		t.Helper()
		at := time.Now().UTC().Add(-time.Minute)
		login := func(n int) []byte {
			return ev(uuidFor(failures+n), at.Add(time.Duration(n)*time.Second).Format(time.RFC3339), "user_login", "FAILURE", user, "db-01", nil)
		}
		publishAt(t, node.URL(), s.queue, login(1), login(2))
		waitMetric(t, s.promURL, "audit_analysis_processed_total", float64(failures+2), 20*time.Second)
		rp.SetRefuse(true)
		rp.Cut()
		s.waitStatus(http.StatusServiceUnavailable, 20*time.Second)
		publishAt(t, node.URL(), s.queue, login(3))
		failures += 3
		waitMetricAtLeast(t, s.promURL, `audit_analysis_batch_failures_total{dependency="state_store"}`, 1, 20*time.Second)
		node.SetMemoryAlarm(true)
		alarm = true
		rp.SetRefuse(false)
		waitMetric(t, s.promURL, "audit_analysis_rabbitmq_blocked", 1, 30*time.Second)
	}

	blockedAlert("mallory")
	// The batch reached the publish over Redis's own client; /healthz
	// says Redis is up once its pinger, every second, has seen it too.
	code, body := s.health()
	for deadline := time.Now().Add(10 * time.Second); body["redis_connected"] != true && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		code, body = s.health()
	}
	if code != http.StatusServiceUnavailable || body["rabbitmq_blocked"] == nil || body["redis_connected"] != true || body["rabbitmq_connected"] != true {
		t.Errorf("/healthz during the alarm = %d %v, want 503 with rabbitmq_blocked, both connections up", code, body)
	}
	if resp, err := http.Get(s.appURL + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz during the alarm: %v %v, want 503", resp, err)
	}
	// The alarm ends: the held batch goes through, nothing is lost.
	node.SetMemoryAlarm(false)
	alarm = false
	s.waitHealthy(30 * time.Second)
	// The publish cut short by the block may still have reached the
	// queue: a duplicate, with the same id.
	ids := map[any]bool{}
	for _, a := range decodeAlerts(t, collectAt(t, node.URL(), s.alertQueue, 1, time.Second, 30*time.Second)) {
		ids[a["alert_id"]] = true
	}
	if len(ids) != 1 {
		t.Fatalf("alerts with ids %v after the alarm, want one alert", ids)
	}
	if got := metric(t, s.promURL, "audit_analysis_rabbitmq_blocked"); got != 0 {
		t.Errorf("audit_analysis_rabbitmq_blocked = %v after the alarm, want 0", got)
	}

	// Stopping during an alarm, with a batch held, takes no longer than
	// SHUTDOWN_TIMEOUT.
	blockedAlert("trudy")
	begin := time.Now()
	if err := s.stop(); err != nil {
		t.Errorf("Main returned %v", err)
	}
	took := time.Since(begin)
	t.Logf("stopped %s after cancellation during a memory alarm (SHUTDOWN_TIMEOUT 8s)", took.Round(time.Millisecond))
	if took > 8*time.Second {
		t.Errorf("stopping during the alarm took %s, more than SHUTDOWN_TIMEOUT", took)
	}
}

func TestServiceConnectsOverTLSWithTheConfiguredFiles(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	node := testenv.StartRabbitMQ(t, testenv.RabbitMQOptions{TLS: pki, VerifyPeer: true})
	redisAddr := testenv.RedisAddr(t)
	env := serviceEnv(t, redisAddr)
	onlyURLs(env, node.TLSURL())
	env["RABBITMQ_TLS_CA_FILE"] = pki.CAFile
	env["RABBITMQ_TLS_CERT_FILE"] = pki.ClientCert
	env["RABBITMQ_TLS_KEY_FILE"] = pki.ClientKey
	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })
	at := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	publishAt(t, node.URL(), s.queue, ev(uuidFor(1), at, "file_modified", "MODIFIED", "eve", "db-01", map[string]any{"resource": "/etc/shadow"}))
	if alerts := decodeAlerts(t, collectAt(t, node.URL(), s.alertQueue, 1, time.Second, 30*time.Second)); len(alerts) != 1 {
		t.Fatalf("got %d alerts over TLS, want 1", len(alerts))
	}

	// The same service trusting another CA refuses the broker and says so.
	env2 := serviceEnv(t, redisAddr)
	onlyURLs(env2, node.TLSURL())
	env2["RABBITMQ_TLS_CA_FILE"] = pki.OtherCAFile
	s2 := startServiceUnhealthy(t, env2)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, body := s2.health()
		if msg, _ := body["rabbitmq_error"].(string); strings.HasPrefix(msg, "tls:") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz = %v, want a tls rabbitmq_error", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestServiceStopsInTimeWhenTheBrokerStopsAnswering(t *testing.T) {
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
	env["SHUTDOWN_TIMEOUT"] = "5s"
	s := startService(t, env)
	t.Cleanup(func() { deleteKeys(t, redisAddr, s.prefix) })

	// The network to the broker swallows everything: nothing closes, no
	// reply comes, so every clean close can only time out.
	proxy.SetPaused(true)
	begin := time.Now()
	if err := s.stop(); err != nil {
		t.Errorf("Main returned %v", err)
	}
	took := time.Since(begin)
	t.Logf("stopped %s after cancellation with the broker silent (SHUTDOWN_TIMEOUT 5s)", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("stopping took %s, more than SHUTDOWN_TIMEOUT", took)
	}
	proxy.SetPaused(false)
}
