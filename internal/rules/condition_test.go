package rules

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestFoldCaseAgreesWithEqualFold checks that folded strings are equal
// exactly when strings.EqualFold (Unicode simple case folding) says so, over
// random strings drawn from letters with interesting foldings.
func TestFoldCaseAgreesWithEqualFold(t *testing.T) {
	t.Parallel()
	alphabet := []rune("aAkKsSßẞ\u212a\u017fσςΣİıiIǅǄǆΩω\u2126éÉ1_-")
	rng := rand.New(rand.NewPCG(7, 7))
	word := func() string {
		r := make([]rune, 1+rng.IntN(4))
		for i := range r {
			r[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(r)
	}
	for range 50000 {
		a, b := word(), word()
		if got, want := foldCase(a) == foldCase(b), strings.EqualFold(a, b); got != want {
			t.Fatalf("foldCase(%q) == foldCase(%q) is %v, EqualFold says %v", a, b, got, want)
		}
		if !utf8.ValidString(foldCase(a)) {
			t.Fatalf("foldCase(%q) is not valid UTF-8", a)
		}
	}
}
