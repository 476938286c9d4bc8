package state

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// redirects counts the answers of cluster nodes that make the client act:
// redirects, refusals during a migration, and an empty script cache.
type redirects struct {
	mu   sync.Mutex
	seen map[string]int // MOVED, ASK, TRYAGAIN, NOSCRIPT
}

func (r *redirects) count(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[kind]
}

func (r *redirects) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprint(r.seen)
}

func (r *redirects) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *redirects) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		r.note(cmd)
		return err
	}
}

func (r *redirects) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			r.note(c)
		}
		return err
	}
}

func (r *redirects) note(cmd redis.Cmder) {
	if cmd.Err() == nil {
		return
	}
	kind, _, _ := strings.Cut(cmd.Err().Error(), " ")
	switch kind {
	case "MOVED", "ASK", "TRYAGAIN", "NOSCRIPT":
		r.mu.Lock()
		if r.seen == nil {
			r.seen = map[string]int{}
		}
		r.seen[kind]++
		r.mu.Unlock()
	}
}

// clusterClient returns a client for rc with the options the service uses,
// whose node clients report what they answer to seen. Reads may take longer
// than the service allows: the suite sends batches of 4,000 updates, which a
// loaded test machine does not always answer within 2 s.
func clusterClient(t testing.TB, rc *testenv.RedisCluster, seen *redirects) *redis.ClusterClient {
	t.Helper()
	c := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                 rc.Addrs(),
		ContextTimeoutEnabled: true,
		DialTimeout:           2 * time.Second,
		ReadTimeout:           30 * time.Second,
		WriteTimeout:          30 * time.Second,
		MaxRedirects:          3,
		MinRetryBackoff:       50 * time.Millisecond,
		MaxRetryBackoff:       500 * time.Millisecond,
		NewClient: func(opt *redis.Options) *redis.Client {
			node := redis.NewClient(opt)
			if seen != nil {
				node.AddHook(seen)
			}
			return node
		},
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRedisClusterBehavesLikeOneRedis(t *testing.T) {
	t.Parallel()
	rc := testenv.StartRedisCluster(t, 3, 0)
	c := clusterClient(t, rc, nil)
	t.Run("the behavioural suite", func(t *testing.T) {
		t.Parallel()
		testStore(t, func(t *testing.T) store {
			return NewRedis(c, testenv.Name(t, "test")+":")
		})
	})
	t.Run("random sequences agree with the memory store", func(t *testing.T) {
		t.Parallel()
		agreeWithMemory(t, NewRedis(c, testenv.Name(t, "test")+":"), 60)
	})
}

// groupsInSlot returns n group keys (hex) that share one hash slot, and
// the slot.
func groupsInSlot(n int) ([]string, int) {
	slot := keySlot("a1")
	keys := []string{"a1"}
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("%x", i)
		if k != "a1" && keySlot(k) == slot {
			keys = append(keys, k)
		}
	}
	return keys, slot
}

// TestRedisClusterFollowsASlotMigration moves the slot of some groups to
// another master in the steps redis-cli --cluster reshard takes while
// updates keep coming, retried when refused as the service retries a batch,
// and requires the alerts the memory store raises for the same updates.
func TestRedisClusterFollowsASlotMigration(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	rc := testenv.StartRedisCluster(t, 3, 0)
	seen := &redirects{}
	s := NewRedis(clusterClient(t, rc, seen), "test:")
	m := NewMemory()
	groups, slot := groupsInSlot(6)
	t.Logf("groups %v share slot %d", groups, slot)

	// Threshold 3 in 60 s without suppression: every third event of a
	// group fires. Other groups spread over every master. In the slot,
	// two groups alert (three keys each: events, alerting triggers,
	// alerts) and four never do (one key each): of the ten keys, moving
	// eight moves some group whole (its next call is answered ASK) and
	// leaves some not (TRYAGAIN: a script's keys include some that do not
	// exist).
	var rules []rule
	for i, g := range groups {
		count := 3
		if i >= 2 {
			count = 1000
		}
		rules = append(rules, rule{key: g, count: count, window: time.Minute})
	}
	for i := range 30 {
		rules = append(rules, rule{key: fmt.Sprintf("b%03x", i), count: 3, window: time.Minute})
	}

	var alerts, mismatches, batches, refused int
	var refusedFor, slowest time.Duration
	applied := make(chan struct{}, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			select {
			case <-done:
				return
			default:
			}
			var b []Update
			for _, r := range rules {
				// Event time moves one second per batch.
				b = append(b, r.ev(fmt.Sprint("e", n, "-", r.key), float64(n)))
			}
			want, err := m.Apply(ctx, b)
			if err != nil {
				t.Error(err)
				return
			}
			start := time.Now()
			got, err := s.Apply(ctx, b)
			slowest = max(slowest, time.Since(start))
			if err != nil {
				for err != nil {
					refused++
					if ctx.Err() != nil {
						t.Errorf("batch %d still refused: %v", n, err)
						return
					}
					time.Sleep(100 * time.Millisecond)
					got, err = s.Apply(ctx, b)
				}
				refusedFor += time.Since(start)
			}
			batches++
			for i := range b {
				// A batch that was refused and retried answers
				// Duplicate for the updates that ran the first time;
				// alerts must be the same.
				if (want[i].Outcome == Fired) != (got[i].Outcome == Fired) ||
					want[i].Outcome == Fired && !reflect.DeepEqual(want[i], got[i]) {
					mismatches++
					t.Errorf("batch %d: update %+v: redis %+v, memory %+v", n, b[i], got[i], want[i])
				}
				if got[i].Outcome == Fired {
					alerts++
				}
			}
			select {
			case applied <- struct{}{}:
			default:
			}
		}
	}()
	waitBatches := func(k int) {
		for range k {
			select {
			case <-applied:
			case <-ctx.Done():
				t.Fatal("no batch applied")
			}
		}
	}

	waitBatches(3)
	src := rc.MasterOf(ctx, slot)
	dst := rc.Nodes[0]
	if dst == src {
		dst = rc.Nodes[1]
	}
	mig := rc.StartMigration(ctx, slot, dst)
	time.Sleep(500 * time.Millisecond)
	moved := mig.MoveKeys(ctx, 8)
	time.Sleep(500 * time.Millisecond)
	mig.Finish(ctx)
	t.Logf("moved slot %d (%d keys in the first step) from %s to %s", slot, moved, src.Addr(), dst.Addr())
	waitBatches(3)
	close(done)
	wg.Wait()

	t.Logf("%d batches, %d alerts, %d refusals; the slowest Apply took %s, refused batches took %s until applied; node answers %v",
		batches, alerts, refused, slowest.Round(time.Millisecond), refusedFor.Round(time.Millisecond), seen)
	if alerts == 0 || mismatches > 0 {
		t.Errorf("%d alerts, %d differing from the memory store", alerts, mismatches)
	}
	for _, kind := range []string{"MOVED", "ASK", "TRYAGAIN"} {
		if seen.count(kind) == 0 {
			t.Errorf("no node answered %s: the test did not exercise it (answers %v)", kind, seen)
		}
	}
}

// TestRedisClusterReloadsScriptsOnTheMasterThatLostThem flushes the script
// cache of one master only: its commands fail with NOSCRIPT inside a
// pipeline whose other commands succeed.
func TestRedisClusterReloadsScriptsOnTheMasterThatLostThem(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rc := testenv.StartRedisCluster(t, 3, 0)
	seen := &redirects{}
	s := NewRedis(clusterClient(t, rc, seen), "test:")
	m := NewMemory()
	rng := rand.New(rand.NewPCG(1, 2))
	var rules []rule
	for i := range 40 {
		rules = append(rules, rule{key: fmt.Sprintf("c%03x", i), count: 2, window: time.Minute, suppress: time.Minute})
	}
	step := 0
	apply := func() {
		t.Helper()
		var b []Update
		for _, r := range rules {
			b = append(b, r.ev(fmt.Sprint("e", step, "-", rng.IntN(1000)), float64(step)))
		}
		step++
		want, err := m.Apply(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Apply(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: redis %+v\nmemory %+v", step, got, want)
		}
	}
	apply()
	apply()
	if err := rc.Nodes[1].Client().ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	apply()
	apply()
	if seen.count("NOSCRIPT") == 0 {
		t.Error("no node answered NOSCRIPT: the test did not exercise the reload")
	}
	t.Logf("node answers %v", seen)
}
