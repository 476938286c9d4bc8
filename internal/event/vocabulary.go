package event

import (
	"slices"
	"strings"
)

// EventType describes one kind of event the platform's event generator
// sends: its action results and the keys of its details object. Rules are
// written against this vocabulary; docs/rules.md lists it, and a test keeps
// it in step with the generator in internal/sample.
type EventType struct {
	Name     string
	Severity []string
	Results  []string
	Details  []string
}

// Vocabulary is every event type the generator sends, with what it sends.
var Vocabulary = []EventType{
	{Name: "user_login", Severity: []string{"INFO", "WARNING"}, Results: []string{"SUCCESS", "FAILURE"},
		Details: []string{"ip_address", "protocol", "reason"}},
	{Name: "user_logout", Severity: []string{"INFO"}, Results: []string{"SUCCESS"},
		Details: []string{"ip_address", "session_duration_seconds"}},
	{Name: "file_accessed", Severity: []string{"INFO"}, Results: []string{"SUCCESS"},
		Details: []string{"resource", "access_mode"}},
	{Name: "file_modified", Severity: []string{"CRITICAL"}, Results: []string{"MODIFIED"},
		Details: []string{"resource", "old_checksum", "new_checksum", "size_change_bytes"}},
	{Name: "file_deleted", Severity: []string{"WARNING"}, Results: []string{"DELETED"},
		Details: []string{"resource"}},
	{Name: "process_started", Severity: []string{"INFO"}, Results: []string{"STARTED"},
		Details: []string{"command", "pid", "tty", "cwd"}},
	{Name: "config_changed", Severity: []string{"INFO"}, Results: []string{"SUCCESS"},
		Details: []string{"resource", "setting", "old_value", "new_value"}},
	{Name: "permission_changed", Severity: []string{"WARNING"}, Results: []string{"SUCCESS"},
		Details: []string{"resource", "old_mode", "new_mode"}},
	{Name: "network_connection", Severity: []string{"INFO"}, Results: []string{"ALLOWED", "BLOCKED"},
		Details: []string{"ip_address", "destination_ip", "destination_port", "protocol"}},
}

// DetailsKeys returns every details key of the vocabulary, sorted.
func DetailsKeys() []string {
	var keys []string
	for _, t := range Vocabulary {
		for _, k := range t.Details {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}

// KnownPaths returns every field a rule can name that the vocabulary
// documents: the normalised fields and details.KEY for every details key.
func KnownPaths() []string {
	paths := slices.Clone(Fields)
	for _, k := range DetailsKeys() {
		paths = append(paths, "details."+k)
	}
	return paths
}

// IsKnownPath reports whether a field name is documented: a normalised
// field, or details.KEY for a key of the vocabulary. Deeper paths under a
// known details key (details.a.b) are not documented.
func IsKnownPath(name string) bool {
	if slices.Contains(Fields, name) {
		return true
	}
	key, ok := strings.CutPrefix(name, "details.")
	return ok && slices.Contains(DetailsKeys(), key)
}
