package event_test

import (
	"bytes"
	"testing"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/sample"
)

// sampleBodies returns the bodies of n generator-shaped events that decode,
// as the load tool and replay see them.
func sampleBodies(tb testing.TB, n int) [][]byte {
	tb.Helper()
	var buf bytes.Buffer
	if _, err := sample.Generate(&buf, sample.Options{Seed: 1, Events: n, Start: sample.DefaultStart()}); err != nil {
		tb.Fatal(err)
	}
	var bodies [][]byte
	for line := range bytes.Lines(buf.Bytes()) {
		line = bytes.TrimRight(line, "\n")
		if _, err := event.Decode(line, event.MaxBodyBytes); err == nil {
			bodies = append(bodies, line)
		}
	}
	return bodies
}

// BenchmarkDecode measures decoding one generator-shaped body into an
// event: validation, the fields, the timestamp and the idempotency id.
func BenchmarkDecode(b *testing.B) {
	bodies := sampleBodies(b, 10_000)
	size := 0
	for _, body := range bodies {
		size += len(body)
	}
	b.SetBytes(int64(size / len(bodies)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := event.Decode(bodies[i%len(bodies)], event.MaxBodyBytes); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
