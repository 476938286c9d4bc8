package replay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

func builtIn(t testing.TB) *rules.Set {
	t.Helper()
	set, err := rules.Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestReplayIsTheSameOnEveryRun(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../testdata/sample-events.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var outs [3]bytes.Buffer
	for i := range outs {
		// Small chunks of work and batches must not change the output.
		opts := Options{Rules: builtIn(t), BatchSize: 1 + i*300}
		if _, err := Run(context.Background(), []Input{{Name: "sample", Reader: bytes.NewReader(data)}}, &outs[i], opts); err != nil {
			t.Fatal(err)
		}
	}
	if outs[0].Len() == 0 {
		t.Fatal("no alerts")
	}
	for i := 1; i < len(outs); i++ {
		if !bytes.Equal(outs[0].Bytes(), outs[i].Bytes()) {
			t.Fatalf("run %d differs from run 0", i)
		}
	}
}

func TestReplaySkipsBadLinesAndCountsThem(t *testing.T) {
	t.Parallel()
	input := strings.Join([]string{
		`{"event_id":"a","event_type":"file_modified","action_result":"MODIFIED","resource":"/etc/shadow"}`,
		``,
		`   `,
		`not json`,
		`{"event_id":"b","event_type":"file_modified","action_result":"MODIFIED","resource":"` + strings.Repeat("x", 300) + `"}`,
		"{\"event_id\":\"c\",\"event_type\":\"file_modified\",\"action_result\":\"MODIFIED\",\"resource\":\"/etc/passwd\"}\r",
		`[1]`,
	}, "\n")
	var out, report bytes.Buffer
	sum, err := Run(context.Background(), []Input{{Name: "in", Reader: strings.NewReader(input)}}, &out,
		Options{Rules: builtIn(t), MaxBodyBytes: 200, Report: &report})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Lines != 5 || sum.Events != 2 || sum.Alerts["ANLY-SEC-002"] != 2 {
		t.Errorf("summary = %+v, want 5 lines, 2 events, 2 alerts", sum)
	}
	for r, n := range map[event.Reason]int{event.ReasonInvalidJSON: 1, event.ReasonTooLarge: 1, event.ReasonNotObject: 1} {
		if sum.Rejected[r] != n {
			t.Errorf("rejected[%s] = %d, want %d", r, sum.Rejected[r], n)
		}
	}
	for _, want := range []string{"in:4: skipped: invalid_json", "in:5: skipped: too_large", "in:7: skipped: not_object"} {
		if !strings.Contains(report.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, report.String())
		}
	}
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n > 3 {
		return 0, errors.New("disk on fire")
	}
	f.n++
	return copy(p, `{"event_id":"x","event_type":"user_login"}`+"\n"), nil
}

func TestReplayStopsOnAReadErrorOrCancellation(t *testing.T) {
	t.Parallel()
	done := make(chan error, 2)
	go func() {
		_, err := Run(context.Background(), []Input{{Name: "broken", Reader: &failingReader{}}}, io.Discard, Options{Rules: builtIn(t)})
		done <- err
	}()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	go func() {
		_, err := Run(ctx, []Input{{Name: "big", Reader: bytes.NewReader(benchEvents(20000))}}, io.Discard, Options{Rules: builtIn(t)})
		done <- err
	}()
	for range 2 {
		select {
		case err := <-done:
			if err == nil {
				t.Error("Run succeeded, want an error")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
		}
	}
}
