package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/alert"
	"github.com/audit-platform/audit-log-analysis/internal/event"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
)

// differentialRules are a threshold, a sequence and a new-value rule as the
// example and built-in rules write them.
const differentialRules = `
rules:
  - id: BURST
    severity: HIGH
    match:
      event_type: {equals: user_login, ignore_case: true}
      action_result: {equals: FAILURE, ignore_case: true}
    threshold: {count: 3, window: 60s, group_by: [user_id, server_hostname]}
  - id: THEN
    severity: HIGH
    sequence:
      group_by: [user_id, server_hostname]
      window: 10m
      steps:
        - match: {event_type: {equals: user_login, ignore_case: true}, action_result: {equals: FAILURE, ignore_case: true}}
          count: 4
        - match: {event_type: {equals: user_login, ignore_case: true}, action_result: {equals: SUCCESS, ignore_case: true}}
  - id: NEWIP
    severity: HIGH
    match:
      event_type: {equals: user_login, ignore_case: true}
      action_result: {equals: SUCCESS, ignore_case: true}
    new_value: {field: client_ip, group_by: [user_id], history: 2h, learn: 30m}
`

// planted is an event as the generator means it, before it is written in
// one of the ways producers write it.
type planted struct {
	id      string
	at      time.Time
	success bool
	user    string
	host    string
	ip      string // canonical
}

func (p planted) key() string {
	ev, err := event.Decode([]byte(fmt.Sprintf(`{"event_id":%q}`, p.id)), event.MaxBodyBytes)
	if err != nil {
		panic(err)
	}
	return ev.Key
}

// write renders the event with a random timestamp format, letter case and
// address spelling.
func (p planted) write(rng *rand.Rand) []byte {
	zones := []*time.Location{time.UTC, time.FixedZone("", 2*3600), time.FixedZone("", -5*3600), time.FixedZone("", 5*3600+30*60)}
	zone := zones[rng.IntN(len(zones))]
	t := p.at.In(zone)
	_, offset := t.Zone()
	var suffix string
	switch sign, h, m := "+", offset/3600, (offset%3600)/60; {
	case offset == 0 && rng.IntN(2) == 0:
		suffix = []string{"Z", "z", "+00:00", "+0000", "+00"}[rng.IntN(5)]
	default:
		if offset < 0 {
			sign, h, m = "-", -h, -m
		}
		switch rng.IntN(3) {
		case 0:
			suffix = fmt.Sprintf("%s%02d:%02d", sign, h, m)
		case 1:
			suffix = fmt.Sprintf("%s%02d%02d", sign, h, m)
		default:
			if m == 0 {
				suffix = fmt.Sprintf("%s%02d", sign, h)
			} else {
				suffix = fmt.Sprintf("%s%02d%02d", sign, h, m)
			}
		}
	}
	sep := []string{"T", "t", " "}[rng.IntN(3)]
	frac := ""
	if ns := t.Nanosecond(); ns != 0 || rng.IntN(2) == 0 {
		frac = "." + fmt.Sprintf("%09d", ns)[:3+rng.IntN(7)]
		if frac == "." {
			frac = ""
		}
	}
	ts := t.Format("2006-01-02") + sep + t.Format("15:04:05") + frac + suffix
	result := "FAILURE"
	if p.success {
		result = "SUCCESS"
	}
	kind := "user_login"
	cases := []func(string) string{strings.ToUpper, strings.ToLower, func(s string) string { return s }, func(s string) string {
		return strings.ToUpper(s[:1]) + strings.ToLower(s[1:])
	}}
	result, kind = cases[rng.IntN(len(cases))](result), cases[rng.IntN(len(cases))](kind)
	ip := p.ip
	if rng.IntN(2) == 0 {
		ip = []string{"::ffff:", "::FFFF:", "0:0:0:0:0:ffff:"}[rng.IntN(3)] + ip
	}
	b, _ := json.Marshal(map[string]any{
		"event_id": p.id, "timestamp": ts, "event_type": kind, "action_result": result,
		"user_id": p.user, "server_hostname": p.host, "details": map[string]any{"ip_address": ip},
	})
	return b
}

// expected restates the three rules over the planted events in time order:
// the number of alerts per rule and group.
func expected(evs []planted) map[string]int {
	sorted := slices.Clone(evs)
	slices.SortFunc(sorted, func(a, b planted) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return strings.Compare(a.key(), b.key())
	})
	out := map[string]int{}
	type group struct{ user, host string }
	byGroup := map[group][]planted{}
	byUser := map[string][]planted{}
	for _, e := range sorted {
		g := group{e.user, e.host}
		byGroup[g] = append(byGroup[g], e)
		if e.success {
			byUser[e.user] = append(byUser[e.user], e)
		}
	}
	for g, evs := range byGroup {
		name := fmt.Sprint(map[string]string{"user_id": g.user, "server_hostname": g.host})
		// BURST: 3 failures within 60s, suppressed for 60s after an alert.
		var last time.Time
		var failures []planted
		for _, e := range evs {
			if !e.success {
				failures = append(failures, e)
			}
		}
		for i, x := range failures {
			if !last.IsZero() && x.at.Before(last.Add(time.Minute)) {
				continue
			}
			n := 0
			for _, e := range failures[:i+1] {
				if e.at.After(x.at.Add(-time.Minute)) {
					n++
				}
			}
			if n >= 3 {
				out["BURST "+name]++
				last = x.at
			}
		}
		// THEN: 4 failures, then a success strictly later, within 10m;
		// suppressed for 10m after an alert.
		last = time.Time{}
		for _, x := range evs {
			if !x.success || (!last.IsZero() && x.at.Before(last.Add(10*time.Minute))) {
				continue
			}
			var window []time.Time
			for _, e := range failures {
				if e.at.After(x.at.Add(-10*time.Minute)) && e.at.Before(x.at) {
					window = append(window, e.at)
				}
			}
			if len(window) >= 4 && window[3].Before(x.at) {
				out["THEN "+name]++
				last = x.at
			}
		}
	}
	for user, evs := range byUser {
		// NEWIP: an address not seen for 2h, once the user's first
		// success is 30 minutes old; a user unseen for 2h5m (the history
		// plus five minutes) is forgotten and learns afresh.
		seen := map[string]time.Time{}
		first, newest := evs[0].at, evs[0].at
		for _, e := range evs {
			if e.at.Sub(newest) > 2*time.Hour+5*time.Minute {
				seen, first = map[string]time.Time{}, e.at
			}
			newest = e.at
			prev, ok := seen[e.ip]
			if (!ok || e.at.Sub(prev) >= 2*time.Hour) && e.at.Sub(first) >= 30*time.Minute {
				out["NEWIP "+fmt.Sprint(map[string]string{"user_id": user})]++
			}
			seen[e.ip] = e.at
		}
	}
	return out
}

// TestReplayAgreesWithAPlainRestatementOfTheRules replays random streams
// with planted bursts, brute forces that succeed and new addresses among
// noise, written in every timestamp format, letter case and address
// spelling the service accepts and delivered out of order within the
// lateness, and requires exactly the alerts a plain restatement of the
// rules counts in time order.
func TestReplayAgreesWithAPlainRestatementOfTheRules(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TEST_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (TEST_SEED repeats it)", seed)
	rng := rand.New(rand.NewPCG(seed, 0xd1ff))
	set, err := rules.Parse("differential.yaml", []byte(differentialRules))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	total := map[string]int{}
	for round := range 40 {
		users := []string{"alice", "bob", "carol"}
		hosts := []string{"web-01", "web-02"}
		ips := []string{"10.0.0.1", "10.0.0.2", "203.0.113.7", "198.51.100.3"}
		var evs []planted
		at := start
		for i := range 150 + rng.IntN(250) {
			// Bursts of quick events, and gaps long enough for new
			// addresses to age out.
			gap := time.Duration(rng.ExpFloat64() * float64(20*time.Second))
			if rng.IntN(30) == 0 {
				gap += time.Duration(rng.IntN(3)) * time.Hour
			}
			at = at.Add(gap).Truncate(time.Duration([]int64{1, 1000, 1e6, 1e9}[rng.IntN(4)]))
			evs = append(evs, planted{
				id: fmt.Sprintf("r%d-e%d", round, i), at: at, success: rng.IntN(4) == 0,
				user: users[rng.IntN(len(users))], host: hosts[rng.IntN(len(hosts))], ip: ips[rng.IntN(len(ips))],
			})
		}
		// Arrival: each failure up to a minute after its own time (well
		// within the lateness), successes on time: a success arriving
		// before an earlier one could be judged new on one side of the
		// learning period and not on the other.
		arrival := make([]time.Time, len(evs))
		for i, e := range evs {
			if arrival[i] = e.at; !e.success {
				arrival[i] = e.at.Add(time.Duration(rng.Int64N(int64(time.Minute))))
			}
		}
		order := make([]int, len(evs))
		for i := range order {
			order[i] = i
		}
		slices.SortStableFunc(order, func(a, b int) int { return arrival[a].Compare(arrival[b]) })
		var input bytes.Buffer
		for _, i := range order {
			input.Write(evs[i].write(rng))
			input.WriteByte('\n')
		}
		var out bytes.Buffer
		sum, err := Run(context.Background(), []Input{{Name: "random", Reader: bytes.NewReader(input.Bytes())}}, &out,
			Options{Rules: set, BatchSize: 1 + rng.IntN(64)})
		if err != nil {
			t.Fatal(err)
		}
		if sum.Events != len(evs) || sum.InvalidTimestamps != 0 {
			t.Fatalf("round %d: %d events read, %d unreadable timestamps; want %d and 0", round, sum.Events, sum.InvalidTimestamps, len(evs))
		}
		got := map[string]int{}
		dec := json.NewDecoder(&out)
		for dec.More() {
			var a alert.Alert
			if err := dec.Decode(&a); err != nil {
				t.Fatal(err)
			}
			got[a.AnalysisRule.RuleID+" "+fmt.Sprint(a.Group)]++
			total[a.AnalysisRule.RuleID]++
		}
		if want := expected(evs); !maps.Equal(got, want) {
			t.Fatalf("round %d (seed %d): replay raised\n%v\nthe rules as restated raise\n%v\ninput:\n%s", round, seed, got, want, input.String())
		}
	}
	t.Logf("alerts: %v", total)
	for _, id := range []string{"BURST", "THEN", "NEWIP"} {
		if total[id] < 20 {
			t.Errorf("only %d %s alerts: the generator misses the interesting cases", total[id], id)
		}
	}
}
