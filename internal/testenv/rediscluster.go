package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster is a Redis Cluster of the test's own: masters that share the
// 16384 slots evenly and, optionally, replicas. Every node is a RedisServer
// on free ports (its client port and the cluster bus port 10000 above it)
// with its own directory; all are stopped and removed when the test ends.
type RedisCluster struct {
	t testing.TB
	// Nodes are the masters first, in slot order, then the replicas.
	Nodes []*RedisServer
	tls   *RedisTLS
}

// StartRedisCluster starts masters nodes joined into a cluster with
// replicas replicas per master (0 for none) and waits until every node
// reports the cluster healthy. Options apply to every node; with
// RedisWithTLS the cluster bus and replication use TLS too.
func StartRedisCluster(t testing.TB, masters, replicas int, opts ...RedisOption) *RedisCluster {
	t.Helper()
	needRedisBinaries(t)
	if masters < 3 {
		t.Fatalf("a Redis Cluster needs at least 3 masters, not %d", masters)
	}
	var s redisSetup
	for _, o := range opts {
		o(&s)
	}
	c := &RedisCluster{t: t, tls: s.tls}
	for range masters * (1 + replicas) {
		nodeOpts := append([]RedisOption{RedisArgs("--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
			// A master that lost its replica or its quorum keeps serving
			// the slots it has; the tests decide what fails.
			"--cluster-require-full-coverage", "no")}, opts...)
		if s.tls != nil {
			nodeOpts = append(nodeOpts, RedisArgs("--tls-cluster", "yes", "--tls-replication", "yes"))
		}
		n := newRedisServer(t, clusterPort(t), nodeOpts...)
		n.Start()
		c.Nodes = append(c.Nodes, n)
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	cli(t, c.tls, args...)
	// redis-cli lists masters in the order given: it assigns slots to the
	// first nodes and makes the rest their replicas.
	c.WaitHealthy(30 * time.Second)
	return c
}

// clusterPort returns a free port whose cluster bus port (10000 above it)
// is free too, both below the kernel's ephemeral range (see FreePort).
func clusterPort(t testing.TB) int {
	t.Helper()
	low, high := 10000, ephemeralLow()-10000
	for range 200 {
		p := low + rand.IntN(high-low)
		if reserved(p) || reserved(p+10000) {
			continue
		}
		a, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		b, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
		a.Close()
		if err != nil {
			continue
		}
		b.Close()
		return p
	}
	t.Fatal("no free pair of ports for a cluster node")
	return 0
}

// Addrs returns every node's host:port, as REDIS_CLUSTER_ADDRS takes them.
func (c *RedisCluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Client returns a cluster client over the nodes, closed when the test
// ends.
func (c *RedisCluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: c.Addrs(), TLSConfig: c.Nodes[0].TLSConfig(), ContextTimeoutEnabled: true,
		DialTimeout: time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
	})
	c.t.Cleanup(func() { cc.Close() })
	return cc
}

// Node returns the node listening on addr.
func (c *RedisCluster) Node(addr string) *RedisServer {
	for _, n := range c.Nodes {
		if n.Addr() == addr {
			return n
		}
	}
	c.t.Fatalf("no cluster node at %s", addr)
	return nil
}

// WaitHealthy waits until every running node reports cluster_state:ok and
// agrees on which master serves each slot.
func (c *RedisCluster) WaitHealthy(d time.Duration) {
	c.t.Helper()
	var last string
	ok := poll(d, func() bool {
		var views []string
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			cl := redis.NewClient(n.options())
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			info, err := cl.ClusterInfo(ctx).Result()
			var shards []redis.ClusterShard
			if err == nil {
				shards, err = cl.ClusterShards(ctx).Result()
			}
			cancel()
			cl.Close()
			if err != nil {
				last = fmt.Sprintf("%s: %v", n.Addr(), err)
				return false
			}
			if !strings.Contains(info, "cluster_state:ok") {
				last = n.Addr() + ": cluster_state is not ok"
				return false
			}
			views = append(views, slotView(shards))
		}
		for _, v := range views[1:] {
			if v != views[0] {
				last = "nodes disagree on the slot map:\n" + strings.Join(views, "\n")
				return false
			}
		}
		return true
	})
	if !ok {
		c.t.Fatalf("Redis Cluster not healthy after %s: %s", d, last)
	}
}

// slotView describes who masters which slots, for comparing nodes' views.
func slotView(shards []redis.ClusterShard) string {
	var parts []string
	for _, sh := range shards {
		m := masterAddr(sh)
		for _, r := range sh.Slots {
			if m != "" {
				parts = append(parts, fmt.Sprintf("%d-%d:%s", r.Start, r.End, m))
			}
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// masterAddr returns the host:port of a shard's master, or "" if it has
// none.
func masterAddr(sh redis.ClusterShard) string {
	for _, n := range sh.Nodes {
		if n.Role != "master" {
			continue
		}
		port := n.Port
		if port == 0 {
			port = n.TLSPort
		}
		return net.JoinHostPort(n.IP, strconv.FormatInt(port, 10))
	}
	return ""
}

// MasterOf returns the node that serves slot, as the first running node
// sees it.
func (c *RedisCluster) MasterOf(ctx context.Context, slot int) *RedisServer {
	c.t.Helper()
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		cl := redis.NewClient(n.options())
		shards, err := cl.ClusterShards(ctx).Result()
		cl.Close()
		if err != nil {
			c.t.Fatalf("CLUSTER SHARDS on %s: %v", n.Addr(), err)
		}
		for _, sh := range shards {
			for _, r := range sh.Slots {
				if int(r.Start) <= slot && slot <= int(r.End) && masterAddr(sh) != "" {
					return c.Node(masterAddr(sh))
				}
			}
		}
		c.t.Fatalf("no master serves slot %d", slot)
	}
	c.t.Fatal("no cluster node is running")
	return nil
}

// SlotMigration moves one slot from its master to another master in the
// steps redis-cli --cluster reshard takes, so a test can act between them:
// while keys are split between the two nodes, clients get ASK redirects;
// after Finish, MOVED.
type SlotMigration struct {
	c        *RedisCluster
	slot     int
	src, dst *RedisServer
	srcID    string
	dstID    string
}

// StartMigration marks slot as importing on dst and migrating on its
// current master. dst must be another master.
func (c *RedisCluster) StartMigration(ctx context.Context, slot int, dst *RedisServer) *SlotMigration {
	c.t.Helper()
	src := c.MasterOf(ctx, slot)
	if src == dst {
		c.t.Fatalf("slot %d is already served by %s", slot, dst.Addr())
	}
	m := &SlotMigration{c: c, slot: slot, src: src, dst: dst, srcID: c.nodeID(ctx, src), dstID: c.nodeID(ctx, dst)}
	c.do(ctx, dst, "cluster", "setslot", slot, "importing", m.srcID)
	c.do(ctx, src, "cluster", "setslot", slot, "migrating", m.dstID)
	return m
}

// Source and Destination are the slot's old and new master.
func (m *SlotMigration) Source() *RedisServer      { return m.src }
func (m *SlotMigration) Destination() *RedisServer { return m.dst }

// MoveKeys migrates up to n of the slot's keys still on the source and
// returns how many it moved.
func (m *SlotMigration) MoveKeys(ctx context.Context, n int) int {
	m.c.t.Helper()
	src := redis.NewClient(m.src.options())
	defer src.Close()
	keys, err := src.ClusterGetKeysInSlot(ctx, m.slot, n).Result()
	if err != nil {
		m.c.t.Fatalf("CLUSTER GETKEYSINSLOT %d: %v", m.slot, err)
	}
	if len(keys) == 0 {
		return 0
	}
	host, port, _ := net.SplitHostPort(m.dst.Addr())
	args := []any{"migrate", host, port, "", 0, 10000, "keys"}
	for _, k := range keys {
		args = append(args, k)
	}
	if err := src.Do(ctx, args...).Err(); err != nil {
		m.c.t.Fatalf("MIGRATE %d keys of slot %d: %v", len(keys), m.slot, err)
	}
	return len(keys)
}

// Finish moves the remaining keys and assigns the slot to the destination
// on every master, then waits until all nodes agree.
func (m *SlotMigration) Finish(ctx context.Context) {
	m.c.t.Helper()
	for {
		if m.MoveKeys(ctx, 100) == 0 {
			break
		}
	}
	m.c.do(ctx, m.dst, "cluster", "setslot", m.slot, "node", m.dstID)
	m.c.do(ctx, m.src, "cluster", "setslot", m.slot, "node", m.dstID)
	for _, n := range m.c.Nodes {
		if n != m.src && n != m.dst && n.Running() {
			// A replica refuses SETSLOT; it learns from its master.
			cl := redis.NewClient(n.options())
			_ = cl.Do(ctx, "cluster", "setslot", m.slot, "node", m.dstID).Err()
			cl.Close()
		}
	}
	m.c.WaitHealthy(30 * time.Second)
}

// MigrateSlot moves slot to dst with all its keys.
func (c *RedisCluster) MigrateSlot(ctx context.Context, slot int, dst *RedisServer) {
	c.t.Helper()
	c.StartMigration(ctx, slot, dst).Finish(ctx)
}

func (c *RedisCluster) nodeID(ctx context.Context, n *RedisServer) string {
	c.t.Helper()
	cl := redis.NewClient(n.options())
	defer cl.Close()
	id, err := cl.Do(ctx, "cluster", "myid").Text()
	if err != nil {
		c.t.Fatalf("CLUSTER MYID on %s: %v", n.Addr(), err)
	}
	return id
}

func (c *RedisCluster) do(ctx context.Context, n *RedisServer, args ...any) {
	c.t.Helper()
	cl := redis.NewClient(n.options())
	defer cl.Close()
	if err := cl.Do(ctx, args...).Err(); err != nil {
		c.t.Fatalf("%v on %s: %v", args, n.Addr(), err)
	}
}
