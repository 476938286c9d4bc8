package rules

import (
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/event"
	rulefiles "github.com/audit-platform/audit-log-analysis/rules"
)

func mustParse(t *testing.T, src string) *Set {
	t.Helper()
	set, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return set
}

func decode(t testing.TB, body string) *event.Event {
	t.Helper()
	ev, err := event.Decode([]byte(body), event.MaxBodyBytes)
	if err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return ev
}

func TestTheBuiltInRulesLoad(t *testing.T) {
	t.Parallel()
	set, err := Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Rules) != 2 || set.Rule(FailedLoginRuleID) == nil || set.Rule(SensitiveFileRuleID) == nil {
		t.Fatalf("built-in rules = %d, want ANLY-SEC-001 and ANLY-SEC-002", len(set.Rules))
	}
	th := set.Rule(FailedLoginRuleID).Threshold
	if th.Count != 3 || th.Window != time.Minute || strings.Join(th.GroupBy, ",") != "user_id,server_hostname" {
		t.Errorf("ANLY-SEC-001 threshold = %+v", th)
	}
}

func TestParseRefusesBadFilesNamingRuleAndLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		want []string // each must appear in the error
	}{
		{"unknown rule key", `
rules:
  - id: R1
    severity: HIGH
    match: {event_type: x}
    colour: red
`, []string{`test.yaml:6: rule "R1": unknown key "colour"`}},
		{"unknown operator", `
rules:
  - id: R2
    severity: HIGH
    match:
      user_id: {like: bob}
`, []string{`test.yaml:6: rule "R2"`, `unknown operator "like"`}},
		{"duplicate id", `
rules:
  - id: R3
    severity: HIGH
    match: {event_type: x}
  - id: R3
    severity: HIGH
    match: {event_type: y}
`, []string{`test.yaml:6: rule "R3": duplicate rule id (first defined at line 3)`}},
		{"bad duration", `
rules:
  - id: R4
    severity: HIGH
    match: {event_type: x}
    threshold: {count: 3, window: soon}
`, []string{`test.yaml:6: rule "R4": threshold.window: bad duration "soon"`}},
		{"bad regex", `
rules:
  - id: R5
    severity: HIGH
    match:
      user_id: {regex: "a("}
`, []string{`rule "R5"`, `bad regex "a("`}},
		{"bad cidr", `
rules:
  - id: R6
    severity: HIGH
    match:
      client_ip: {cidr: [10.0.0.0/33]}
`, []string{`test.yaml:6: rule "R6"`, `bad CIDR "10.0.0.0/33"`}},
		{"unknown field", `
rules:
  - id: R7
    severity: HIGH
    match: {usr_id: bob}
`, []string{`rule "R7"`, `unknown field "usr_id"`}},
		{"missing id and severity", `
rules:
  - match: {event_type: x}
`, []string{`test.yaml:3: rule "#1": missing id`, `missing severity`}},
		{"suppress without threshold", `
rules:
  - id: R8
    severity: HIGH
    match: {event_type: x}
    suppress: 10s
`, []string{`rule "R8": suppress needs a threshold`}},
		{"every problem at once", `
rules:
  - id: A
    severity: HIGH
    match: {event_type: x}
    bogus: 1
  - id: B
    severity: HIGH
    match: {client_ip: {cidr: [nope]}}
`, []string{`rule "A": unknown key "bogus"`, `rule "B"`, `bad CIDR "nope"`}},
		{"ignore_case on an operator it does not apply to", `
rules:
  - id: R11
    severity: HIGH
    match:
      user_id: {regex: "^adm", ignore_case: true}
`, []string{`rule "R11"`, `ignore_case applies to equals, in, not_in, prefix, suffix and contains, not regex`}},
		{"two operators", `
rules:
  - id: R12
    severity: HIGH
    match:
      user_id: {prefix: [a], suffix: [b]}
`, []string{`rule "R12"`, `want exactly one operator`}},
		{"ignore_case alone", `
rules:
  - id: R13
    severity: HIGH
    match:
      user_id: {ignore_case: true}
`, []string{`rule "R13"`, `want an operator`}},
		{"ignore_case not a boolean", `
rules:
  - id: R14
    severity: HIGH
    match:
      user_id: {in: [a], ignore_case: sometimes}
`, []string{`rule "R14"`, `ignore_case: want true or false`}},
		{"equals with a list", `
rules:
  - id: R15
    severity: HIGH
    match:
      user_id: {equals: [a, b]}
`, []string{`rule "R15"`, `equals takes one value`}},
		{"not a rules file", `hello: world`, []string{`unknown top-level key "hello"`, `want a "rules:" list`}},
		{"bad threshold count", `
rules:
  - id: R9
    severity: HIGH
    match: {event_type: x}
    threshold: {count: 0, window: 10s}
`, []string{`rule "R9": threshold.count`}},
		{"bad resource type", `
rules:
  - id: R10
    severity: HIGH
    resource_type: DISK
    match: {event_type: x}
`, []string{`rule "R10": resource_type: want SERVER or FILE`}},
		{"bad placeholder", `
rules:
  - id: R11
    severity: HIGH
    alert_description: "{{nobody}} did it"
    match: {event_type: x}
`, []string{`rule "R11": alert_description`, `unknown field "nobody"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("test.yaml", []byte(tc.src))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestConditions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		match string
		body  string
		want  bool
	}{
		{"equals", `event_type: user_login`, `{"event_type":"user_login"}`, true},
		{"equals is exact", `event_type: user_login`, `{"event_type":"user_login2"}`, false},
		{"list is any of", `action_result: [FAILURE, FAILED]`, `{"action_result":"FAILED"}`, true},
		{"in", `action_result: {in: [FAILURE]}`, `{"action_result":"SUCCESS"}`, false},
		{"not_in", `user_id: {not_in: [root]}`, `{"user_id":"bob"}`, true},
		{"not_in holds for an absent field", `user_id: {not_in: [root]}`, `{}`, true},
		{"absent field never equals", `user_id: ""`, `{}`, false},
		{"path exact after cleaning", `resource: {path: [/etc/shadow]}`, `{"resource":"/etc/ssh/../shadow"}`, true},
		{"path is not a substring", `resource: {path: [/etc/passwd]}`, `{"resource":"/home/x/etc/passwd"}`, false},
		{"path is not a prefix", `resource: {path: [/etc/passwd]}`, `{"resource":"/etc/passwd.bak"}`, false},
		{"path glob", `resource: {path: [/etc/sudoers.d/*]}`, `{"details":{"resource":"/etc/sudoers.d/90-cloud"}}`, true},
		{"path glob does not cross directories", `resource: {path: [/etc/sudoers.d/*]}`, `{"resource":"/etc/sudoers.d/a/b"}`, false},
		{"path glob after cleaning", `resource: {path: [/etc/pam.d/*]}`, `{"resource":"//etc/pam.d//sshd"}`, true},
		{"prefix", `user_id: {prefix: [svc_]}`, `{"user_id":"svc_backup"}`, true},
		{"suffix", `server_hostname: {suffix: [.prod]}`, `{"server_hostname":"db1.prod"}`, true},
		{"contains", `details.reason: {contains: password}`, `{"details":{"reason":"Incorrect password"}}`, true},
		{"regex", `user_id: {regex: "^adm(in)?[0-9]+$"}`, `{"user_id":"admin7"}`, true},
		{"regex no match", `user_id: {regex: "^adm(in)?[0-9]+$"}`, `{"user_id":"xadmin7"}`, false},
		{"cidr v4", `client_ip: {cidr: [10.0.0.0/8, 192.168.1.0/24]}`, `{"client_ip":"192.168.1.150"}`, true},
		{"cidr from details.ip_address", `client_ip: {cidr: [192.168.0.0/16]}`, `{"details":{"ip_address":"192.168.1.150"}}`, true},
		{"cidr v6", `client_ip: {cidr: ["2001:db8::/32"]}`, `{"client_ip":"2001:db8::1"}`, true},
		{"cidr mapped v4", `client_ip: {cidr: [10.0.0.0/8]}`, `{"client_ip":"::ffff:10.1.2.3"}`, true},
		{"cidr not an address", `client_ip: {cidr: [0.0.0.0/0]}`, `{"client_ip":"N/A"}`, false},
		{"cidr single address", `client_ip: {cidr: [10.9.9.9]}`, `{"client_ip":"10.9.9.9"}`, true},
		{"exists", `details.protocol: {exists: true}`, `{"details":{"protocol":"ssh"}}`, true},
		{"exists false", `details.protocol: {exists: false}`, `{"details":{}}`, true},
		{"number as text", `details.port: 22`, `{"details":{"port":22}}`, true},
		{"equals as an operator", `event_type: {equals: user_login}`, `{"event_type":"user_login"}`, true},
		{"equals is case-sensitive by default", `action_result: {in: [failure]}`, `{"action_result":"Failure"}`, false},
		{"in ignoring case", `action_result: {in: [failure], ignore_case: true}`, `{"action_result":"FAILURE"}`, true},
		{"equals ignoring case", `event_type: {equals: USER_LOGIN, ignore_case: true}`, `{"event_type":"user_login"}`, true},
		{"ignore_case first", `event_type: {ignore_case: true, equals: User_Login}`, `{"event_type":"uSER_lOGIN"}`, true},
		{"ignore_case is not a prefix match", `event_type: {equals: user_login, ignore_case: true}`, `{"event_type":"USER_LOGINS"}`, false},
		{"not_in ignoring case", `user_id: {not_in: [Root], ignore_case: true}`, `{"user_id":"ROOT"}`, false},
		{"not_in ignoring case, other value", `user_id: {not_in: [root], ignore_case: true}`, `{"user_id":"r00t"}`, true},
		{"prefix ignoring case", `user_id: {prefix: [svc-], ignore_case: true}`, `{"user_id":"SVC-backup"}`, true},
		{"suffix ignoring case", `server_hostname: {suffix: [.PROD], ignore_case: true}`, `{"server_hostname":"db1.prod"}`, true},
		{"contains ignoring case", `details.reason: {contains: PASSWORD, ignore_case: true}`, `{"details":{"reason":"Incorrect password"}}`, true},
		{"simple folding: Kelvin sign", `user_id: {equals: kate, ignore_case: true}`, `{"user_id":"\u212Aate"}`, true},
		{"simple folding: long s", `user_id: {prefix: [ss], ignore_case: true}`, `{"user_id":"\u017Fsh"}`, true},
		{"simple folding: Greek", `user_id: {equals: "\u03a3\u03c9\u03ba\u03c1\u03ac\u03c4\u03b7\u03c2", ignore_case: true}`, `{"user_id":"\u03c3\u03a9\u039a\u03a1\u0386\u03a4\u0397\u03a3"}`, true},
		{"simple folding is not full folding", `user_id: {equals: strasse, ignore_case: true}`, `{"user_id":"stra\u00dfe"}`, false},
		{"not_cidr outside", `client_ip: {not_cidr: [10.0.5.0/24]}`, `{"client_ip":"10.0.6.1"}`, true},
		{"not_cidr inside", `client_ip: {not_cidr: [10.0.5.0/24]}`, `{"client_ip":"10.0.5.7"}`, false},
		{"not_cidr mapped inside", `client_ip: {not_cidr: [10.0.5.0/24]}`, `{"client_ip":"::ffff:10.0.5.7"}`, false},
		{"not_cidr v6 outside", `client_ip: {not_cidr: [10.0.5.0/24]}`, `{"client_ip":"2001:db8::1"}`, true},
		{"not_cidr not an address", `client_ip: {not_cidr: [10.0.5.0/24]}`, `{"client_ip":"N/A"}`, false},
		{"not_cidr absent", `client_ip: {not_cidr: [10.0.5.0/24]}`, `{}`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			set := mustParse(t, "rules:\n  - id: T\n    severity: HIGH\n    match:\n      "+tc.match+"\n")
			if got := set.Rules[0].Matches(decode(t, tc.body)); got != tc.want {
				t.Errorf("match %s on %s = %v, want %v", tc.match, tc.body, got, tc.want)
			}
		})
	}
}

func TestOverridesRetuneTheBuiltInRules(t *testing.T) {
	t.Parallel()
	set, err := Parse(rulefiles.DefaultName, rulefiles.Default)
	if err != nil {
		t.Fatal(err)
	}
	got, applied := set.WithOverrides(Overrides{FailedLoginThreshold: 5, FailedLoginWindow: 2 * time.Minute, SensitiveFiles: []string{"/srv/app/secret[1].key"}})
	if len(applied) != 3 {
		t.Errorf("applied = %v, want three overrides", applied)
	}
	th := got.Rule(FailedLoginRuleID).Threshold
	if th.Count != 5 || th.Window != 2*time.Minute || got.Rule(FailedLoginRuleID).Suppress != 2*time.Minute {
		t.Errorf("ANLY-SEC-001 = %+v suppress %v", th, got.Rule(FailedLoginRuleID).Suppress)
	}
	if set.Rule(FailedLoginRuleID).Threshold.Count != 3 {
		t.Error("WithOverrides changed the original set")
	}
	files := got.Rule(SensitiveFileRuleID)
	ev := func(res string) *event.Event {
		return decode(t, `{"event_type":"file_modified","action_result":"MODIFIED","details":{"resource":"`+res+`"}}`)
	}
	if !files.Matches(ev("/srv/app/secret[1].key")) || files.Matches(ev("/etc/shadow")) || files.Matches(ev("/srv/app/secret1.key")) {
		t.Error("SENSITIVE_FILES override does not match literal paths only")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(rulefiles.Default))
	f.Add([]byte("rules:\n  - id: X\n    severity: HIGH\n    match: {client_ip: {cidr: [10.0.0.0/8]}}\n    threshold: {count: 2, window: 1m, distinct: user_id}\n"))
	f.Add([]byte("rules: [1, {id: [x]}, {match: {a.b: {regex: '('}}}]"))
	f.Add([]byte(issueSequence))
	f.Add([]byte(issueNewValue))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		ids := map[string]bool{}
		for _, r := range set.Rules {
			if r.ID() == "" || ids[r.ID()] || r.Alert.Severity == "" || (len(r.Match) == 0 && r.Sequence == nil) {
				t.Fatalf("accepted an invalid rule: %+v", r)
			}
			ids[r.ID()] = true
			if th := r.Threshold; th != nil && (th.Count < 1 || th.Window <= 0) {
				t.Fatalf("accepted an invalid threshold: %+v", th)
			}
			if sq := r.Sequence; sq != nil && (len(sq.Steps) < 2 || sq.Window <= 0) {
				t.Fatalf("accepted an invalid sequence: %+v", sq)
			}
			if nv := r.NewValue; nv != nil && (len(nv.Fields) == 0 || nv.History < MinHistory || nv.MaxValues < 1) {
				t.Fatalf("accepted an invalid new_value: %+v", nv)
			}
		}
	})
}
