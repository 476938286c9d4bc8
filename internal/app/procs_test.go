package app

import (
	"io"
	"log/slog"
	"testing"
)

func TestServeRunsOnOneProcessorUnlessGOMAXPROCSIsSet(t *testing.T) {
	t.Parallel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []struct {
		name     string
		env      map[string]string
		setProcs bool
		want     []int
	}{
		{"unset", map[string]string{}, true, []int{1}},
		{"set", map[string]string{"GOMAXPROCS": "4"}, true, nil},
		{"no setter (tests)", map[string]string{}, false, nil},
	} {
		var calls []int
		env := Env{Getenv: func(k string) string { return c.env[k] }}
		if c.setProcs {
			env.SetProcs = func(n int) int { calls = append(calls, n); return 2 }
		}
		oneProcessor(logger, env)
		if len(calls) != len(c.want) || (len(calls) > 0 && calls[0] != c.want[0]) {
			t.Errorf("%s: SetProcs called with %v, want %v", c.name, calls, c.want)
		}
	}
}
