package app

import (
	"regexp"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/audit-platform/audit-log-analysis/internal/broker"
	"github.com/audit-platform/audit-log-analysis/internal/event"
)

// metrics are the service's Prometheus series. The first five keep the
// Python service's names so its dashboards and alerts keep working; the
// alert counter no longer has user_id and server_hostname labels, which let
// anyone who can send events create unbounded series.
type metrics struct {
	processed        prometheus.Counter
	consumed         prometheus.Counter
	alerts           *prometheus.CounterVec
	ruleAlerts       *prometheus.CounterVec
	consumerStatus   prometheus.Gauge
	redisStatus      prometheus.Gauge
	publisherStatus  prometheus.Gauge
	rejected         *prometheus.CounterVec
	duration         prometheus.Histogram
	batchSize        prometheus.Histogram
	publishFailures  prometheus.Counter
	batchRetries     *prometheus.CounterVec
	suppressed       *prometheus.CounterVec
	clamped          prometheus.Counter
	badTimestamps    prometheus.Counter
	duplicates       prometheus.Counter
	deadLettered     prometheus.Counter
	rulesLoaded      prometheus.Gauge
	rulesReload      *prometheus.CounterVec
	rulesInfo        *prometheus.GaugeVec
	buildInfo        *prometheus.GaugeVec
	lastAlertUnixSec prometheus.Gauge

	stateResets   prometheus.Counter
	brokerErrors  *prometheus.CounterVec
	brokerBlocked prometheus.Gauge
	queueMessages *prometheus.GaugeVec
	eventLag      prometheus.Histogram
	inflightBytes prometheus.Gauge

	newValueEvictions *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	f := promauto.With(reg)
	m := &metrics{
		processed: f.NewCounter(prometheus.CounterOpts{
			Name: "audit_analysis_processed_total",
			Help: "Audit events decoded and run through the rules.",
		}),
		consumed: f.NewCounter(prometheus.CounterOpts{
			Name: "audit_analysis_rabbitmq_messages_consumed_total",
			Help: "Messages taken from the event queue and settled (acknowledged or dead-lettered).",
		}),
		alerts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "audit_analysis_alerts_total",
			Help: "Alerts published to the alert queue and confirmed by the broker, by rule category (alert_type) and severity; rules in shadow mode are not counted here.",
		}, []string{"alert_type", "severity"}),
		ruleAlerts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "audit_analysis_rule_alerts_total",
			Help: "Alerts raised, by rule id and mode: live alerts published to the alert queue and confirmed, shadow alerts published to the shadow queue (when set) or only logged.",
		}, []string{"rule_id", "mode"}),
		consumerStatus: f.NewGauge(prometheus.GaugeOpts{
			Name: "audit_analysis_rabbitmq_consumer_connection_status",
			Help: "1 when the consumer's RabbitMQ connection is up, else 0.",
		}),
		redisStatus: f.NewGauge(prometheus.GaugeOpts{
			Name: "audit_analysis_redis_connection_status",
			Help: "1 when Redis answers, else 0.",
		}),
		publisherStatus: f.NewGauge(prometheus.GaugeOpts{
			Name: "audit_analysis_rabbitmq_publisher_connection_status",
			Help: "1 when the publisher's RabbitMQ connection is up, else 0.",
		}),
		rejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "audit_analysis_rejected_messages_total",
			Help: "Messages that can never be processed, by reason; they are dead-lettered, never requeued.",
		}, []string{"reason"}),
		duration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "audit_analysis_processing_duration_seconds",
			Help:    "Time to handle one batch: decode, rules, state store, publish with confirms.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		batchSize: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "audit_analysis_batch_size",
			Help:    "Messages per handled batch.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
		}),
		publishFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "audit_analysis_alert_publish_failures_total",
			Help: "Attempts to publish a batch's alerts that the broker did not confirm; the batch is retried.",
		}),
		batchRetries: f.NewCounterVec(prometheus.CounterOpts{
			Name: "audit_analysis_batch_failures_total",
			Help: "Batches that failed on a dependency and were held for retry, by dependency.",
		}, []string{"dependency"}),
		suppressed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "audit_analysis_suppressed_total",
			Help: "Rule matches suppressed because their group already alerted for a nearby window, by rule id.",
		}, []string{"rule_id"}),
		clamped: f.NewCounter(prometheus.CounterOpts{
			Name: "audit_analysis_events_clock_skew_clamped_total",
			Help: "Events timestamped further in the future than MAX_CLOCK_SKEW, counted at arrival time instead.",
		}),
		badTimestamps: f.NewCounter(prometheus.CounterOpts{
			Name: "audit_analysis_events_invalid_timestamp_total",
			Help: "Events whose timestamp could not be read, counted at arrival time.",
		}),
		duplicates: f.NewCounter(prometheus.CounterOpts{
			Name: "audit_analysis_duplicate_matches_total",
			Help: "Threshold rule matches for an event id already counted (redeliveries).",
		}),
		deadLettered: f.NewCounter(prometheus.CounterOpts{
			Name: "audit_analysis_dead_lettered_total",
			Help: "Rejected messages published to the dead-letter queue.",
		}),
		rulesLoaded: f.NewGauge(prometheus.GaugeOpts{
			Name: "audit_analysis_rules_loaded",
			Help: "Enabled rules in the running rule set.",
		}),
		rulesReload: f.NewCounterVec(prometheus.CounterOpts{
			Name: "audit_analysis_rules_reload_total",
			Help: "Rule file reloads, by result (success or failure).",
		}, []string{"result"}),
		rulesInfo: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "audit_analysis_rules_info",
			Help: "The running rule set: its source and the SHA-256 of its file.",
		}, []string{"source", "sha256"}),
		buildInfo: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "audit_analysis_build_info",
			Help: "The running version and VCS revision.",
		}, []string{"version", "revision"}),
		lastAlertUnixSec: f.NewGauge(prometheus.GaugeOpts{
			Name: "audit_analysis_last_alert_timestamp_seconds",
			Help: "Unix time of the last alert published.",
		}),
		stateResets: f.NewCounter(prometheus.CounterOpts{
			Name: "audit_analysis_state_resets_total",
			Help: "Times Redis was found to have lost the service's state (a restart without persistence, a failover to an empty replica, FLUSHALL): bursts in progress were forgotten.",
		}),
		brokerErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "audit_analysis_rabbitmq_errors_total",
			Help: "RabbitMQ errors that retrying alone will not fix (access refused, precondition failed, missing vhost, authentication failure), by reason.",
		}, []string{"reason"}),
		brokerBlocked: f.NewGauge(prometheus.GaugeOpts{
			Name: "audit_analysis_rabbitmq_blocked",
			Help: "1 while the broker blocks the publisher connection (a memory or disk alarm), else 0.",
		}),
		queueMessages: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "audit_analysis_rabbitmq_queue_messages",
			Help: "Messages ready in a queue the service uses, as the broker last reported it.",
		}, []string{"queue"}),
		eventLag: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "audit_analysis_event_lag_seconds",
			Help:    "Time from an event's own timestamp to the end of its handling (alerts confirmed); events without a readable timestamp are left out.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600},
		}),
		inflightBytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "audit_analysis_inflight_bytes",
			Help: "Bytes of message bodies being handled (bounded by MAX_INFLIGHT_BYTES).",
		}),

		newValueEvictions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "audit_analysis_new_value_evictions_total",
			Help: "Values new-value rules forgot, least recently seen first, to keep a group within max_values: such a value alerts again when seen next.",
		}, []string{"rule_id"}),
	}
	// Series exist from the start, so rate() and absent() work before the
	// first failure.
	for _, r := range event.Reasons {
		m.rejected.WithLabelValues(string(r))
	}
	for _, r := range broker.ProblemReasons {
		m.brokerErrors.WithLabelValues(r)
	}
	for _, d := range []string{"state_store", "publish"} {
		m.batchRetries.WithLabelValues(d)
	}
	for _, r := range []string{"success", "failure"} {
		m.rulesReload.WithLabelValues(r)
	}
	return m
}

// ExportedMetrics returns every metric family the service exports, by
// name, with its label names, from the same constructor Serve uses, so
// that tooling can check dashboards and alert rules against what really
// exists. Histograms are listed by their base name (without _bucket, _sum
// and _count).
func ExportedMetrics() map[string][]string {
	rec := &describingRegisterer{Registerer: prometheus.NewRegistry()}
	newMetrics(rec)
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range rec.collectors {
			c.Describe(ch)
		}
		close(ch)
	}()
	out := map[string][]string{}
	for d := range ch {
		// Desc keeps its fields unexported; its String form has them.
		s := d.String()
		m := descName.FindStringSubmatch(s)
		if m == nil {
			continue
		}
		var labels []string
		if l := descLabels.FindStringSubmatch(s); l != nil && l[1] != "" {
			labels = strings.Split(l[1], ",")
		}
		out[m[1]] = labels
	}
	return out
}

var (
	descName   = regexp.MustCompile(`^Desc\{fqName: "([^"]+)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}\}$`)
)

// describingRegisterer records what is registered through it.
type describingRegisterer struct {
	prometheus.Registerer
	collectors []prometheus.Collector
}

func (r *describingRegisterer) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return r.Registerer.Register(c)
}

func (r *describingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}
