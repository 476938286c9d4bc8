package sample

import (
	"fmt"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// plantedPerRound is the number of events plant adds per round (the
// line-count test fails when the two disagree).
const plantedPerRound = 5 + 3 + 3 + 4 + 6 + 2 + 3 + 4 + 4 + 12 + 3

// plantedPairs are the users and hosts of the planted failed logins.
// Background traffic never fails a login for them, so their windows hold
// nothing but the scenario.
var plantedPairs = [][2]string{
	{"attacker_bob", "prod-web-01"},
	{"alice", "prod-db-02"},
	{"devops_admin", "dev-api-03"},
	{"guest_user", "test-worker-04"},
	{"app_user", "prod-web-02"},
	{"monitoring_agent", "prod-db-01"},
}

// sprayUsers are the accounts of the password spray; background traffic
// never uses them.
var sprayUsers = []string{
	"admin", "root", "oracle", "postgres", "ubuntu", "test",
	"deploy", "jenkins", "git", "ftp", "support", "backup",
}

// plant adds one round of scenarios, spread over the span from from.
func (g *generator) plant(round int, from time.Time, span time.Duration) {
	const slots = 10
	at := func(slot int) time.Time {
		return from.Add(span * time.Duration(slot+1) / (slots + 1)).Truncate(time.Microsecond)
	}

	g.failedLogins(round, FailedLoginBurst, at(0), plantedPairs[0], "198.51.100.23", g.burst(5), nil,
		"5 failures within %s: one alert, 2 suppressed")
	g.failedLogins(round, FailedLoginBurst, at(0).Add(3*time.Minute), plantedPairs[0], "198.51.100.23", g.burst(3), nil,
		"the same pair 3 minutes later, 3 failures within %s: a second alert counting the 2 suppressed before")
	g.failedLogins(round, FailedLoginBurst, at(1), plantedPairs[1], "198.51.100.41", g.burst(3), nil,
		"3 failures within %s: one alert")
	g.failedLogins(round, FailedLoginBurst, at(2), plantedPairs[2], "198.51.100.57", g.burst(4), []int{2, 0, 3, 1},
		"4 failures within %s delivered out of order: one alert on the third to arrive, 1 suppressed")
	g.failedLogins(round, FailedLoginBurst, at(3), plantedPairs[3], "198.51.100.88", g.burst(6), nil,
		"6 failures within %s: one alert, 3 suppressed")
	g.failedLogins(round, FailedLoginNearMiss, at(4), plantedPairs[4], "198.51.100.102",
		[]time.Duration{0, g.between(5*time.Second, 50*time.Second)}, nil,
		"2 failures within %s: below the threshold")
	g.failedLogins(round, FailedLoginNearMiss, at(5), plantedPairs[5], "198.51.100.131",
		[]time.Duration{0, g.between(25*time.Second, 35*time.Second), 61*time.Second + g.between(0, 5*time.Second)}, nil,
		"3 failures spread over %s: no 60 s window holds 3")

	type fileEvent struct {
		eventType        string
		user, host, path string
		note             string
	}
	for _, group := range []struct {
		slot   int
		kind   Kind
		events []fileEvent
	}{
		{6, SensitiveFileEdit, []fileEvent{
			{"file_modified", "devops_admin", "prod-db-02", "/etc//shadow", "/etc/shadow spelled with a double slash"},
			{"file_modified", "attacker_bob", "prod-web-01", "/etc/./passwd", "/etc/passwd spelled with a dot segment"},
			{"file_modified", "app_user", "prod-web-02", "/etc/ssh/../sudoers", "/etc/sudoers spelled with a dot-dot segment"},
			{"file_modified", "devops_admin", "prod-bastion-01", "/root/.ssh/authorized_keys", "root's authorized_keys"},
		}},
		{7, SensitiveFileDecoy, []fileEvent{
			{"file_modified", "app_user", "prod-web-01", "/etc/passwd.bak", "a backup copy, not /etc/passwd"},
			{"file_modified", "alice", "dev-api-03", "/home/x/etc/passwd", "a passwd file under a home directory"},
			{"file_modified", "devops_admin", "prod-db-01", "/etc/shadow-", "shadow's backup, not /etc/shadow"},
			{"file_accessed", "monitoring_agent", "prod-db-02", "/etc/shadow", "/etc/shadow read, not modified"},
		}},
		{9, ExampleFileEdit, []fileEvent{
			{"file_modified", "devops_admin", "prod-web-02", "/etc/sudoers.d/90-cloud", "matches /etc/sudoers.d/* of rules/examples.yaml only"},
			{"file_modified", "devops_admin", "prod-bastion-01", "/etc/pam.d/sshd", "matches /etc/pam.d/* of rules/examples.yaml only"},
			{"file_modified", "devops_admin", "prod-bastion-01", "/etc/ssh/sshd_config", "matches /etc/ssh/sshd_config of rules/examples.yaml only"},
		}},
	} {
		for i, e := range group.events {
			ts := at(group.slot).Add(time.Duration(i) * 40 * time.Second)
			rec := g.newRecord(ts, e.host, e.eventType, "CRITICAL", e.user, "MODIFIED", g.modification(e.path))
			if e.eventType == "file_accessed" {
				rec = g.newRecord(ts, e.host, e.eventType, "INFO", e.user, "SUCCESS", object{{"resource", e.path}, {"access_mode", "read"}})
			}
			s := g.scenario(Scenario{Kind: group.kind, Round: round, Note: fmt.Sprintf("%s@%s %s %s: %s", e.user, e.host, e.eventType, e.path, e.note), UserID: e.user, Host: e.host, Resource: e.path})
			g.add(rec, ts, s)
		}
	}

	const sprayIP = "203.0.113.77"
	s := g.scenario(Scenario{Kind: PasswordSpray, Round: round, Host: "prod-bastion-01", ClientIP: sprayIP})
	ts := at(8)
	for i, user := range sprayUsers {
		if i > 0 {
			ts = ts.Add(g.between(15*time.Second, 25*time.Second))
		}
		g.add(g.newRecord(ts, "prod-bastion-01", "user_login", "WARNING", user, "FAILURE", object{
			{"reason", "Incorrect password"}, {"ip_address", sprayIP}, {"protocol", "ssh"},
		}), ts, s)
	}
	g.scenarios[s].Note = fmt.Sprintf("%d users fail once each from %s within %s: no built-in alert",
		len(sprayUsers), sprayIP, ts.Sub(at(8)).Round(time.Second))
}

// scenario registers s and returns its index.
func (g *generator) scenario(s Scenario) int {
	g.scenarios = append(g.scenarios, s)
	return len(g.scenarios) - 1
}

// burst returns the offsets of n failures less than 60 s apart in all.
func (g *generator) burst(n int) []time.Duration {
	offsets := make([]time.Duration, n)
	step := 50 * time.Second / time.Duration(n-1)
	for i := 1; i < n; i++ {
		offsets[i] = offsets[i-1] + g.between(2*time.Second, step)
	}
	return offsets
}

// failedLogins plants failed logins of one user on one host at the given
// offsets from at. With order, the events arrive after the last of them,
// in that order (indices into offsets). note is a format for the span.
func (g *generator) failedLogins(round int, kind Kind, at time.Time, pair [2]string, ip string,
	offsets []time.Duration, order []int, note string) {
	user, host := pair[0], pair[1]
	last := offsets[len(offsets)-1]
	s := g.scenario(Scenario{
		Kind: kind, Round: round, UserID: user, Host: host, ClientIP: ip,
		Note: user + "@" + host + ": " + fmt.Sprintf(note, last.Round(100*time.Millisecond)),
	})
	recs := make([]record, len(offsets))
	for i, off := range offsets {
		recs[i] = g.newRecord(at.Add(off), host, "user_login", "WARNING", user, "FAILURE", object{
			{"reason", "Incorrect password"}, {"ip_address", ip}, {"protocol", "ssh"},
		})
	}
	if order == nil {
		for _, rec := range recs {
			g.add(rec, rec.ts, s)
		}
		return
	}
	for k, i := range order {
		g.add(recs[i], at.Add(last+time.Second+time.Duration(k)*250*time.Millisecond), s)
	}
}

// malformedReasons are the planted lines that are not events, and why.
var malformedReasons = []event.Reason{event.ReasonInvalidJSON, event.ReasonNotObject, event.ReasonWrongType}

// malformed plants one line of each reason, at a quarter, half and three
// quarters of the span.
func (g *generator) malformed(span time.Duration) {
	for i, reason := range malformedReasons {
		pos := g.start.Add(span * time.Duration(i+1) / 4).Truncate(time.Microsecond)
		rec := g.newRecord(pos, g.pick(hosts), "user_login", "INFO", g.pick(users), "SUCCESS", object{
			{"ip_address", g.clientIP()}, {"protocol", "ssh"},
		})
		var line []byte
		switch reason {
		case event.ReasonInvalidJSON:
			// A line cut short, as a crashed writer leaves it.
			full := rec.json()
			line = full[:len(full)/2]
		case event.ReasonNotObject:
			line = append(append([]byte("["), rec.json()...), ']')
		case event.ReasonWrongType:
			rec.user = 1001
			line = rec.json()
		}
		g.items = append(g.items, item{pos: pos, ts: pos, id: rec.id, line: line, scenario: -1, reject: reason})
	}
}
