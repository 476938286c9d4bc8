package rules_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	"github.com/audit-platform/audit-log-analysis/internal/sample"
	"github.com/audit-platform/audit-log-analysis/internal/state"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

// sampleEvents returns n generator-shaped events (the malformed lines the
// generator plants left out), in file order.
func sampleEvents(tb testing.TB, n int) []*event.Event {
	tb.Helper()
	var buf bytes.Buffer
	if _, err := sample.Generate(&buf, sample.Options{Seed: 1, Events: n, Start: sample.DefaultStart()}); err != nil {
		tb.Fatal(err)
	}
	var events []*event.Event
	for line := range bytes.Lines(buf.Bytes()) {
		if ev, err := event.Decode(bytes.TrimRight(line, "\n"), event.MaxBodyBytes); err == nil {
			events = append(events, ev)
		}
	}
	return events
}

func defaultSet(tb testing.TB) *rules.Set {
	tb.Helper()
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		tb.Fatal(err)
	}
	return set
}

// BenchmarkMatch measures matching one event against every built-in rule's
// conditions: what each event costs before any state is involved.
func BenchmarkMatch(b *testing.B) {
	set := defaultSet(b)
	events := sampleEvents(b, 10_000)
	b.ReportAllocs()
	i, matched := 0, 0
	for b.Loop() {
		ev := events[i%len(events)]
		for _, r := range set.Rules {
			if r.Enabled && r.Matches(ev) {
				matched++
			}
		}
		i++
	}
	if matched == 0 {
		b.Fatal("no event matched a rule")
	}
}

// BenchmarkEngine measures the engine per event, in batches of 256 as the
// service takes them, with the built-in rules and the in-memory store:
// stamping, matching, the store's updates and building the alerts. One op
// is one event.
func BenchmarkEngine(b *testing.B) {
	set := defaultSet(b)
	events := sampleEvents(b, 100_000)
	ctx := context.Background()
	const batch = 256
	// The replay clock takes event time; every pass over the events starts
	// with an empty store, so no pass sees the previous one's event ids.
	now := time.Now()
	var engine *rules.Engine
	b.ReportAllocs()
	b.ResetTimer()
	alerts := 0
	for i := 0; i < b.N; i += batch {
		lo := i % len(events)
		if lo == 0 {
			b.StopTimer()
			engine = rules.NewEngine(state.NewMemory(), set, rules.Options{Environment: "bench", Clock: rules.NewReplayClock(0)})
			b.StartTimer()
		}
		hi := min(lo+batch, len(events), lo+b.N-i)
		out, err := engine.Process(ctx, events[lo:hi], now)
		if err != nil {
			b.Fatal(err)
		}
		alerts += len(out.Alerts)
		i -= batch - (hi - lo)
	}
	b.ReportMetric(float64(alerts)/float64(b.N)*1e6, "alerts/Mevent")
}
