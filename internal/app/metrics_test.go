package app

import (
	"slices"
	"testing"
)

func TestExportedMetricsListsEveryFamilyWithItsLabels(t *testing.T) {
	t.Parallel()
	m := ExportedMetrics()
	for name, labels := range map[string][]string{
		"audit_analysis_processed_total":             nil,
		"audit_analysis_alerts_total":                {"alert_type", "severity"},
		"audit_analysis_processing_duration_seconds": nil,
		"audit_analysis_rules_info":                  {"source", "sha256"},
		"go_goroutines":                              nil,
		"process_resident_memory_bytes":              nil,
	} {
		got, ok := m[name]
		if !ok {
			t.Errorf("ExportedMetrics lacks %s", name)
			continue
		}
		if !slices.Equal(got, labels) {
			t.Errorf("%s has labels %v, want %v", name, got, labels)
		}
	}
}
