package state

import (
	"math"
	"os"
	"strconv"
	"testing"
	"time"
)

const sec = int64(time.Second / time.Microsecond)

// base is a plausible event time, so that tests exercise 16-digit
// microsecond values like production does.
const base = int64(1_700_000_000) * sec

// at returns the time s seconds after base.
func at(s float64) int64 { return base + int64(math.Round(s*float64(sec))) }

// testSeed returns the seed of a randomised test: TEST_SEED when set, to
// repeat a failure, else the clock.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TEST_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TEST_SEED: %v", err)
		}
		seed = n
	}
	t.Logf("seed %d (TEST_SEED=%d repeats it)", seed, seed)
	return seed
}
