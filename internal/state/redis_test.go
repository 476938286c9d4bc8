package state

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// newRedisStore returns a store on the shared Redis under a prefix unique to
// the test, and deletes the test's keys afterwards.
func newRedisStore(t testing.TB) (*Redis, *redis.Client, string) {
	t.Helper()
	c := newClient(t, testenv.RedisAddr(t))
	prefix := testenv.Name(t, "test") + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		keys, err := scanKeys(ctx, c, prefix)
		if err != nil {
			t.Errorf("scan test keys: %v", err)
		}
		for len(keys) > 0 {
			n := min(len(keys), 500)
			if err := c.Del(ctx, keys[:n]...).Err(); err != nil {
				t.Errorf("delete test keys: %v", err)
			}
			keys = keys[n:]
		}
	})
	return NewRedis(c, prefix), c, prefix
}

// scanKeys lists the keys under prefix without blocking the shared server.
func scanKeys(ctx context.Context, c *redis.Client, prefix string) ([]string, error) {
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	return keys, iter.Err()
}

// TestMemoryAndRedisAgree applies random streams to both stores and
// requires identical results.
func TestMemoryAndRedisAgree(t *testing.T) {
	t.Parallel()
	s, _, _ := newRedisStore(t)
	agreeWithMemory(t, s, 120)
}

// agreeWithMemory applies sequences random streams of updates of every
// kind to s and to a memory store and requires identical results.
func agreeWithMemory(t *testing.T, s *Redis, sequences int) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0xa9ee))
	seen := map[Kind]map[Outcome]int{Threshold: {}, Sequence: {}, NewValue: {}}
	for seq := range sequences {
		st := newStream(rng, 1+rng.IntN(3), 30+rng.IntN(120))
		// Every sequence gets keys of its own.
		for i := range st.updates {
			st.updates[i].Key = fmt.Sprintf("%x%s", seq, st.updates[i].Key)
		}
		m := NewMemory()
		for _, batch := range st.batches() {
			want, err := m.Apply(t.Context(), batch)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Apply(t.Context(), batch)
			if err != nil {
				t.Fatal(err)
			}
			for i, u := range batch {
				if !reflect.DeepEqual(got[i], want[i]) {
					t.Fatalf("sequence %d (seed %d), shapes %+v\nupdate %+v\nredis  %+v\nmemory %+v\nhistory: %s",
						seq, seed, st.shapes, u, got[i], want[i], history(st.updates, u))
				}
				seen[u.Kind][got[i].Outcome]++
			}
		}
	}
	t.Logf("outcomes: %v", seen)
	for k, outcomes := range seen {
		if outcomes[Fired] < sequences/6 || outcomes[Below] < sequences/6 {
			t.Errorf("%v: outcomes %v: the generator misses a case", k, outcomes)
		}
	}
}

func TestNewRedisRejectsABraceInThePrefix(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Fatal("NewRedis accepted a prefix with a brace")
		}
	}()
	NewRedis(redis.NewClient(&redis.Options{}), "alerts{x}:")
}

func TestRedis(t *testing.T) {
	t.Parallel()
	testStore(t, func(t *testing.T) store {
		s, _, _ := newRedisStore(t)
		return s
	})
}

// A one-event group of a plain threshold (a failed login of a new user)
// is one key, kept as long as a late event may count: the window plus the
// lateness. No suppression state exists before an alert.
func TestRedisOneEventGroupIsOneKeyForTheWindowPlusLateness(t *testing.T) {
	t.Parallel()
	s, c, prefix := newRedisStore(t)
	one := defaultRule()
	one.key = "0fa8"
	if _, err := s.Apply(t.Context(), []Update{one.ev("only", 0)}); err != nil {
		t.Fatal(err)
	}
	checkTTL(t, c, prefix+"{0fa8}", []string{":0"}, 6*time.Minute)
	if keys, err := scanKeys(t.Context(), c, prefix+"{0fa8}"); err != nil || len(keys) != 1 {
		t.Errorf("keys of a one-event group %v (%v), want the one sorted set", keys, err)
	}
}

func TestRedisKeysShareTheGroupSlotAndExpire(t *testing.T) {
	t.Parallel()
	s, c, prefix := newRedisStore(t)
	r := defaultRule()
	r.distinct = true
	r.key = "0fa9"
	if _, err := s.Apply(t.Context(), []Update{r.val("a", 0, "x"), r.val("b", 1, "y")}); err != nil {
		t.Fatal(err)
	}
	// Before an alert a group lives as long as a late event may count:
	// the window plus the lateness, 6 minutes.
	checkTTL(t, c, prefix+"{0fa9}", []string{":0", ":v", ":l"}, 6*time.Minute)
	if _, err := s.Apply(t.Context(), []Update{r.val("c", 2, "z"), r.val("d", 3, "z")}); err != nil {
		t.Fatal(err)
	}
	// After one, the suppression zone too, and ten minutes for the
	// suppressed count: max(window, suppress) + lateness + 10 minutes.
	checkTTL(t, c, prefix+"{0fa9}", []string{":0", ":v", ":l", ":b", ":a"}, 16*time.Minute)
	keys, err := scanKeys(t.Context(), c, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 5 {
		t.Errorf("keys %v, want the five of one alerted distinct group", keys)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix+"{0fa9}:") {
			t.Errorf("key %q is outside the group's hash tag", k)
		}
	}

	seq := seqRule{key: "0fb0", steps: []Step{{Count: 1}, {Count: 1}}, window: 10 * time.Minute, suppress: 20 * time.Minute}
	if _, err := s.Apply(t.Context(), []Update{seq.ev("s1", 0, 1), seq.ev("s2", 1, 2)}); err != nil {
		t.Fatal(err)
	}
	checkTTL(t, c, prefix+"{0fb0}", []string{":0", ":1", ":b", ":a"}, 40*time.Minute)

	nv := nvRule{key: "0fb1", history: 2 * time.Hour, learn: time.Hour, max: 10}
	if _, err := s.Apply(t.Context(), []Update{nv.ev("n1", 0, "v")}); err != nil {
		t.Fatal(err)
	}
	checkTTL(t, c, prefix+"{0fb1}", []string{":n", ":f"}, 2*time.Hour+5*time.Minute)
}

// checkTTL requires each key to exist and expire in just under ttl.
func checkTTL(t *testing.T, c *redis.Client, base string, suffixes []string, ttl time.Duration) {
	t.Helper()
	for _, suffix := range suffixes {
		got, err := c.PTTL(t.Context(), base+suffix).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got <= ttl-time.Minute || got > ttl {
			t.Errorf("PTTL %s = %v, want just under %v", base+suffix, got, ttl)
		}
	}
}

func TestRedisRecoversFromAnEmptyScriptCache(t *testing.T) {
	t.Parallel()
	addr := testenv.StartRedis(t).Addr()
	c := newClient(t, addr)
	s := NewRedis(c, "test:")
	r := defaultRule()
	nv := nvRule{key: "7b", history: time.Hour, max: 10}

	// The first batch finds no script (a fresh server), the second
	// finds them flushed; both must be applied exactly once.
	got, err := s.Apply(t.Context(), []Update{r.ev("a", 0), r.ev("b", 10), r.ev("c", 20), nv.ev("n", 0, "v")})
	if err != nil {
		t.Fatal(err)
	}
	alert := fire(0, 20, 3, "c", 0, "a", "b", "c")
	newValue := fireNew("n", 0, 1, 0)
	if want := []Result{below, below, alert, newValue}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if err := c.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	got, err = s.Apply(t.Context(), []Update{r.ev("d", 30), r.ev("c", 20), r.ev("b", 10), nv.ev("n", 0, "v")})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Result{suppressed, alert, duplicate, newValue}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestRedisReportsAnUnreachableServer(t *testing.T) {
	t.Parallel()
	rs := testenv.StartRedis(t)
	addr, stop := rs.Addr(), rs.Stop
	s := NewRedis(newClient(t, addr), "test:")
	r := defaultRule()
	if _, err := s.Apply(t.Context(), []Update{r.ev("a", 0)}); err != nil {
		t.Fatal(err)
	}
	stop()

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	got, err := s.Apply(ctx, []Update{r.ev("b", 10)})
	if err == nil {
		t.Fatalf("Apply with the server down returned %+v and no error", got)
	}
	if !strings.Contains(err.Error(), "apply 1 state updates") && !strings.Contains(err.Error(), "load state script") {
		t.Errorf("error %q does not say what failed", err)
	}
	t.Logf("error after %v: %v", time.Since(start), err)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Apply took %v with a 2s deadline", took)
	}
}

// groupMemory applies updates, each to a group of its own, and returns the
// bytes (MEMORY USAGE) and keys per group they leave in Redis. The key
// prefix has the length of the service's default, "audit-log-analysis:".
func groupMemory(tb testing.TB, updates []Update) (bytes, keys float64) {
	tb.Helper()
	_, c, _ := newRedisStore(tb)
	prefix := fmt.Sprintf("audit-%08x-test:", rand.Uint32())
	if len(prefix) != len("audit-log-analysis:")+1 {
		tb.Fatalf("prefix %q", prefix)
	}
	s := NewRedis(c, prefix)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		keys, _ := scanKeys(ctx, c, prefix)
		for len(keys) > 0 {
			n := min(len(keys), 500)
			c.Del(ctx, keys[:n]...)
			keys = keys[n:]
		}
	})
	for len(updates) > 0 {
		n := min(len(updates), 256)
		if _, err := s.Apply(tb.Context(), updates[:n]); err != nil {
			tb.Fatal(err)
		}
		updates = updates[n:]
	}
	names, err := scanKeys(tb.Context(), c, prefix)
	if err != nil {
		tb.Fatal(err)
	}
	groups := map[string]bool{}
	total := int64(0)
	for _, k := range names {
		used, err := c.MemoryUsage(tb.Context(), k, 0).Result()
		if err != nil {
			tb.Fatal(err)
		}
		total += used
		groups[k[:strings.Index(k, "}")]] = true
	}
	return float64(total) / float64(len(groups)), float64(len(names)) / float64(len(groups))
}

// TestRedisMemoryPerGroup measures the Redis memory of groups that saw one
// event each (the shape of a spray of new accounts) under the service's
// default key prefix, and holds the built-in failed-login rule's to 250
// bytes per group.
func TestRedisMemoryPerGroup(t *testing.T) {
	t.Parallel()
	const groups = 2000
	id := func(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }
	key := func(i int) string { return fmt.Sprintf("%032x", uint64(i)*0x9e3779b97f4a7c15) }
	cases := []struct {
		name  string
		make  func(i int) Update
		limit float64
	}{
		{"threshold (ANLY-SEC-001)", func(i int) Update {
			return Update{Key: key(i), EventID: id(i), Time: at(float64(i)), Count: 3, Window: time.Minute, Suppress: time.Minute}
		}, 250},
		{"distinct threshold (EX-AUTH-001)", func(i int) Update {
			return Update{Key: key(i), EventID: id(i), Time: at(float64(i)), Count: 10, Window: 10 * time.Minute, Suppress: 10 * time.Minute, Distinct: true, Value: key(i + 1)}
		}, 0},
		{"sequence, last step (EX-AUTH-010)", func(i int) Update {
			return Update{Kind: Sequence, Key: key(i), EventID: id(i), Time: at(float64(i)), Steps: []Step{{Count: 4}, {Count: 1}}, Mask: 2, Window: 10 * time.Minute, Suppress: 10 * time.Minute}
		}, 0},
		{"new value", func(i int) Update {
			return Update{Kind: NewValue, Key: key(i), EventID: id(i), Time: at(float64(i)), Value: key(i + 1), History: 30 * 24 * time.Hour, Learn: 7 * 24 * time.Hour, MaxValues: DefaultMaxValues}
		}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var updates []Update
			for i := range groups {
				updates = append(updates, tc.make(i))
			}
			bytes, keys := groupMemory(t, updates)
			t.Logf("%s: %.0f bytes and %.1f keys per one-event group", tc.name, bytes, keys)
			if tc.limit > 0 && bytes > tc.limit {
				t.Errorf("%.0f bytes per group, want at most %.0f", bytes, tc.limit)
			}
		})
	}
}

// BenchmarkRedisApply measures batches of 256 updates against the shared
// Redis: spread over many groups (the usual load); all on one group of a
// distinct rule that never reaches its threshold (a flood of one user from
// one address); and a flood on one group that alerted, mostly suppressed.
func BenchmarkRedisApply(b *testing.B) {
	cases := []struct {
		name string
		make func(i int) Update
	}{
		{"groups=1000", func(i int) Update {
			return Update{Key: fmt.Sprintf("%04x", i%1000), EventID: fmt.Sprint("e", i), Time: at(float64(i) * 0.01), Count: 3, Window: time.Minute, Suppress: time.Minute}
		}},
		{"hot-distinct-group", func(i int) Update {
			return Update{Key: "beef", EventID: fmt.Sprint("e", i), Time: at(float64(i) * 0.001), Value: "same-user", Distinct: true, Count: 10, Window: 10 * time.Minute, Suppress: 10 * time.Minute}
		}},
		{"hot-alerted-group", func(i int) Update {
			return Update{Key: "cafe", EventID: fmt.Sprint("e", i), Time: at(float64(i) * 0.001), Count: 3, Window: time.Minute, Suppress: time.Minute}
		}},
		{"hot-sequence-last-step", func(i int) Update {
			return Update{Kind: Sequence, Key: "d00d", EventID: fmt.Sprint("e", i), Time: at(float64(i) * 0.001), Steps: []Step{{Count: 4}, {Count: 1}}, Mask: 2, Window: 10 * time.Minute, Suppress: 10 * time.Minute}
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			s, _, _ := newRedisStore(b)
			batch := make([]Update, 256)
			n := 0
			for b.Loop() {
				for j := range batch {
					batch[j] = c.make(n)
					n++
				}
				if _, err := s.Apply(b.Context(), batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "updates/s")
		})
	}
}
