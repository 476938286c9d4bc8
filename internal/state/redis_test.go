package state

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
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

func TestRedis(t *testing.T) {
	t.Parallel()
	testStore(t, func(t *testing.T) store {
		s, _, _ := newRedisStore(t)
		return s
	})
}

func TestRedisKeysShareTheGroupSlotAndExpire(t *testing.T) {
	t.Parallel()
	s, c, prefix := newRedisStore(t)
	r := defaultRule()
	r.distinct = true
	r.key = "0fa9"
	_, err := s.Apply(t.Context(), []Update{
		r.val("a", 0, "x"), r.val("b", 1, "y"), r.val("c", 2, "z"), r.val("d", 3, "z"),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Window 60s: retention 6min, plus 1min suppression, plus 10min.
	const ttl = 17 * time.Minute
	for _, suffix := range []string{":e", ":v", ":s", ":m"} {
		key := prefix + "{0fa9}" + suffix
		got, err := c.PTTL(t.Context(), key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got <= ttl-time.Minute || got > ttl {
			t.Errorf("PTTL %s = %v, want just under %v", key, got, ttl)
		}
	}
	keys, err := scanKeys(t.Context(), c, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 4 {
		t.Errorf("keys %v, want the four of one group", keys)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix+"{0fa9}:") {
			t.Errorf("key %q is outside the group's hash tag", k)
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

func TestRedisRecoversFromAnEmptyScriptCache(t *testing.T) {
	t.Parallel()
	addr := testenv.StartRedis(t).Addr()
	c := newClient(t, addr)
	s := NewRedis(c, "test:")
	r := defaultRule()

	// The first batch finds no script (a fresh server), the second
	// finds it flushed; both must be applied exactly once.
	got, err := s.Apply(t.Context(), []Update{r.ev("a", 0), r.ev("b", 10), r.ev("c", 20)})
	if err != nil {
		t.Fatal(err)
	}
	alert := fire(0, 20, 3, "c", 0, "a", "b", "c")
	if want := []Result{below, below, alert}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if err := c.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	got, err = s.Apply(t.Context(), []Update{r.ev("d", 30), r.ev("c", 20), r.ev("b", 10)})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Result{suppressed, alert, duplicate}; !reflect.DeepEqual(got, want) {
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

// TestMemoryAndRedisAgree applies random sequences of updates to both stores
// and requires identical results.
func TestMemoryAndRedisAgree(t *testing.T) {
	t.Parallel()
	s, _, _ := newRedisStore(t)
	agreeWithMemory(t, s, 150)
}

// agreeWithMemory applies sequences random sequences of updates to s and
// to a memory store and requires identical results.
func agreeWithMemory(t *testing.T, s *Redis, sequences int) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))

	seen := map[Outcome]int{}
	for seq := range sequences {
		m := NewMemory()
		var rules []rule
		for k := range 1 + rng.IntN(3) {
			w := time.Duration(1+rng.IntN(120)) * time.Second
			rules = append(rules, rule{
				key:      fmt.Sprintf("%x%x", seq, k),
				count:    1 + rng.IntN(5),
				window:   w,
				suppress: []time.Duration{0, 0, w / 2, w, 2 * w, time.Duration(rng.Int64N(int64(3 * w)))}[rng.IntN(6)],
				distinct: rng.IntN(2) == 0,
			})
		}
		// Mostly a few windows' worth of time; sometimes long enough
		// for retention to prune. Coarse times make equal times, and so
		// ordering by id, common.
		span := 4 * rules[0].window
		if rng.IntN(4) == 0 {
			span = 30 * time.Minute
		}
		grain := []time.Duration{time.Microsecond, time.Millisecond, time.Second, 5 * time.Second}[rng.IntN(4)]
		randomTime := func() int64 {
			d := time.Duration(rng.Int64N(int64(span)))
			return base + micros(d.Truncate(grain))
		}
		// Ids compare byte-wise: "e10" < "e9", and bytes above 0x7f sort last.
		idPrefix := []string{"e", "E", "\xc3\xa9", "\xff"}
		var history []Update
		var updates []Update
		for i := range 40 + rng.IntN(80) {
			if len(history) > 0 && rng.IntN(5) == 0 {
				// Redeliver an earlier event, sometimes with another time.
				u := history[rng.IntN(len(history))]
				if rng.IntN(4) == 0 {
					u.Time = randomTime()
				}
				updates = append(updates, u)
				continue
			}
			r := rules[rng.IntN(len(rules))]
			u := r.ev(idPrefix[rng.IntN(len(idPrefix))]+strconv.Itoa(i), 0)
			u.Time = randomTime()
			u.Value = []string{"alice", "bob", "carol", "dave"}[rng.IntN(4)]
			history = append(history, u)
			updates = append(updates, u)
		}
		for len(updates) > 0 {
			n := min(len(updates), 1+rng.IntN(10))
			batch := updates[:n]
			updates = updates[n:]
			want, err := m.Apply(t.Context(), batch)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Apply(t.Context(), batch)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range got {
				seen[r.Outcome]++
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("sequence %d (seed %d), rules %+v: batch %+v\nredis  %+v\nmemory %+v", seq, seed, rules, batch, got, want)
			}
		}
	}
	t.Logf("outcomes: %v", seen)
	for _, o := range []Outcome{Below, Fired, Suppressed, Duplicate} {
		if seen[o] < sequences/3 {
			t.Errorf("only %d %v outcomes: the generator misses a case", seen[o], o)
		}
	}
}

// BenchmarkRedisApply measures batches of 256 updates against the shared
// Redis: spread over many groups (the usual load), and all on one group of a
// distinct rule that never reaches its threshold (the worst case: every
// update scans the group's window).
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
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			s, _, _ := newRedisStore(b)
			batch := make([]Update, 256)
			n := 0
			b.ResetTimer()
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
