package app

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/replay"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestProgressLineShowsLinesRateAndTimeLeft(t *testing.T) {
	t.Parallel()
	counts := &replay.Progress{}
	counts.Lines.Store(30000)
	counts.Events.Store(29000)
	var read atomic.Int64
	read.Store(250)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := &progress{counts: counts, read: &read, total: 1000, start: start}
	if got, want := p.line(start.Add(10*time.Second)), "replay: 30000 lines, 2900 events/s, 25%, ETA 30s"; got != want {
		t.Errorf("line = %q, want %q", got, want)
	}
	p.total = 0
	if got, want := p.line(start.Add(10*time.Second)), "replay: 30000 lines, 2900 events/s"; got != want {
		t.Errorf("line without a known size = %q, want %q", got, want)
	}
}

func TestProgressWaitsTwoSecondsAndClearsItsLine(t *testing.T) {
	t.Parallel()
	var read atomic.Int64
	var out lockedBuffer
	p := &progress{w: &out, counts: &replay.Progress{}, read: &read, start: time.Now()}
	stop := p.run(10 * time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	if out.String() != "" {
		t.Fatalf("progress shown before %s: %q", progressAfter, out.String())
	}
	stop()
	if out.String() != "" {
		t.Errorf("a short replay left %q", out.String())
	}

	p = &progress{w: &out, counts: &replay.Progress{}, read: &read, start: time.Now().Add(-progressAfter)}
	stop = p.run(10 * time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "events/s") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if s := out.String(); !strings.HasPrefix(s, "\rreplay: 0 lines") || !strings.HasSuffix(s, "\r\x1b[K") {
		t.Errorf("progress output = %q, want a line redrawn in place and cleared at the end", s)
	}
}
