package config

import (
	"log/slog"
	"math"
	"strings"
	"time"
)

// Detection is what the detection engine needs: which rules to run and how
// to run them. The service reads it as part of Config; replay reads it
// alone (LoadDetection), so that a broker or Redis setting it never uses
// cannot fail it.
type Detection struct {
	// RulesFiles are the rule files and directories of RULES_FILE (a
	// comma-separated list); their rules add to the built-in ones.
	RulesFiles []string
	// RulesBuiltin is RULES_BUILTIN: false leaves the built-in rules out.
	RulesBuiltin bool

	FailedLoginWindow    time.Duration
	FailedLoginThreshold int
	SensitiveFiles       []string
	// Overrides says which of the three settings above came from the
	// environment rather than from defaults: only those tune the built-in
	// rules.
	Overrides Overrides

	// Environment goes into every alert's metadata.
	Environment  string
	MaxClockSkew time.Duration
}

// Overrides records which detection settings were set explicitly.
type Overrides struct {
	FailedLoginWindow    bool
	FailedLoginThreshold bool
	SensitiveFiles       bool
}

// Any reports whether any built-in rule setting was set explicitly.
func (o Overrides) Any() bool {
	return o.FailedLoginWindow || o.FailedLoginThreshold || o.SensitiveFiles
}

// defaultSensitiveFiles are watched when SENSITIVE_FILES is unset.
var defaultSensitiveFiles = []string{
	"/etc/sudoers",
	"/root/.ssh/authorized_keys",
	"/etc/shadow",
	"/etc/passwd",
}

// LoadDetection reads only the detection settings: RULES_FILE,
// RULES_BUILTIN, FAILED_LOGIN_THRESHOLD, FAILED_LOGIN_WINDOW_SECONDS,
// SENSITIVE_FILES, ENVIRONMENT and MAX_CLOCK_SKEW. Like Load, it reports
// every invalid variable at once.
func LoadDetection(getenv func(string) string) (Detection, error) {
	l := &loader{getenv: getenv}
	d := l.detection()
	if err := l.err(); err != nil {
		return Detection{}, err
	}
	return d, nil
}

func (l *loader) detection() Detection {
	return Detection{
		RulesFiles:        l.list("RULES_FILE"),
		RulesBuiltin:      l.boolean("RULES_BUILTIN", true),
		FailedLoginWindow: l.seconds("FAILED_LOGIN_WINDOW_SECONDS", defaultWindow),
		FailedLoginThreshold: l.integer("FAILED_LOGIN_THRESHOLD", defaultThreshold, 1, math.MaxInt,
			"a threshold (an integer >= 1)"),
		SensitiveFiles: l.paths("SENSITIVE_FILES", defaultSensitiveFiles),
		Overrides: Overrides{
			FailedLoginWindow:    l.isSet("FAILED_LOGIN_WINDOW_SECONDS"),
			FailedLoginThreshold: l.isSet("FAILED_LOGIN_THRESHOLD"),
			SensitiveFiles:       l.isSet("SENSITIVE_FILES"),
		},
		Environment:  l.str("ENVIRONMENT", defaultEnvironment),
		MaxClockSkew: l.duration("MAX_CLOCK_SKEW", defaultMaxClockSkew, false),
	}
}

// LoadLogging reads LOG_LEVEL and LOG_FORMAT alone, falling back to the
// defaults for an invalid value: it is what a failed start logs with, so
// that even a configuration error comes out in the configured format.
func LoadLogging(getenv func(string) string) (slog.Level, string) {
	l := &loader{getenv: getenv}
	return l.logLevel(), l.oneOf("LOG_FORMAT", defaultLogFormat, "json", "text")
}

// list reads a comma-separated list; spaces around entries and empty
// entries are dropped.
func (l *loader) list(name string) []string {
	var out []string
	for p := range strings.SplitSeq(l.getenv(name), ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
