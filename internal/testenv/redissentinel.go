package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisSentinel is a master, a replica and one Sentinel watching them, all
// of the test's own, stopped and removed when the test ends. The Sentinel
// takes a master for dead after one second without an answer, so a killed
// master is replaced within a few seconds.
type RedisSentinel struct {
	t testing.TB
	// Servers are the data servers, the first master at the start.
	Servers  []*RedisServer
	Sentinel *RedisServer
	name     string
}

// StartRedisSentinel starts the three processes and waits until the
// Sentinel knows the replica and the replica is in sync, so a failover can
// happen from then on. Options apply to the data servers; with
// RedisWithTLS, replication, the Sentinel's own port and its connections
// to the data servers use TLS too.
func StartRedisSentinel(t testing.TB, opts ...RedisOption) *RedisSentinel {
	t.Helper()
	needRedisBinaries(t)
	var s redisSetup
	for _, o := range opts {
		o(&s)
	}
	if s.tls != nil {
		opts = append(opts, RedisArgs("--tls-replication", "yes"))
	}
	rs := &RedisSentinel{t: t, name: "audit"}
	master := StartRedis(t, opts...)
	replica := newRedisServer(t, FreePort(t), append(opts, RedisArgs("--replicaof", "127.0.0.1", strconv.Itoa(master.port)))...)
	replica.Start()
	rs.Servers = []*RedisServer{master, replica}
	if !poll(30*time.Second, func() bool { return linkUp(replica) }) {
		t.Fatalf("replica %s did not sync with %s\n%s", replica.Addr(), master.Addr(), replica.logTail())
	}

	port := FreePort(t)
	sentinel := &RedisServer{t: t, port: port, dir: t.TempDir(), tls: s.tls}
	conf := filepath.Join(sentinel.dir, "sentinel.conf")
	lines := []string{"port " + strconv.Itoa(port)}
	if c := s.tls; c != nil {
		auth := "no"
		if c.ClientAuth {
			auth = "yes"
		}
		lines = []string{
			"port 0", "tls-port " + strconv.Itoa(port), "tls-replication yes", "tls-auth-clients " + auth,
			"tls-cert-file " + c.CertFile, "tls-key-file " + c.KeyFile, "tls-ca-cert-file " + c.CAFile,
		}
	}
	lines = append(lines,
		"bind 127.0.0.1",
		"dir "+sentinel.dir,
		"logfile "+filepath.Join(sentinel.dir, "redis.log"),
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1", rs.name, master.port),
		fmt.Sprintf("sentinel down-after-milliseconds %s 1000", rs.name),
		fmt.Sprintf("sentinel failover-timeout %s 10000", rs.name),
	)
	// The Sentinel rewrites its file as it learns; it must be writable.
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sentinel.args = []string{conf, "--sentinel"}
	t.Cleanup(sentinel.Stop)
	sentinel.Start()
	rs.Sentinel = sentinel

	if !poll(30*time.Second, func() bool { return rs.knowsReplica(replica) }) {
		t.Fatalf("the Sentinel did not learn replica %s\n%s", replica.Addr(), sentinel.logTail())
	}
	return rs
}

// MasterName is the name the Sentinel monitors, as REDIS_SENTINEL_MASTER
// takes it.
func (s *RedisSentinel) MasterName() string { return s.name }

// SentinelAddrs returns the Sentinel's host:port, as REDIS_SENTINEL_ADDRS
// takes it.
func (s *RedisSentinel) SentinelAddrs() []string { return []string{s.Sentinel.Addr()} }

// Master returns the server the Sentinel names as master.
func (s *RedisSentinel) Master(ctx context.Context) *RedisServer {
	s.t.Helper()
	addr, err := s.masterAddr(ctx)
	if err != nil {
		s.t.Fatalf("ask the Sentinel for the master: %v", err)
	}
	return s.server(addr)
}

func (s *RedisSentinel) masterAddr(ctx context.Context) (string, error) {
	c := redis.NewSentinelClient(s.Sentinel.options())
	defer c.Close()
	hp, err := c.GetMasterAddrByName(ctx, s.name).Result()
	if err != nil {
		return "", err
	}
	return hp[0] + ":" + hp[1], nil
}

func (s *RedisSentinel) server(addr string) *RedisServer {
	for _, r := range s.Servers {
		if r.Addr() == addr {
			return r
		}
	}
	s.t.Fatalf("the Sentinel names %s, which is not one of the test's servers", addr)
	return nil
}

// KillMaster kills the master (SIGKILL), waits until the Sentinel has
// promoted the replica and it accepts writes, and returns the old and the
// new master. Starting the old one again makes it a replica of the new.
func (s *RedisSentinel) KillMaster(ctx context.Context) (old, promoted *RedisServer) {
	s.t.Helper()
	old = s.Master(ctx)
	old.Stop()
	ok := poll(60*time.Second, func() bool {
		addr, err := s.masterAddr(ctx)
		if err != nil || addr == old.Addr() {
			return false
		}
		promoted = s.server(addr)
		c := redis.NewClient(promoted.options())
		defer c.Close()
		role, err := c.Do(ctx, "role").Slice()
		return err == nil && len(role) > 0 && role[0] == "master"
	})
	if !ok {
		s.t.Fatalf("no failover within 60s after killing %s\n%s", old.Addr(), s.Sentinel.logTail())
	}
	return old, promoted
}

// WaitReplicaInSync waits until r replicates the current master and the
// Sentinel knows it, so that another failover could promote it.
func (s *RedisSentinel) WaitReplicaInSync(ctx context.Context, r *RedisServer) {
	s.t.Helper()
	if !poll(60*time.Second, func() bool { return linkUp(r) && s.knowsReplica(r) }) {
		s.t.Fatalf("%s did not become an in-sync replica\n%s", r.Addr(), r.logTail())
	}
}

// knowsReplica reports whether the Sentinel lists r as a healthy replica.
func (s *RedisSentinel) knowsReplica(r *RedisServer) bool {
	c := redis.NewSentinelClient(s.Sentinel.options())
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	replicas, err := c.Replicas(ctx, s.name).Result()
	if err != nil {
		return false
	}
	for _, m := range replicas {
		if m["name"] == r.Addr() && m["flags"] == "slave" && m["master-link-status"] == "ok" {
			return true
		}
	}
	return false
}

// linkUp reports whether r is a replica whose link to its master is up.
func linkUp(r *RedisServer) bool {
	c := redis.NewClient(r.options())
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := c.Info(ctx, "replication").Result()
	return err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up")
}
