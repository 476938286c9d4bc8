package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/state"
	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// watch runs a redisWatch for c until the test ends and returns its log
// and metrics.
func watch(t *testing.T, c config.Redis, prefix string) (*syncBuffer, *metrics) {
	t.Helper()
	rdb, err := newRedisClient(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	logs := &syncBuffer{}
	m := newMetrics(prometheus.NewRegistry())
	w := newRedisWatch(rdb, state.NewMarker(rdb, prefix), c, &health{}, m, slog.New(slog.NewJSONHandler(logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return logs, m
}

// waitLog waits until the log holds a line with msg and returns the lines.
func waitLog(t *testing.T, logs *syncBuffer, msg string, d time.Duration) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		lines := logLines(t, logs.String())
		for _, l := range lines {
			if l["msg"] == msg {
				return lines
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log after %s:\n%s", msg, d, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRedisWatchLogsConnectingThenWhyTheDialFailed(t *testing.T) {
	t.Parallel()
	closed := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	causes := map[string]string{}
	for name, c := range map[string]struct{ addr, want string }{
		"connection refused": {closed, "connection refused"},
		"unknown host":       {"nonexistent-host.invalid:6379", "lookup nonexistent-host.invalid"},
	} {
		t.Run(name, func(t *testing.T) {
			logs, _ := watch(t, config.Redis{Addr: c.addr}, "test:")
			lines := waitLog(t, logs, "redis connect failed; retrying every second", 15*time.Second)
			if lines[0]["msg"] != "redis connecting" || lines[0]["level"] != "INFO" || lines[0]["addr"] != c.addr {
				t.Errorf("first line %v, want redis connecting at INFO with the address", lines[0])
			}
			failed := lines[1]
			cause, _ := failed["error"].(string)
			if !strings.Contains(cause, c.want) || strings.Contains(cause, "deadline") {
				t.Errorf("error %q, want the dial's cause (%s)", cause, c.want)
			}
			causes[name] = cause
			for _, l := range lines {
				if strings.Contains(fmt.Sprint(l["msg"]), "disconnected") {
					t.Errorf("logged %q before ever connecting", l["msg"])
				}
			}
		})
	}
	if causes["connection refused"] == causes["unknown host"] {
		t.Errorf("both failures read %q", causes["unknown host"])
	}
}

func TestRedisWatchReportsARestartThatLostTheState(t *testing.T) {
	t.Parallel()
	rs := testenv.StartRedis(t)
	logs, m := watch(t, config.Redis{Addr: rs.Addr()}, "test:")
	waitLog(t, logs, "redis connected", 10*time.Second)
	// Two answered pings with the marker in place: nothing lost.
	time.Sleep(2500 * time.Millisecond)
	if n := testutil.ToFloat64(m.stateResets); n != 0 {
		t.Fatalf("state resets %v on a Redis that lost nothing", n)
	}
	rs.Stop()
	waitLog(t, logs, "redis disconnected; retrying every second", 10*time.Second)
	rs.Start()
	lines := waitLog(t, logs, "redis lost the service's state: restarted without persistence, failed over to a replica without the data, flushed, or evicting keys", 10*time.Second)
	var reconnect, reset map[string]any
	for _, l := range lines {
		switch {
		case l["msg"] == "redis connected" && l["down_for"] != nil:
			reconnect = l
		case l["level"] == "ERROR":
			reset = l
		}
	}
	if d, ok := reconnect["down_for"].(string); !ok || !strings.HasSuffix(d, "s") {
		t.Errorf("reconnect line %v, want down_for as a duration string", reconnect)
	}
	if d, ok := reset["state_kept_for"].(string); !ok || !strings.HasSuffix(d, "s") || reset["noticed_by"] != "this replica" {
		t.Errorf("reset line %v, want state_kept_for as a duration string, noticed by this replica", reset)
	}
	if n := testutil.ToFloat64(m.stateResets); n != 1 {
		t.Errorf("state resets %v after one restart, want 1", n)
	}
	time.Sleep(2500 * time.Millisecond)
	if n := testutil.ToFloat64(m.stateResets); n != 1 {
		t.Errorf("state resets %v two seconds later, want still 1", n)
	}
}

func TestRedisTLSVerifiesTheCAAndTheName(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	good := testenv.StartRedis(t, testenv.RedisWithTLS(testenv.RedisTLSFrom(pki, true)))
	wrongName := testenv.StartRedis(t, testenv.RedisWithTLS(&testenv.RedisTLS{
		CAFile: pki.CAFile, CertFile: pki.WrongNameCert, KeyFile: pki.WrongNameKey,
	}))
	client := config.TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	for _, c := range []struct {
		name  string
		addr  string
		files config.TLSFiles
		want  string // "" for success, else part of the error
	}{
		{"the CA and a client certificate", good.Addr(), client, ""},
		{"localhost by name", strings.Replace(good.Addr(), "127.0.0.1", "localhost", 1), client, ""},
		{"another CA", good.Addr(), config.TLSFiles{CAFile: pki.OtherCAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "certificate signed by unknown authority"},
		{"a certificate for another name", strings.Replace(wrongName.Addr(), "127.0.0.1", "localhost", 1), client, "valid for elsewhere.invalid, not localhost"},
		{"no client certificate where one is required", good.Addr(), config.TLSFiles{CAFile: pki.CAFile}, "certificate required"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			rdb, err := newRedisClient(config.Redis{Addr: c.addr, TLS: true, TLSFiles: c.files})
			if err != nil {
				t.Fatal(err)
			}
			defer rdb.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err = rdb.Set(ctx, "k", "v", 0).Err()
			switch {
			case c.want == "" && err != nil:
				t.Errorf("SET: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("SET: error %v, want one saying %q", err, c.want)
			}
		})
	}
}

func TestRedisClusterOverTLSVerifiesEveryNode(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	rc := testenv.StartRedisCluster(t, 3, 0, testenv.RedisWithTLS(testenv.RedisTLSFrom(pki, true)))
	files := config.TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	rdb, err := newRedisClient(config.Redis{ClusterAddrs: rc.Addrs()[:1], TLS: true, TLSFiles: files})
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	s := state.NewRedis(rdb, "test:")
	var updates []state.Update
	for i := range 50 {
		// Groups on every master.
		updates = append(updates, state.Update{Key: fmt.Sprintf("%04x", i), EventID: "e", Time: 1, Count: 2, Window: time.Minute})
	}
	if _, err := s.Apply(t.Context(), updates); err != nil {
		t.Fatalf("apply on a TLS cluster: %v", err)
	}
	files.CAFile = pki.OtherCAFile
	other, err := newRedisClient(config.Redis{ClusterAddrs: rc.Addrs()[:1], TLS: true, TLSFiles: files})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := other.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("PING trusting another CA: %v, want refused", err)
	}
}

// redisACL is the least a user needs: the service's keys, reading and
// writing them, scripts, and what clients say on connecting; no command
// marked dangerous (FLUSHALL, KEYS, CONFIG...).
const redisACL = "resetchannels -@all +@connection +@read +@write +@scripting -@dangerous +cluster|slots +cluster|shards"

func TestServiceRunsAsARedisACLUser(t *testing.T) {
	t.Parallel()
	rs := testenv.StartRedis(t)
	env := serviceEnv(t, rs.Addr())
	admin := rs.Client()
	args := []any{"acl", "setuser", "audit", "on", ">s3cret", "~" + env["REDIS_KEY_PREFIX"] + "*"}
	for _, rule := range strings.Fields(redisACL) {
		args = append(args, rule)
	}
	if err := admin.Do(t.Context(), args...).Err(); err != nil {
		t.Fatal(err)
	}
	// Nobody gets in without a user name from now on.
	if err := admin.Do(t.Context(), "acl", "setuser", "default", "off").Err(); err != nil {
		t.Fatal(err)
	}
	env["REDIS_USERNAME"], env["REDIS_PASSWORD"] = "audit", "s3cret"
	s := startService(t, env)
	burst(t, s, "acl_user", 0)
	if logs := s.logs.String(); strings.Contains(logs, "NOPERM") || strings.Contains(logs, "cannot check whether redis kept") {
		t.Errorf("the ACL user was refused something:\n%s", logs)
	}
}

// burst publishes three failed logins for user and requires one alert
// triggered by the third.
func burst(t *testing.T, s *service, user string, n int) {
	t.Helper()
	base := time.Now().UTC().Add(-time.Minute)
	for i := range 3 {
		publish(t, s.queue, ev(uuidFor(n+i), base.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano),
			"user_login", "FAILURE", user, "prod-db-01", nil))
	}
	alerts := decodeAlerts(t, collect(t, s.alertQueue, 1, 2*time.Second, 30*time.Second))
	if len(alerts) != 1 || alerts[0]["correlation_id"] != uuidFor(n+2) {
		t.Fatalf("got %v, want one alert triggered by event %d", alerts, n+2)
	}
}

func TestServiceOverRedisTLSWithAClientCertificate(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	rs := testenv.StartRedis(t, testenv.RedisWithTLS(testenv.RedisTLSFrom(pki, true)))
	env := serviceEnv(t, rs.Addr())
	env["REDIS_TLS_CA_FILE"], env["REDIS_TLS_CERT_FILE"], env["REDIS_TLS_KEY_FILE"] = pki.CAFile, pki.ClientCert, pki.ClientKey
	s := startService(t, env)
	burst(t, s, "tls_user", 0)
}

func TestServiceNoticesWhenRedisLosesItsState(t *testing.T) {
	t.Parallel()
	const resets = "audit_analysis_state_resets_total"
	t.Run("FLUSHALL and a restart without persistence are counted", func(t *testing.T) {
		t.Parallel()
		rs := testenv.StartRedis(t)
		s := startService(t, serviceEnv(t, rs.Addr()))
		burst(t, s, "before", 0)
		// Two failures of a burst before the loss, the third after.
		base := time.Now().UTC().Add(-time.Minute)
		failure := func(i int) []byte {
			return ev(uuidFor(100+i), base.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano),
				"user_login", "FAILURE", "spanning", "prod-db-01", nil)
		}
		publish(t, s.queue, failure(0), failure(1))
		waitMetric(t, s.promURL, "audit_analysis_processed_total", 5, 30*time.Second)
		time.Sleep(2 * time.Second)
		if n := metric(t, s.promURL, resets); n != 0 {
			t.Fatalf("%s = %v before anything was lost", resets, n)
		}
		if err := rs.Client().FlushAll(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitMetric(t, s.promURL, resets, 1, 5*time.Second)
		t.Logf("FLUSHALL counted after %s", time.Since(start).Round(time.Millisecond))
		if !strings.Contains(s.logs.String(), `"level":"ERROR","msg":"redis lost the service's state`) {
			t.Errorf("no ERROR line for the loss:\n%s", s.logs.String())
		}
		// What the README says is lost: the burst under way.
		publish(t, s.queue, failure(2))
		waitMetric(t, s.promURL, "audit_analysis_processed_total", 6, 30*time.Second)
		if a := collect(t, s.alertQueue, 0, 2*time.Second, 10*time.Second); len(a) != 0 {
			t.Errorf("%d alerts for a burst whose first events were lost, want none", len(a))
		}

		rs.Stop()
		s.waitStatus(http.StatusServiceUnavailable, 10*time.Second)
		rs.Start()
		start = time.Now()
		waitMetric(t, s.promURL, resets, 2, 10*time.Second)
		t.Logf("restart counted %s after Redis was back", time.Since(start).Round(time.Millisecond))
		s.waitHealthy(10 * time.Second)
		// The service carries on: a new burst alerts.
		burst(t, s, "after", 10)
		time.Sleep(2 * time.Second)
		if n := metric(t, s.promURL, resets); n != 2 {
			t.Errorf("%s = %v, want it to stay 2", resets, n)
		}
	})
	t.Run("a restart with persistence is not", func(t *testing.T) {
		t.Parallel()
		rs := testenv.StartRedis(t, testenv.RedisPersistent())
		s := startService(t, serviceEnv(t, rs.Addr()))
		time.Sleep(2 * time.Second) // the marker is written
		rs.Stop()
		s.waitStatus(http.StatusServiceUnavailable, 10*time.Second)
		rs.Start()
		s.waitHealthy(10 * time.Second)
		time.Sleep(3 * time.Second)
		if n := metric(t, s.promURL, resets); n != 0 {
			t.Errorf("%s = %v after a restart that kept the data, want 0\n%s", resets, n, s.logs.String())
		}
	})
}

func TestServiceRaisesTheSameAlertsOnARedisCluster(t *testing.T) {
	t.Parallel()
	rc := testenv.StartRedisCluster(t, 3, 0)
	env := serviceEnv(t, "127.0.0.1:1")
	delete(env, "REDIS_HOST")
	delete(env, "REDIS_PORT")
	env["REDIS_CLUSTER_ADDRS"] = strings.Join(rc.Addrs(), ",")
	s := startService(t, env)
	if !strings.Contains(s.logs.String(), `"msg":"redis connected","component":"redis","mode":"cluster"`) {
		t.Errorf("the service did not say it uses the cluster:\n%s", s.logs.String())
	}
	checkSameAlertsAsReplay(t, s)
}

func TestServiceRidesOutASentinelFailover(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	rs := testenv.StartRedisSentinel(t)
	env := serviceEnv(t, "127.0.0.1:1")
	delete(env, "REDIS_HOST")
	delete(env, "REDIS_PORT")
	env["REDIS_SENTINEL_ADDRS"] = strings.Join(rs.SentinelAddrs(), ",")
	env["REDIS_SENTINEL_MASTER"] = rs.MasterName()
	s := startService(t, env)

	// Two failures for each user before the failover, the third after:
	// every alert needs state written to the old master.
	const users = 5
	base := time.Now().UTC().Add(-time.Minute)
	at := func(i int) string { return base.Add(time.Duration(i) * time.Second).Format(time.RFC3339Nano) }
	var before, after [][]byte
	for u := range users {
		for i := range 3 {
			body := ev(uuidFor(u*10+i), at(u*10+i), "user_login", "FAILURE", fmt.Sprint("failover_user", u), "prod-db-01", nil)
			if i < 2 {
				before = append(before, body)
			} else {
				after = append(after, body)
			}
		}
	}
	publish(t, s.queue, before...)
	waitMetric(t, s.promURL, "audit_analysis_processed_total", float64(len(before)), 30*time.Second)
	// Replication is asynchronous: wait until the replica has it all.
	if err := rs.Master(ctx).Client().Do(ctx, "wait", 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}

	killed := make(chan time.Time, 1)
	go func() {
		start := time.Now()
		rs.KillMaster(ctx)
		killed <- start
	}()
	// Events keep coming while the master is gone.
	time.Sleep(500 * time.Millisecond)
	publish(t, s.queue, after...)
	start := <-killed
	alerts := decodeAlerts(t, collect(t, s.alertQueue, users, 3*time.Second, 60*time.Second))
	t.Logf("%d alerts %s after the master was killed", len(alerts), time.Since(start).Round(time.Millisecond))
	got := map[string]bool{}
	for _, a := range alerts {
		got[fmt.Sprint(a["correlation_id"])] = true
	}
	for u := range users {
		if !got[uuidFor(u*10+2)] {
			t.Errorf("no alert for user %d, triggered by event %d across the failover", u, u*10+2)
		}
	}
	s.waitHealthy(30 * time.Second)
	if n := queueDepth(t, s.queue); n != 0 {
		t.Errorf("event queue holds %d messages, want 0", n)
	}
	if n := metric(t, s.promURL, "audit_analysis_state_resets_total"); n != 0 {
		t.Errorf("state resets %v after failing over to a replica with the data, want 0", n)
	}
	if n := metric(t, s.promURL, "audit_analysis_processed_total"); n != float64(len(before)+len(after)) {
		t.Errorf("processed %v events, want %d", n, len(before)+len(after))
	}
}

func TestRedisWatchPingsEveryClusterMaster(t *testing.T) {
	t.Parallel()
	rc := testenv.StartRedisCluster(t, 3, 0)
	logs, m := watch(t, config.Redis{ClusterAddrs: rc.Addrs()[:1]}, "test:")
	waitLog(t, logs, "redis connected", 15*time.Second)
	time.Sleep(2500 * time.Millisecond) // the markers are written
	victim := rc.Nodes[1]
	victim.Stop()
	lines := waitLog(t, logs, "redis disconnected; retrying every second", 15*time.Second)
	for _, l := range lines {
		if l["msg"] == "redis disconnected; retrying every second" && !strings.Contains(fmt.Sprint(l["error"]), victim.Addr()) {
			t.Errorf("disconnected line %v does not name the master that is down (%s)", l, victim.Addr())
		}
	}
	// It comes back empty: one master's state is lost.
	victim.Start()
	rc.WaitHealthy(time.Minute)
	waitLog(t, logs, "redis lost the service's state: restarted without persistence, failed over to a replica without the data, flushed, or evicting keys", 15*time.Second)
	time.Sleep(2500 * time.Millisecond)
	if n := testutil.ToFloat64(m.stateResets); n != 1 {
		t.Errorf("state resets %v after one master restarted empty, want 1\n%s", n, logs.String())
	}
}

func TestRedisSentinelOverTLSFollowsAFailover(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pki := testenv.NewPKI(t)
	rs := testenv.StartRedisSentinel(t, testenv.RedisWithTLS(testenv.RedisTLSFrom(pki, true)))
	c := config.Redis{
		SentinelAddrs: rs.SentinelAddrs(), SentinelMaster: rs.MasterName(), TLS: true,
		TLSFiles: config.TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
	}
	rdb, err := newRedisClient(c)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if err := rdb.Set(ctx, "k", "before", 0).Err(); err != nil {
		t.Fatalf("SET through the Sentinel over TLS: %v", err)
	}
	rs.KillMaster(ctx)
	// The client finds the new master and verifies its certificate too.
	var setErr error
	for range 50 {
		if setErr = rdb.Set(ctx, "k", "after", 0).Err(); setErr == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if setErr != nil {
		t.Fatalf("SET after the failover: %v", setErr)
	}

	c.TLSFiles.CAFile = pki.OtherCAFile
	other, err := newRedisClient(c)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("PING trusting another CA: %v, want refused", err)
	}
}
