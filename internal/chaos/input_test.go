//go:build chaos

package chaos

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/sample"
)

// message is one body to publish, with the message id a producer sets
// (the event_id, when there is one).
type message struct {
	body []byte
	id   string
}

// input is what a scenario publishes and what must come out of it: the
// alerts replay raises for the same events, and the hostile messages that
// must be dead-lettered, with their reasons.
type input struct {
	name string
	msgs []message
	// events counts the messages that decode as events.
	events int
	// hostile maps the SHA-256 of every body that is not an event to the
	// reason it must be dead-lettered with.
	hostile map[[32]byte]event.Reason
	// expected maps alert_id to the alert replay wrote.
	expected map[string][]byte
	// alertEvents maps alert_id to the lines (0-based indexes into msgs)
	// of the events of its burst, as event_ids lists them.
	alertEvents map[string][]int
	// eventLine maps event_id to its index in msgs.
	eventLine map[string]int
	// triples are the planted bursts of exactly three failed logins, by
	// their event ids.
	triples [][]string
}

// Inputs are chunks of the sample generator's stream, one after another,
// each hours after the previous one: every chunk plants the generator's
// scenarios (five failed-login bursts, one of them out of order, four
// sensitive-file edits, near misses, a spray) among background events, so
// a fault anywhere in the stream lands close to a burst in progress.
const (
	chunkLines = 500
	chunkGap   = 6 * time.Hour
)

// newInput generates chunks chunks of events and plants extra hostile
// messages among them, writes the events to a file, and runs replay over
// it for the alerts to expect.
func newInput(t *testing.T, bin, name string, chunks int) *input {
	t.Helper()
	var stream bytes.Buffer
	var triples [][]string
	for i := range chunks {
		plan, err := sample.Generate(&stream, sample.Options{
			Seed:   uint64(i + 1),
			Events: chunkLines,
			Start:  sample.DefaultStart().Add(time.Duration(i) * chunkGap),
		})
		if err != nil {
			t.Fatalf("generate events: %v", err)
		}
		for _, sc := range plan.Scenarios {
			if sc.Kind == sample.FailedLoginBurst && len(sc.Events) == 3 {
				var ids []string
				for _, e := range sc.Events {
					ids = append(ids, e.ID)
				}
				triples = append(triples, ids)
			}
		}
	}
	in := buildInput(t, bin, name, stream.Bytes(), true)
	in.triples = triples
	return in
}

// extraHostile are bodies no producer should send, beyond the malformed
// lines the generator plants (cut JSON, a JSON array, a number for a
// string field), each with the reason it must be dead-lettered with.
func extraHostile() []struct {
	body   []byte
	reason event.Reason
} {
	tooLarge := append([]byte(`{"event_id":"too-large","padding":"`), bytes.Repeat([]byte("a"), event.MaxBodyBytes)...)
	tooLarge = append(tooLarge, `"}`...)
	return []struct {
		body   []byte
		reason event.Reason
	}{
		{[]byte(""), event.ReasonEmpty},
		{[]byte("{\"event_id\":\"bad-utf8\",\"user_id\":\"m\xe9lanie\"}"), event.ReasonInvalidUTF8},
		{[]byte("\xff\xfe\x00binary"), event.ReasonInvalidUTF8},
		{[]byte("user=root action=login result=FAILURE"), event.ReasonInvalidJSON},
		{[]byte(`{"event_id":"wrong-details","details":"not an object"}`), event.ReasonWrongType},
		{tooLarge, event.ReasonTooLarge},
	}
}

// buildInput turns JSON Lines into messages, spreads the extra hostile
// bodies through them when withExtra is set, and asks replay what the
// events must raise.
func buildInput(t *testing.T, bin, name string, lines []byte, withExtra bool) *input {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, name+".jsonl")
	if err := os.WriteFile(file, lines, 0o644); err != nil {
		t.Fatal(err)
	}
	in := &input{
		name:        name,
		hostile:     map[[32]byte]event.Reason{},
		expected:    map[string][]byte{},
		alertEvents: map[string][]int{},
		eventLine:   map[string]int{},
	}
	var bodies [][]byte
	for line := range bytes.Lines(lines) {
		bodies = append(bodies, bytes.TrimRight(line, "\n"))
	}
	var extra []struct {
		body   []byte
		reason event.Reason
	}
	if withExtra {
		extra = extraHostile()
	}
	// One extra hostile body at evenly spaced places.
	spacing := max(1, len(bodies)/(len(extra)+1))
	for i, b := range bodies {
		if len(extra) > 0 && i > 0 && i%spacing == 0 {
			in.add(t, extra[0].body, extra[0].reason)
			extra = extra[1:]
		}
		ev, err := event.Decode(b, event.MaxBodyBytes)
		if err != nil {
			in.add(t, b, reasonOf(t, err))
			continue
		}
		in.eventLine[ev.ID] = len(in.msgs)
		in.msgs = append(in.msgs, message{body: b, id: ev.ID})
		in.events++
	}
	for _, h := range extra {
		in.add(t, h.body, h.reason)
	}

	cmd := exec.Command(bin, "replay", "--quiet", file)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("replay %s: %v\n%s", file, err, stderr.String())
	}
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 8<<20)
	for sc.Scan() {
		var a struct {
			AlertID  string   `json:"alert_id"`
			EventIDs []string `json:"event_ids"`
		}
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil || a.AlertID == "" {
			t.Fatalf("replay wrote %q: %v", sc.Text(), err)
		}
		if _, dup := in.expected[a.AlertID]; dup {
			t.Fatalf("replay wrote alert %s twice", a.AlertID)
		}
		in.expected[a.AlertID] = bytes.Clone(sc.Bytes())
		for _, id := range a.EventIDs {
			if line, ok := in.eventLine[id]; ok {
				in.alertEvents[a.AlertID] = append(in.alertEvents[a.AlertID], line)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(in.expected) == 0 {
		t.Fatalf("replay of %s raised no alert: the input is not meaningful", name)
	}
	return in
}

func (in *input) add(t *testing.T, body []byte, reason event.Reason) {
	t.Helper()
	sum := sha256.Sum256(body)
	if _, dup := in.hostile[sum]; dup {
		t.Fatalf("hostile body planted twice: %.60q", body)
	}
	in.hostile[sum] = reason
	in.msgs = append(in.msgs, message{body: body})
}

func reasonOf(t *testing.T, err error) event.Reason {
	t.Helper()
	if de, ok := err.(*event.DecodeError); ok {
		return de.Reason
	}
	t.Fatalf("decode error without a reason: %v", err)
	return ""
}

// split returns the messages before and from index i.
func (in *input) split(i int) (before, after []message) { return in.msgs[:i], in.msgs[i:] }

// describe is the input in one line, for the figures.
func (in *input) describe() string {
	return fmt.Sprintf("%s: %d messages, %d events, %d hostile, %d alerts expected",
		in.name, len(in.msgs), in.events, len(in.hostile), len(in.expected))
}

// padEvent makes an event body size bytes long by adding a field of
// padding the rules never look at.
func padEvent(size int) func([]byte) []byte {
	return func(b []byte) []byte {
		const field = `, "padding": "`
		// b without its closing brace, the field, k bytes, a quote and
		// the brace.
		k := size - (len(b) - 1) - len(field) - 2
		if k < 0 || !bytes.HasSuffix(b, []byte("}")) {
			panic(fmt.Sprintf("cannot pad a %d-byte event to %d bytes", len(b), size))
		}
		out := make([]byte, 0, size)
		out = append(out, b[:len(b)-1]...)
		out = append(out, field...)
		out = append(out, strings.Repeat("x", k)...)
		return append(out, `"}`...)
	}
}
