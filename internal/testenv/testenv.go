// Package testenv gives tests the real services they need: the addresses of
// RabbitMQ and Redis (from the environment, defaulting to the local ones),
// unique names so tests can share those servers, private redis-server
// processes for tests that must stop, flush or fail one over (a single
// server, with or without persistence or TLS; a Redis Cluster; a master and
// replica watched by a Sentinel), private rabbitmq-server processes (a
// single node, with or without TLS, or a cluster) for tests that must stop,
// block or cut the broker, certificates of the test's own, and a TCP proxy
// that can cut a connection the way a network failure would.
//
// Outside CI a test whose service is unreachable is skipped with a message
// saying how to start it; when CI is set (or REQUIRE_SERVICES=1) it fails.
// With -short (make unit) every test that needs a service is skipped.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	mrand "math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Required reports whether missing services must fail tests instead of
// skipping them.
func Required() bool {
	return os.Getenv("CI") != "" || os.Getenv("REQUIRE_SERVICES") == "1"
}

// RedisAddr returns host:port of the Redis that tests share (TEST_REDIS_ADDR,
// default 127.0.0.1:6379), after checking that it answers.
func RedisAddr(t testing.TB) string {
	t.Helper()
	addr := getenv("TEST_REDIS_ADDR", "127.0.0.1:6379")
	need(t, "Redis", addr, "redis-server --daemonize yes --port 6379 --save '' --appendonly no")
	return addr
}

// RabbitMQURL returns the AMQP URL of the RabbitMQ that tests share
// (TEST_RABBITMQ_URL, default amqp://guest:guest@127.0.0.1:5672/), after
// checking that its port answers.
func RabbitMQURL(t testing.TB) string {
	t.Helper()
	url := getenv("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
	need(t, "RabbitMQ", hostPort(url, "5672"), "rabbitmq-server -detached")
	return url
}

// PostgresDSN returns the DSN of the PostgreSQL used by the alert contract
// test (TEST_POSTGRES_DSN, default postgres://postgres@127.0.0.1:5432/test).
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := getenv("TEST_POSTGRES_DSN", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	need(t, "PostgreSQL", hostPort(dsn, "5432"), "pg_ctlcluster 15 main start")
	return dsn
}

// Name returns a name unique to this test run, for queues and key prefixes:
// prefix, the test name folded to [a-z0-9_], and random hex.
func Name(t testing.TB, prefix string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	var sb strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			sb.WriteRune(r)
		} else {
			sb.WriteByte('_')
		}
		if sb.Len() >= 40 {
			break
		}
	}
	return prefix + "_" + sb.String() + "_" + hex.EncodeToString(b[:])
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// is taken below the kernel's ephemeral range, so that while a test has
// stopped the server on it, an outgoing connection cannot take the port
// and keep the server from listening again. The ports of the shared
// servers are never returned, even when those servers are down.
func FreePort(t testing.TB) int {
	t.Helper()
	low, high := 10000, ephemeralLow()
	for range 200 {
		p := low + mrand.IntN(high-low)
		if reserved(p) {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		l.Close()
		return p
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// reserved reports whether p is a shared server's port: epmd, PostgreSQL,
// RabbitMQ's AMQP, management and distribution ports, Redis, its Cluster
// bus and Sentinel.
func reserved(p int) bool {
	switch p {
	case 4369, 5432, 5671, 5672, 6379, 15672, 16379, 25672, 26379:
		return true
	}
	return false
}

// ephemeralLow returns the first port the kernel hands out to outgoing
// connections (32768 when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				return n
			}
		}
	}
	return 32768
}

func need(t testing.TB, what, addr, how string) {
	t.Helper()
	skipShort(t, what)
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		conn.Close()
		return
	}
	msg := what + " is not reachable at " + addr + " (" + err.Error() + "); start it with: " + how
	if Required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// skipShort skips a test that needs a server when tests run with -short.
func skipShort(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skip(what + " is not used with -short")
	}
}

func getenv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// hostPort extracts host:port from a URL such as amqp://u:p@h:port/vhost.
func hostPort(url, defPort string) string {
	s := url
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	if i := strings.LastIndex(s, "@"); i >= 0 {
		s = s[i+1:]
	}
	if i := strings.IndexAny(s, "/?"); i >= 0 {
		s = s[:i]
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		s = net.JoinHostPort(s, defPort)
	}
	return s
}
