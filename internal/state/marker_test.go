package state

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

func TestKeySlotIsRedisClusterHashing(t *testing.T) {
	t.Parallel()
	// Values from CLUSTER KEYSLOT.
	for key, want := range map[string]int{"foo": 12182, "bar": 5061, "hello": 866, "123456789": 12739, "": 0} {
		if got := keySlot(key); got != want {
			t.Errorf("keySlot(%q) = %d, want %d", key, got, want)
		}
	}
}

func TestMarkerTagsReachEverySlot(t *testing.T) {
	t.Parallel()
	var covered [16384]bool
	left := len(covered)
	for n := 0; n < 1<<20 && left > 0; n++ {
		if s := keySlot("m" + strconv.Itoa(n)); !covered[s] {
			covered[s] = true
			left--
		}
	}
	if left > 0 {
		t.Fatalf("%d slots have no marker tag below 2^20", left)
	}
	if n, ok := markerTag([]slotRange{{16383, 16383}}); !ok || keySlot("m"+strconv.Itoa(n)) != 16383 {
		t.Errorf("markerTag for slot 16383 = %d, %v", n, ok)
	}
}

// checkLoss runs one Check and requires want losses.
func checkLoss(t *testing.T, m *Marker, want int) []Loss {
	t.Helper()
	lost, err := m.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(lost) != want {
		t.Fatalf("Check found %d losses %+v, want %d", len(lost), lost, want)
	}
	return lost
}

func TestMarkerNoticesEveryWayRedisLosesTheState(t *testing.T) {
	t.Parallel()
	t.Run("FLUSHALL, once, with the time the state was kept from", func(t *testing.T) {
		t.Parallel()
		rs := testenv.StartRedis(t)
		c := rs.Client()
		m := NewMarker(c, "test:")
		before := time.Now().Add(-time.Second)
		checkLoss(t, m, 0) // the first check writes the marker
		checkLoss(t, m, 0)
		if n, _ := c.Exists(t.Context(), "test:{m0}:marker").Result(); n != 1 {
			t.Fatal("no marker key test:{m0}:marker")
		}
		if err := c.FlushAll(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		lost := checkLoss(t, m, 1)
		if lost[0].ByOther || lost[0].Since.Before(before) || lost[0].Since.After(time.Now()) {
			t.Errorf("loss %+v, want one noticed here, kept since the first check", lost[0])
		}
		checkLoss(t, m, 0)
		checkLoss(t, m, 0)
	})
	t.Run("a restart without persistence", func(t *testing.T) {
		t.Parallel()
		rs := testenv.StartRedis(t)
		m := NewMarker(rs.Client(), "test:")
		checkLoss(t, m, 0)
		rs.Stop()
		if lost, err := m.Check(t.Context()); err == nil || len(lost) > 0 {
			t.Fatalf("Check with Redis down = %+v, %v; want an error and no loss", lost, err)
		}
		rs.Start()
		checkLoss(t, m, 1)
		checkLoss(t, m, 0)
	})
	t.Run("not a restart with persistence", func(t *testing.T) {
		t.Parallel()
		rs := testenv.StartRedis(t, testenv.RedisPersistent())
		m := NewMarker(rs.Client(), "test:")
		checkLoss(t, m, 0)
		rs.Stop()
		rs.Start()
		checkLoss(t, m, 0)
	})
	t.Run("every replica of the service reports a loss once", func(t *testing.T) {
		t.Parallel()
		rs := testenv.StartRedis(t)
		c := rs.Client()
		a, b := NewMarker(c, "test:"), NewMarker(c, "test:")
		checkLoss(t, a, 0)
		checkLoss(t, b, 0)
		if err := c.FlushDB(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		if lost := checkLoss(t, a, 1); lost[0].ByOther {
			t.Errorf("a: %+v, want noticed by a", lost[0])
		}
		if lost := checkLoss(t, b, 1); !lost[0].ByOther {
			t.Errorf("b: %+v, want noticed by another replica", lost[0])
		}
		checkLoss(t, a, 0)
		checkLoss(t, b, 0)
	})
	t.Run("another prefix is another state", func(t *testing.T) {
		t.Parallel()
		rs := testenv.StartRedis(t)
		c := rs.Client()
		a, b := NewMarker(c, "one:"), NewMarker(c, "two:")
		checkLoss(t, a, 0)
		checkLoss(t, b, 0)
		if err := c.Del(t.Context(), "two:{m0}:marker").Err(); err != nil {
			t.Fatal(err)
		}
		checkLoss(t, a, 0)
		checkLoss(t, b, 1)
	})
}

func TestMarkerWatchesEveryMasterOfACluster(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	rc := testenv.StartRedisCluster(t, 3, 0)
	c := clusterClient(t, rc, nil)
	m := NewMarker(c, "test:")
	checkLoss(t, m, 0)
	keys, err := m.keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	masters := map[*testenv.RedisServer]string{}
	for _, k := range keys {
		slot, err := rc.Nodes[0].Client().ClusterKeySlot(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		masters[rc.MasterOf(ctx, int(slot))] = k
	}
	if len(keys) != 3 || len(masters) != 3 {
		t.Fatalf("marker keys %v on masters %v, want one on each of 3", keys, masters)
	}

	// One master restarts empty: its marker alone is lost.
	victim := rc.Nodes[2]
	victim.Stop()
	victim.Start()
	rc.WaitHealthy(time.Minute)
	var lost []Loss
	deadline := time.Now().Add(30 * time.Second)
	for len(lost) == 0 && time.Now().Before(deadline) {
		// The client may first find the restarted node's old
		// connections broken.
		lost, err = m.Check(ctx)
		if err != nil {
			t.Logf("check: %v", err)
			time.Sleep(200 * time.Millisecond)
		}
	}
	if len(lost) != 1 || lost[0].Key != masters[victim] {
		t.Fatalf("after %s restarted empty: losses %+v, want its marker %s", victim.Addr(), lost, masters[victim])
	}
	checkLoss(t, m, 0)

	// Slots moving between masters, the markers' own included, lose
	// nothing.
	for _, k := range keys {
		slot, _ := rc.Nodes[0].Client().ClusterKeySlot(ctx, k).Result()
		src := rc.MasterOf(ctx, int(slot))
		dst := rc.Nodes[0]
		if dst == src {
			dst = rc.Nodes[1]
		}
		rc.MigrateSlot(ctx, int(slot), dst)
		checkLoss(t, m, 0)
	}
	checkLoss(t, m, 0)
}
