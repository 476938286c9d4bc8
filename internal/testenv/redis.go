package testenv

import (
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"
)

// RedisServer is a redis-server of the test's own, on a free port with
// nothing kept on disk, for tests that flush it, stop it or restart it.
// The shared server is never touched.
type RedisServer struct {
	t    testing.TB
	port int
	dir  string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// StartRedis starts a private redis-server, stopped when the test ends. It
// skips the test when redis-server is not installed, or fails it where
// services are required.
func StartRedis(t testing.TB) *RedisServer {
	t.Helper()
	skipShort(t, "redis-server")
	if _, err := exec.LookPath("redis-server"); err != nil {
		msg := "redis-server is not installed: apt-get install redis-server"
		if Required() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	r := &RedisServer{t: t, port: FreePort(t), dir: t.TempDir()}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Addr returns host:port.
func (r *RedisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// Start starts the server (again, on the same port) and waits until it
// accepts connections.
func (r *RedisServer) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--daemonize", "no")
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ping(r.Addr()) {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s did not answer", r.Addr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the server; stopping a stopped server does nothing.
func (r *RedisServer) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// ping reports whether a Redis at addr answers PING.
func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	buf := make([]byte, 7)
	n, _ := c.Read(buf)
	return string(buf[:n]) == "+PONG\r\n"
}
