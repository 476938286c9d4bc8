package state

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestIDSetMatchesAMap drives an idSet and a map with the same random adds
// and removes. Hashes take a few values, so that probe chains are long,
// collide and wrap around the end of the slots.
func TestIDSetMatchesAMap(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	hashOf := func(id string) uint64 {
		// Homes at both ends of the slots, whatever their number.
		n, _ := strconv.Atoi(id)
		k := uint64(n % 13)
		if k < 7 {
			return ^uint64(0) - k
		}
		return k
	}
	var s idSet
	want := map[string]bool{}
	for step := range 20_000 {
		id := strconv.Itoa(rng.IntN(300))
		h := hashOf(id)
		if rng.IntN(2) == 0 {
			if !want[id] {
				s.add(h, id)
				want[id] = true
			}
		} else {
			s.remove(h, id)
			delete(want, id)
		}
		if s.n != len(want) {
			t.Fatalf("step %d: size %d, want %d", step, s.n, len(want))
		}
		probe := strconv.Itoa(rng.IntN(300))
		if got := s.has(hashOf(probe), probe); got != want[probe] {
			t.Fatalf("step %d: has(%s) = %v, want %v", step, probe, got, want[probe])
		}
	}
	for id := range want {
		if !s.has(hashOf(id), id) {
			t.Fatalf("lost %s", id)
		}
	}
}
