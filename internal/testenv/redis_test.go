package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestAPrivateRedisForgetsOnRestartUnlessPersistent(t *testing.T) {
	t.Parallel()
	for _, persist := range []bool{false, true} {
		t.Run(fmt.Sprint("persistent=", persist), func(t *testing.T) {
			t.Parallel()
			var opts []RedisOption
			if persist {
				opts = append(opts, RedisPersistent())
			}
			r := StartRedis(t, opts...)
			c := r.Client()
			if err := c.Set(t.Context(), "k", "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
			r.Stop()
			r.Start()
			n, err := c.Exists(t.Context(), "k").Result()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int64{false: 0, true: 1}[persist]; n != want {
				t.Errorf("after a kill and restart EXISTS k = %d, want %d", n, want)
			}
		})
	}
}

func TestAPrivateRedisServesTLSWithClientCertificates(t *testing.T) {
	t.Parallel()
	pki := NewPKI(t)
	r := StartRedis(t, RedisWithTLS(RedisTLSFrom(pki, true)))
	if err := r.Client().Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING with the client certificate: %v", err)
	}
	cfg := r.TLSConfig()
	cfg.Certificates = nil
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), TLSConfig: cfg, MaxRetries: -1, DialerRetries: 1})
	defer c.Close()
	if err := c.Ping(t.Context()).Err(); err == nil {
		t.Error("PING without a client certificate succeeded on a server that requires one")
	}
}

func TestAPrivateRedisClusterServesEverySlotAndMigratesOne(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rc := StartRedisCluster(t, 3, 0)
	if len(rc.Addrs()) != 3 {
		t.Fatalf("addrs %v, want 3", rc.Addrs())
	}
	c := rc.Client()
	// Keys spread over every master.
	for i := range 100 {
		if err := c.Set(ctx, fmt.Sprint("k", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	slot64, err := rc.Nodes[0].Client().ClusterKeySlot(ctx, "k1").Result()
	if err != nil {
		t.Fatal(err)
	}
	slot := int(slot64)
	src := rc.MasterOf(ctx, slot)
	dst := rc.Nodes[0]
	if dst == src {
		dst = rc.Nodes[1]
	}
	rc.MigrateSlot(ctx, slot, dst)
	if got := rc.MasterOf(ctx, slot); got != dst {
		t.Fatalf("slot %d served by %s after migrating it to %s", slot, got.Addr(), dst.Addr())
	}
	if v, err := c.Get(ctx, "k1").Int(); err != nil || v != 1 {
		t.Errorf("GET k1 after the migration = %v, %v; want 1", v, err)
	}
}

func TestAPrivateSentinelFailsOverWhenTheMasterIsKilled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s := StartRedisSentinel(t)
	first := s.Master(ctx)
	if err := first.Client().Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := first.Client().Do(ctx, "wait", 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	old, promoted := s.KillMaster(ctx)
	t.Logf("failover from %s to %s took %s", old.Addr(), promoted.Addr(), time.Since(start).Round(time.Millisecond))
	if old != first || promoted == first {
		t.Fatalf("killed %s, promoted %s; the master was %s", old.Addr(), promoted.Addr(), first.Addr())
	}
	if v, err := promoted.Client().Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Errorf("GET k on the new master = %q, %v", v, err)
	}
	old.Start()
	s.WaitReplicaInSync(ctx, old)
}

func TestAPrivateRedisClusterServesTLS(t *testing.T) {
	t.Parallel()
	rc := StartRedisCluster(t, 3, 0, RedisWithTLS(RedisTLSFrom(NewPKI(t), true)))
	c := rc.Client()
	for i := range 20 {
		if err := c.Set(t.Context(), fmt.Sprint("k", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAPrivateSentinelServesTLS(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s := StartRedisSentinel(t, RedisWithTLS(RedisTLSFrom(NewPKI(t), true)))
	if err := s.Master(ctx).Client().Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
}
