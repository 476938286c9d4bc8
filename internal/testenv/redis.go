package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisServer is a redis-server of the test's own, on a free port with its
// own directory, for tests that flush it, stop it, restart it or
// reconfigure it. The shared server is never touched. By default nothing is
// kept on disk, so a restart comes back empty.
type RedisServer struct {
	t    testing.TB
	port int
	dir  string
	args []string
	tls  *RedisTLS

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// RedisTLS makes a server listen with TLS only: CertFile and KeyFile are
// its certificate, CAFile verifies client certificates, and ClientAuth
// requires clients to present one.
type RedisTLS struct {
	CAFile, CertFile, KeyFile string
	ClientAuth                bool
	// ClientCertFile and ClientKeyFile are what the helpers themselves
	// present; empty means the PKI's client certificate is not used.
	ClientCertFile, ClientKeyFile string
}

// RedisTLSFrom is the PKI's server certificate, with client certificates
// required (clientAuth) or not.
func RedisTLSFrom(p *PKI, clientAuth bool) *RedisTLS {
	return &RedisTLS{
		CAFile: p.CAFile, CertFile: p.ServerCert, KeyFile: p.ServerKey, ClientAuth: clientAuth,
		ClientCertFile: p.ClientCert, ClientKeyFile: p.ClientKey,
	}
}

// RedisOption changes how StartRedis runs its server.
type RedisOption func(*redisSetup)

type redisSetup struct {
	persist bool
	tls     *RedisTLS
	args    []string
}

// RedisPersistent keeps every write in an append-only file synced on each
// write, so a restart, even after a kill, comes back with the data.
func RedisPersistent() RedisOption { return func(s *redisSetup) { s.persist = true } }

// RedisWithTLS serves TLS only, on the server's port.
func RedisWithTLS(c *RedisTLS) RedisOption { return func(s *redisSetup) { s.tls = c } }

// RedisArgs adds redis-server arguments, such as "--maxmemory-policy",
// "noeviction".
func RedisArgs(args ...string) RedisOption {
	return func(s *redisSetup) { s.args = append(s.args, args...) }
}

// StartRedis starts a private redis-server, stopped and removed when the
// test ends. It skips the test when redis-server is not installed, or fails
// it where services are required.
func StartRedis(t testing.TB, opts ...RedisOption) *RedisServer {
	t.Helper()
	needRedisBinaries(t)
	r := newRedisServer(t, FreePort(t), opts...)
	r.Start()
	return r
}

func newRedisServer(t testing.TB, port int, opts ...RedisOption) *RedisServer {
	t.Helper()
	var s redisSetup
	for _, o := range opts {
		o(&s)
	}
	r := &RedisServer{t: t, port: port, dir: t.TempDir(), tls: s.tls}
	r.args = []string{"--bind", "127.0.0.1", "--dir", r.dir, "--daemonize", "no",
		"--logfile", filepath.Join(r.dir, "redis.log"), "--save", ""}
	if s.persist {
		r.args = append(r.args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		r.args = append(r.args, "--appendonly", "no")
	}
	if c := s.tls; c != nil {
		auth := "no"
		if c.ClientAuth {
			auth = "yes"
		}
		r.args = append(r.args, "--port", "0", "--tls-port", strconv.Itoa(port),
			"--tls-cert-file", c.CertFile, "--tls-key-file", c.KeyFile, "--tls-ca-cert-file", c.CAFile,
			"--tls-auth-clients", auth)
	} else {
		r.args = append(r.args, "--port", strconv.Itoa(port))
	}
	r.args = append(r.args, s.args...)
	t.Cleanup(r.Stop)
	return r
}

func needRedisBinaries(t testing.TB) {
	t.Helper()
	skipShort(t, "redis-server")
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			msg := bin + " is not installed: apt-get install redis-server redis-tools"
			if Required() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// Addr returns host:port.
func (r *RedisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// Dir is the server's working directory: its log (redis.log), its
// append-only file and, in a cluster, its nodes.conf.
func (r *RedisServer) Dir() string { return r.dir }

// Start starts the server (again, on the same port and directory) and waits
// until it answers PING, which it does only once it has loaded its data.
func (r *RedisServer) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		r.t.Fatalf("redis-server on %s is already running", r.Addr())
	}
	r.cmd = exec.Command("redis-server", r.args...)
	// The server dies with the test binary, even when it is killed.
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	cmd, exited := r.cmd, make(chan struct{})
	r.exited = exited
	go func() { _ = cmd.Wait(); close(exited) }()
	if err := r.waitReady(15 * time.Second); err != nil {
		r.t.Fatalf("redis-server on %s: %v\n%s", r.Addr(), err, r.logTail())
	}
}

// Stop kills the server (SIGKILL: nothing is saved on the way out);
// stopping a stopped server does nothing.
func (r *RedisServer) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exited
	r.cmd = nil
}

// Running reports whether the server process was started and not stopped.
func (r *RedisServer) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cmd != nil
}

// Client returns a client for this server alone (no cluster redirects
// followed), closed when the test ends.
func (r *RedisServer) Client() *redis.Client {
	c := redis.NewClient(r.options())
	r.t.Cleanup(func() { c.Close() })
	return c
}

// TLSConfig is what the helpers use to reach a TLS server: the test CA and,
// when set, the client certificate. It is nil for a plain server.
func (r *RedisServer) TLSConfig() *tls.Config {
	if r.tls == nil {
		return nil
	}
	cfg, err := r.tls.clientConfig()
	if err != nil {
		r.t.Fatalf("redis TLS: %v", err)
	}
	return cfg
}

func (c *RedisTLS) clientConfig() (*tls.Config, error) {
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", c.CAFile)
	}
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	// The server certificate may be deliberately wrong for a test; the
	// helpers only need to know the server is up.
	cfg.InsecureSkipVerify = true
	if c.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.ClientCertFile, c.ClientKeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func (r *RedisServer) options() *redis.Options {
	return &redis.Options{
		Addr: r.Addr(), TLSConfig: r.TLSConfig(), MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		ContextTimeoutEnabled: true, PoolSize: 2, DialerRetries: 1,
	}
}

// waitReady polls PING until the server answers PONG (a server loading its
// data answers LOADING) or d has passed.
func (r *RedisServer) waitReady(d time.Duration) error {
	c := redis.NewClient(r.options())
	defer c.Close()
	deadline := time.Now().Add(d)
	for {
		// A bare connect first: while the port is closed, a client's dial
		// failures would only fill the test output.
		err := dialOnly(r.Addr())
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err = c.Ping(ctx).Err()
			cancel()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING after %s: %w", d, err)
		}
		select {
		case <-r.exited:
			return errors.New("exited")
		default:
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dialOnly(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		conn.Close()
	}
	return err
}

// logTail returns the end of the server's log, for failure messages.
func (r *RedisServer) logTail() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// cli runs redis-cli with the server's TLS settings and returns its output.
func cli(t testing.TB, tc *RedisTLS, args ...string) string {
	t.Helper()
	var all []string
	if tc != nil {
		all = append(all, "--tls", "--cacert", tc.CAFile, "--insecure")
		if tc.ClientCertFile != "" {
			all = append(all, "--cert", tc.ClientCertFile, "--key", tc.ClientKeyFile)
		}
	}
	all = append(all, args...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", all...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// poll calls ok every 100 ms until it returns true or d has passed.
func poll(d time.Duration, ok func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if ok() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}
