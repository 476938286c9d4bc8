package app

import (
	"slices"
	"testing"
)

func TestMetricNamesListsEveryFamily(t *testing.T) {
	t.Parallel()
	names := MetricNames()
	for _, want := range []string{
		"audit_analysis_processed_total", "audit_analysis_alerts_total", "audit_analysis_processing_duration_seconds",
		"audit_analysis_rules_loaded", "audit_analysis_rules_reload_total", "go_goroutines", "process_resident_memory_bytes",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("MetricNames lacks %s: %v", want, names)
		}
	}
}
