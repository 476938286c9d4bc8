package config

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// env turns a map into a getenv, so tests never touch the real environment.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func defaults() Config {
	return Config{
		RabbitMQURLs:            []string{"amqp://guest:guest@rabbitmq-service:5672/"},
		RabbitMQQueueType:       "classic",
		RabbitMQMaxDeliveries:   10,
		MaxInflightBytes:        64 << 20,
		RabbitMQQueues:          []string{"audit_events"},
		RabbitMQAlertQueue:      "audit_alerts",
		RabbitMQDeadLetterQueue: "audit_events.dead-letter",
		RabbitMQPrefetch:        256,
		Redis:                   Redis{Addr: "redis-service:6379"},
		RedisKeyPrefix:          "audit-log-analysis:",
		AppPort:                 5001,
		PrometheusPort:          8001,
		Detection:               defaultDetection(),
		ShutdownTimeout:         8 * time.Second,
		LogLevel:                slog.LevelInfo,
		LogFormat:               "json",
	}
}

func defaultDetection() Detection {
	return Detection{
		RulesBuiltin:         true,
		Environment:          "DEVELOPMENT",
		FailedLoginWindow:    60 * time.Second,
		FailedLoginThreshold: 3,
		SensitiveFiles:       []string{"/etc/sudoers", "/root/.ssh/authorized_keys", "/etc/shadow", "/etc/passwd"},
		MaxClockSkew:         5 * time.Minute,
	}
}

func TestLoadReadsEveryVariable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want func(*Config)
	}{
		{"nothing set gives the defaults", nil, func(*Config) {}},
		{"empty values count as unset", map[string]string{"APP_PORT": "", "RABBITMQ_QUEUE": "", "LOG_LEVEL": ""}, func(*Config) {}},
		{"RABBITMQ_URL is used as given", map[string]string{"RABBITMQ_URL": "amqp://u:p@mq:5673/vh", "RABBITMQ_HOST": "ignored"},
			func(c *Config) { c.RabbitMQURLs = []string{"amqp://u:p@mq:5673/vh"} }},
		{"an amqps RABBITMQ_URL is accepted", map[string]string{"RABBITMQ_URL": "amqps://mq.example.com/"},
			func(c *Config) { c.RabbitMQURLs = []string{"amqps://mq.example.com/"} }},
		{"the RabbitMQ URL is built from its parts", map[string]string{
			"RABBITMQ_HOST": "mq", "RABBITMQ_PORT": "5673", "RABBITMQ_USER": "alice", "RABBITMQ_PASS": "s3cret"},
			func(c *Config) { c.RabbitMQURLs = []string{"amqp://alice:s3cret@mq:5673/"} }},
		{"user and password are escaped in the built URL", map[string]string{
			"RABBITMQ_USER": "a@b", "RABBITMQ_PASS": "p:/?#@ss"},
			func(c *Config) { c.RabbitMQURLs = []string{"amqp://a%40b:p%3A%2F%3F%23%40ss@rabbitmq-service:5672/"} }},
		{"an IPv6 RabbitMQ host gets brackets", map[string]string{"RABBITMQ_HOST": "::1"},
			func(c *Config) { c.RabbitMQURLs = []string{"amqp://guest:guest@[::1]:5672/"} }},
		{"queues are set", map[string]string{"RABBITMQ_QUEUE": "in", "RABBITMQ_ALERT_QUEUE": "out"}, func(c *Config) {
			c.RabbitMQQueues, c.RabbitMQAlertQueue, c.RabbitMQDeadLetterQueue = []string{"in"}, "out", "in.dead-letter"
		}},
		{"several event queues, spaces trimmed; the dead-letter queue is named after the first",
			map[string]string{"RABBITMQ_QUEUE": " events.1, events.2 ,events.3,events.4"}, func(c *Config) {
				c.RabbitMQQueues = []string{"events.1", "events.2", "events.3", "events.4"}
				c.RabbitMQDeadLetterQueue = "events.1.dead-letter"
			}},
		{"the dead-letter queue is set", map[string]string{"RABBITMQ_DEAD_LETTER_QUEUE": "dlq"},
			func(c *Config) { c.RabbitMQDeadLetterQueue = "dlq" }},
		{"none turns dead-lettering off", map[string]string{"RABBITMQ_DEAD_LETTER_QUEUE": "none"},
			func(c *Config) { c.RabbitMQDeadLetterQueue = "" }},
		{"the shadow queue is set", map[string]string{"RABBITMQ_SHADOW_QUEUE": "shadow_alerts"},
			func(c *Config) { c.RabbitMQShadowQueue = "shadow_alerts" }},
		{"none is no shadow queue", map[string]string{"RABBITMQ_SHADOW_QUEUE": "none"}, func(c *Config) {}},
		{"prefetch is set", map[string]string{"RABBITMQ_PREFETCH": "65535"}, func(c *Config) { c.RabbitMQPrefetch = 65535 }},
		{"Redis is built from its parts", map[string]string{
			"REDIS_HOST": "cache", "REDIS_PORT": "6380", "REDIS_PASSWORD": "pw", "REDIS_DB": "2"},
			func(c *Config) { c.Redis = Redis{Addr: "cache:6380", Password: "pw", DB: 2} }},
		{"REDIS_URL states everything", map[string]string{
			"REDIS_URL": "redis://bob:pw@cache:6390/4", "REDIS_HOST": "other", "REDIS_PORT": "1", "REDIS_PASSWORD": "other", "REDIS_DB": "9"},
			func(c *Config) { c.Redis = Redis{Addr: "cache:6390", Username: "bob", Password: "pw", DB: 4} }},
		{"rediss means TLS", map[string]string{"REDIS_URL": "rediss://cache"},
			func(c *Config) { c.Redis = Redis{Addr: "cache:6379", TLS: true} }},
		{"the parts fill what REDIS_URL leaves out", map[string]string{
			"REDIS_URL": "redis://cache/", "REDIS_PORT": "7000", "REDIS_PASSWORD": "pw", "REDIS_DB": "3"},
			func(c *Config) { c.Redis = Redis{Addr: "cache:7000", Password: "pw", DB: 3} }},
		{"REDIS_PASSWORD fills an empty password in the URL", map[string]string{
			"REDIS_URL": "redis://bob:@cache", "REDIS_PASSWORD": "pw"},
			func(c *Config) { c.Redis = Redis{Addr: "cache:6379", Username: "bob", Password: "pw"} }},
		{"an escaped password in REDIS_URL is unescaped", map[string]string{"REDIS_URL": "redis://:p%40ss%2F@[::1]:6379/0"},
			func(c *Config) { c.Redis = Redis{Addr: "[::1]:6379", Password: "p@ss/"} }},
		{"the key prefix is set", map[string]string{"REDIS_KEY_PREFIX": "x:"}, func(c *Config) { c.RedisKeyPrefix = "x:" }},
		{"RABBITMQ_URLS names the nodes of a cluster in order", map[string]string{
			"RABBITMQ_URLS": " amqp://u:p@mq-0:5672/ ,amqps://u:p@mq-1/vh,", "RABBITMQ_URL": "amqp://ignored/", "RABBITMQ_HOST": "ignored"},
			func(c *Config) { c.RabbitMQURLs = []string{"amqp://u:p@mq-0:5672/", "amqps://u:p@mq-1/vh"} }},
		{"quorum queues and a delivery limit", map[string]string{"RABBITMQ_QUEUE_TYPE": "Quorum", "RABBITMQ_MAX_DELIVERIES": "3"},
			func(c *Config) { c.RabbitMQQueueType, c.RabbitMQMaxDeliveries = "quorum", 3 }},
		{"the in-flight byte budget takes units", map[string]string{"MAX_INFLIGHT_BYTES": "16MiB"},
			func(c *Config) { c.MaxInflightBytes = 16 << 20 }},
		{"the in-flight byte budget takes plain bytes", map[string]string{"MAX_INFLIGHT_BYTES": "2097152"},
			func(c *Config) { c.MaxInflightBytes = 2 << 20 }},
		{"REDIS_USERNAME names the ACL user", map[string]string{"REDIS_USERNAME": "detector", "REDIS_PASSWORD": "pw"},
			func(c *Config) { c.Redis.Username, c.Redis.Password = "detector", "pw" }},
		{"the user in REDIS_URL wins over REDIS_USERNAME", map[string]string{"REDIS_URL": "redis://bob:pw@cache", "REDIS_USERNAME": "other"},
			func(c *Config) { c.Redis = Redis{Addr: "cache:6379", Username: "bob", Password: "pw"} }},
		{"REDIS_TLS turns TLS on", map[string]string{"REDIS_TLS": "true"}, func(c *Config) { c.Redis.TLS = true }},
		{"Redis Cluster seeds", map[string]string{"REDIS_CLUSTER_ADDRS": "10.0.0.1:7000, redis-1:7001 ,[::1]:7002"},
			func(c *Config) { c.Redis.ClusterAddrs = []string{"10.0.0.1:7000", "redis-1:7001", "[::1]:7002"} }},
		{"Redis Sentinel", map[string]string{"REDIS_SENTINEL_ADDRS": "s1:26379,s2:26379", "REDIS_SENTINEL_MASTER": "audit",
			"REDIS_SENTINEL_PASSWORD": "spw", "REDIS_DB": "1"},
			func(c *Config) {
				c.Redis.SentinelAddrs, c.Redis.SentinelMaster, c.Redis.SentinelPassword, c.Redis.DB = []string{"s1:26379", "s2:26379"}, "audit", "spw", 1
			}},
		{"ports are set", map[string]string{"APP_PORT": "8080", "PROMETHEUS_PORT": "9090"},
			func(c *Config) { c.AppPort, c.PrometheusPort = 8080, 9090 }},
		{"the environment is set", map[string]string{"ENVIRONMENT": "PRODUCTION"}, func(c *Config) { c.Environment = "PRODUCTION" }},
		{"the detection settings are set and marked as overrides", map[string]string{
			"FAILED_LOGIN_WINDOW_SECONDS": "300", "FAILED_LOGIN_THRESHOLD": "10", "SENSITIVE_FILES": " /a ,, /b/c ,"},
			func(c *Config) {
				c.FailedLoginWindow, c.FailedLoginThreshold, c.SensitiveFiles = 300*time.Second, 10, []string{"/a", "/b/c"}
				c.Overrides = Overrides{FailedLoginWindow: true, FailedLoginThreshold: true, SensitiveFiles: true}
			}},
		{"a detection setting equal to its default is still an override", map[string]string{"FAILED_LOGIN_THRESHOLD": "3"},
			func(c *Config) { c.Overrides.FailedLoginThreshold = true }},
		{"the rules file is set", map[string]string{"RULES_FILE": "/etc/rules.yaml"}, func(c *Config) { c.RulesFiles = []string{"/etc/rules.yaml"} }},
		{"RULES_FILE is a comma-separated list", map[string]string{"RULES_FILE": " a.yaml, ,rules.d/ "},
			func(c *Config) { c.RulesFiles = []string{"a.yaml", "rules.d/"} }},
		{"RULES_BUILTIN=false leaves the built-in rules out", map[string]string{"RULES_BUILTIN": "false"},
			func(c *Config) { c.RulesBuiltin = false }},
		{"the clock skew may be zero", map[string]string{"MAX_CLOCK_SKEW": "0"}, func(c *Config) { c.MaxClockSkew = 0 }},
		{"durations are Go durations", map[string]string{"MAX_CLOCK_SKEW": "90s", "SHUTDOWN_TIMEOUT": "1m30s"},
			func(c *Config) { c.MaxClockSkew, c.ShutdownTimeout = 90*time.Second, 90*time.Second }},
		{"log level and format ignore case", map[string]string{"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "Text"},
			func(c *Config) { c.LogLevel, c.LogFormat = slog.LevelDebug, "text" }},
		{"warning is a log level", map[string]string{"LOG_LEVEL": "warning"}, func(c *Config) { c.LogLevel = slog.LevelWarn }},
		{"error is a log level", map[string]string{"LOG_LEVEL": "error"}, func(c *Config) { c.LogLevel = slog.LevelError }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Load(env(tt.env))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := defaults()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestLoadRejectsInvalidValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"a port that is not a number", map[string]string{"APP_PORT": "abc"}, `APP_PORT: "abc" is not a port (1-65535)`},
		{"port zero", map[string]string{"PROMETHEUS_PORT": "0"}, `PROMETHEUS_PORT: "0" is not a port`},
		{"a port above 65535", map[string]string{"RABBITMQ_PORT": "65536"}, `RABBITMQ_PORT: "65536" is not a port`},
		{"a bad Redis port", map[string]string{"REDIS_PORT": "-1"}, `REDIS_PORT: "-1" is not a port`},
		{"the same port twice", map[string]string{"APP_PORT": "8001"}, "PROMETHEUS_PORT: 8001 is also APP_PORT"},
		{"prefetch zero", map[string]string{"RABBITMQ_PREFETCH": "0"}, `RABBITMQ_PREFETCH: "0" is not a prefetch count (1-65535)`},
		{"prefetch too large", map[string]string{"RABBITMQ_PREFETCH": "65536"}, `RABBITMQ_PREFETCH: "65536"`},
		{"a negative Redis database", map[string]string{"REDIS_DB": "-1"}, `REDIS_DB: "-1" is not a database number`},
		{"a window of zero seconds", map[string]string{"FAILED_LOGIN_WINDOW_SECONDS": "0"}, `FAILED_LOGIN_WINDOW_SECONDS: "0" is not a number of seconds`},
		{"a window with a unit", map[string]string{"FAILED_LOGIN_WINDOW_SECONDS": "60s"}, `FAILED_LOGIN_WINDOW_SECONDS: "60s"`},
		{"a window too long for a duration", map[string]string{"FAILED_LOGIN_WINDOW_SECONDS": "9999999999999"}, "FAILED_LOGIN_WINDOW_SECONDS: 9999999999999 seconds is too long"},
		{"a threshold of zero", map[string]string{"FAILED_LOGIN_THRESHOLD": "0"}, `FAILED_LOGIN_THRESHOLD: "0" is not a threshold`},
		{"a relative sensitive file", map[string]string{"SENSITIVE_FILES": "/etc/shadow,etc/passwd"}, `SENSITIVE_FILES: "etc/passwd" is not an absolute path`},
		{"sensitive files with no path", map[string]string{"SENSITIVE_FILES": " , "}, `SENSITIVE_FILES: " , " names no path`},
		{"a clock skew without a unit", map[string]string{"MAX_CLOCK_SKEW": "300"}, `MAX_CLOCK_SKEW: "300" is not a duration`},
		{"a negative clock skew", map[string]string{"MAX_CLOCK_SKEW": "-1s"}, `MAX_CLOCK_SKEW: "-1s" is not a duration >= 0`},
		{"a zero shutdown timeout", map[string]string{"SHUTDOWN_TIMEOUT": "0s"}, `SHUTDOWN_TIMEOUT: "0s" is not a duration > 0`},
		{"an unknown log level", map[string]string{"LOG_LEVEL": "verbose"}, `LOG_LEVEL: "verbose" is not one of debug, info, warn`},
		{"an unknown log format", map[string]string{"LOG_FORMAT": "xml"}, `LOG_FORMAT: "xml" is not one of json, text`},
		{"a key prefix with a hash tag", map[string]string{"REDIS_KEY_PREFIX": "{x}:"}, `REDIS_KEY_PREFIX: "{x}:" contains '{' or '}'`},
		{"a reserved queue name", map[string]string{"RABBITMQ_QUEUE": "amq.events"}, `RABBITMQ_QUEUE: "amq.events" starts with "amq."`},
		{"a queue name too long for AMQP", map[string]string{"RABBITMQ_ALERT_QUEUE": strings.Repeat("q", 256)}, "RABBITMQ_ALERT_QUEUE: queue name is longer than 255 bytes"},
		{"a default dead-letter queue name too long", map[string]string{"RABBITMQ_QUEUE": strings.Repeat("q", 250)}, "RABBITMQ_DEAD_LETTER_QUEUE: queue name is longer"},
		{"alerts published to the event queue", map[string]string{"RABBITMQ_ALERT_QUEUE": "audit_events"}, `RABBITMQ_ALERT_QUEUE: "audit_events" is also in RABBITMQ_QUEUE`},
		{"an empty name in the list of event queues", map[string]string{"RABBITMQ_QUEUE": "a,,b"}, `RABBITMQ_QUEUE: "a,,b" holds an empty queue name`},
		{"a trailing comma in the list of event queues", map[string]string{"RABBITMQ_QUEUE": "a,b,"}, `RABBITMQ_QUEUE: "a,b," holds an empty queue name`},
		{"an event queue named twice", map[string]string{"RABBITMQ_QUEUE": "a, b,a"}, `RABBITMQ_QUEUE: "a, b,a" names queue "a" twice`},
		{"a reserved name among several event queues", map[string]string{"RABBITMQ_QUEUE": "a,amq.b"}, `RABBITMQ_QUEUE: "amq.b" starts with "amq."`},
		{"alerts published to one of several event queues", map[string]string{"RABBITMQ_QUEUE": "a,b", "RABBITMQ_ALERT_QUEUE": "b"}, `RABBITMQ_ALERT_QUEUE: "b" is also in RABBITMQ_QUEUE`},
		{"dead letters sent to one of several event queues", map[string]string{"RABBITMQ_QUEUE": "a,b", "RABBITMQ_DEAD_LETTER_QUEUE": "b"}, `RABBITMQ_DEAD_LETTER_QUEUE: "b" must differ from RABBITMQ_QUEUE's queues`},
		{"shadow alerts sent to one of several event queues", map[string]string{"RABBITMQ_QUEUE": "a,b", "RABBITMQ_SHADOW_QUEUE": "b"}, `RABBITMQ_SHADOW_QUEUE: "b" must differ from RABBITMQ_QUEUE`},
		{"the default dead-letter queue is one of several event queues", map[string]string{"RABBITMQ_QUEUE": "a,a.dead-letter"}, `RABBITMQ_DEAD_LETTER_QUEUE: "a.dead-letter" must differ`},
		{"shadow alerts sent to the alert queue", map[string]string{"RABBITMQ_SHADOW_QUEUE": "audit_alerts"}, `RABBITMQ_SHADOW_QUEUE: "audit_alerts" must differ`},
		{"dead letters sent to the alert queue", map[string]string{"RABBITMQ_DEAD_LETTER_QUEUE": "audit_alerts"}, `RABBITMQ_DEAD_LETTER_QUEUE: "audit_alerts" must differ`},
		{"a host with a port in it", map[string]string{"RABBITMQ_HOST": "mq:5672"}, `RABBITMQ_HOST: "mq:5672" is not a host name or IP address`},
		{"a host with a path in it", map[string]string{"REDIS_HOST": "cache/0"}, `REDIS_HOST: "cache/0" is not a host name`},
		{"an http RABBITMQ_URL", map[string]string{"RABBITMQ_URL": "http://mq/"}, `RABBITMQ_URL: scheme "http" is not amqp or amqps`},
		{"a RABBITMQ_URL without a host", map[string]string{"RABBITMQ_URL": "amqp:///"}, "RABBITMQ_URL: the URL has no host"},
		{"a RABBITMQ_URL with port zero", map[string]string{"RABBITMQ_URL": "amqp://mq:0/"}, "RABBITMQ_URL: the URL's port is not 1-65535"},
		{"a RABBITMQ_URL that is not a URL", map[string]string{"RABBITMQ_URL": "mq:5672"}, "RABBITMQ_URL: malformed URL"},
		{"a tcp REDIS_URL", map[string]string{"REDIS_URL": "tcp://cache:6379"}, `REDIS_URL: scheme "tcp" is not redis or rediss`},
		{"a REDIS_URL database that is not a number", map[string]string{"REDIS_URL": "redis://cache/zero"}, "REDIS_URL: the path is not /N"},
		{"a REDIS_URL with options", map[string]string{"REDIS_URL": "redis://cache/0?dial_timeout=1s"}, "REDIS_URL: query parameters are not supported"},
		{"an http URL among RABBITMQ_URLS", map[string]string{"RABBITMQ_URLS": "amqp://mq-0/,http://mq-1/"}, `RABBITMQ_URLS: URL 2: scheme "http" is not amqp or amqps`},
		{"RABBITMQ_URLS with only commas", map[string]string{"RABBITMQ_URLS": " , "}, "RABBITMQ_URLS: names no URL"},
		{"an unknown queue type", map[string]string{"RABBITMQ_QUEUE_TYPE": "stream"}, `RABBITMQ_QUEUE_TYPE: "stream" is not one of classic, quorum`},
		{"a delivery limit of zero", map[string]string{"RABBITMQ_MAX_DELIVERIES": "0"}, `RABBITMQ_MAX_DELIVERIES: "0" is not a number of deliveries`},
		{"an in-flight budget below one message", map[string]string{"MAX_INFLIGHT_BYTES": "64KiB"}, `MAX_INFLIGHT_BYTES: "64KiB" is not a size of at least 1048576 bytes`},
		{"an in-flight budget that is not a size", map[string]string{"MAX_INFLIGHT_BYTES": "lots"}, `MAX_INFLIGHT_BYTES: "lots" is not a size`},
		{"a missing RabbitMQ CA file", map[string]string{"RABBITMQ_URL": "amqps://mq/", "RABBITMQ_TLS_CA_FILE": "/nonexistent/ca.pem"}, "RABBITMQ_TLS_CA_FILE: read CA file: open /nonexistent/ca.pem"},
		{"a client certificate without its key", map[string]string{"REDIS_TLS_CERT_FILE": "/x/cert.pem"}, "REDIS_TLS_CERT_FILE: REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together"},
		{"TLS files with an amqp URL", map[string]string{"RABBITMQ_TLS_CA_FILE": "/nonexistent/ca.pem"}, "is not an amqps:// URL"},
		{"REDIS_TLS that is not a boolean", map[string]string{"REDIS_TLS": "maybe"}, `REDIS_TLS: "maybe" is not true or false`},
		{"a cluster seed without a port", map[string]string{"REDIS_CLUSTER_ADDRS": "redis-0"}, `REDIS_CLUSTER_ADDRS: "redis-0" is not host:port`},
		{"both Cluster and Sentinel", map[string]string{"REDIS_CLUSTER_ADDRS": "r:7000", "REDIS_SENTINEL_ADDRS": "s:26379", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_CLUSTER_ADDRS: set either"},
		{"Sentinels without a master name", map[string]string{"REDIS_SENTINEL_ADDRS": "s:26379"}, "REDIS_SENTINEL_MASTER: is required"},
		{"a master name without Sentinels", map[string]string{"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_ADDRS: is required"},
		{"a database on Redis Cluster", map[string]string{"REDIS_CLUSTER_ADDRS": "r:7000", "REDIS_DB": "2"}, "REDIS_DB: Redis Cluster has only database 0"},
		{"REDIS_URL with Redis Cluster", map[string]string{"REDIS_CLUSTER_ADDRS": "r:7000", "REDIS_URL": "redis://r:7000"}, "REDIS_URL: names one server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(env(tt.env))
			if err == nil {
				t.Fatalf("Load succeeded, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Load error = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoadReportsEveryProblemTogether(t *testing.T) {
	t.Parallel()
	got, err := Load(env(map[string]string{
		"APP_PORT":               "abc",
		"REDIS_DB":               "x",
		"LOG_LEVEL":              "loud",
		"SENSITIVE_FILES":        "a,b",
		"RABBITMQ_URL":           "http://u:p@h:0/",
		"FAILED_LOGIN_THRESHOLD": "-2",
	}))
	if err == nil {
		t.Fatal("Load succeeded, want errors")
	}
	if !reflect.DeepEqual(got, Config{}) {
		t.Errorf("Load returned %+v with its error, want the zero Config", got)
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Fatalf("error %T is not a joined error", err)
	}
	var names []string
	for _, e := range joined.Unwrap() {
		name, _, _ := strings.Cut(e.Error(), ":")
		names = append(names, name)
	}
	want := []string{"RABBITMQ_URL", "REDIS_DB", "APP_PORT", "FAILED_LOGIN_THRESHOLD", "SENSITIVE_FILES", "LOG_LEVEL"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("one error per variable: got %q, want %q", names, want)
	}
	// Several problems with one variable share that variable's error.
	if msg := joined.Unwrap()[0].Error(); !strings.Contains(msg, "scheme") || !strings.Contains(msg, "port") {
		t.Errorf("RABBITMQ_URL error = %q, want both the scheme and the port named", msg)
	}
	if msg := joined.Unwrap()[4].Error(); !strings.Contains(msg, `"a"`) || !strings.Contains(msg, `"b"`) {
		t.Errorf("SENSITIVE_FILES error = %q, want both bad paths named", msg)
	}
}

func TestPasswordsNeverAppear(t *testing.T) {
	t.Parallel()
	const secret = "Hunter2Secret"
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"RABBITMQ_URL with a bad scheme", map[string]string{"RABBITMQ_URL": "http://user:" + secret + "@mq/"}},
		{"RABBITMQ_URL with an unescaped slash in the password", map[string]string{"RABBITMQ_URL": "amqp://user:12/" + secret + "@mq/"}},
		{"RABBITMQ_URL with an unescaped colon in the password", map[string]string{"RABBITMQ_URL": "amqp://user:" + secret + ":x/y@mq/"}},
		{"RABBITMQ_URL with an unescaped hash in the password", map[string]string{"RABBITMQ_URL": "amqp://user:a#" + secret + "@mq/"}},
		{"RABBITMQ_URL with a space", map[string]string{"RABBITMQ_URL": "amqp://user:" + secret + " @mq/"}},
		{"RABBITMQ_URL with a bad escape", map[string]string{"RABBITMQ_URL": "amqp://user:%zz" + secret + "@mq/"}},
		{"REDIS_URL with a bad scheme", map[string]string{"REDIS_URL": "http://:" + secret + "@cache/"}},
		{"REDIS_URL with an unescaped slash in the password", map[string]string{"REDIS_URL": "redis://:1/" + secret + "@cache/"}},
		{"REDIS_URL with a query in the password", map[string]string{"REDIS_URL": "redis://cache:1/0?" + secret}},
		{"REDIS_URL with a bad database", map[string]string{"REDIS_URL": "redis://u:1/" + secret}},
		{"passwords beside other errors", map[string]string{"RABBITMQ_PASS": secret, "REDIS_PASSWORD": secret, "APP_PORT": "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(env(tt.env))
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error shows the password: %q", err)
			}
		})
	}
}

func TestLogValueHidesPasswords(t *testing.T) {
	t.Parallel()
	const secret = "Hunter2Secret"
	for _, e := range []map[string]string{
		{"RABBITMQ_PASS": secret, "REDIS_PASSWORD": secret},
		{"RABBITMQ_URL": "amqps://user:" + secret + "@mq:5671/vh", "REDIS_URL": "rediss://user:" + secret + "@cache:6380/1"},
	} {
		c, err := Load(env(e))
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		var buf strings.Builder
		slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", c)
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("redis", "redis", c.Redis)
		out := buf.String()
		if strings.Contains(out, secret) {
			t.Errorf("log shows the password: %s", out)
		}
		for _, want := range []string{"password_set=true", "xxxxx", `"password_set":true`} {
			if !strings.Contains(out, want) {
				t.Errorf("log lacks %q: %s", want, out)
			}
		}
	}
}

func TestRedactedRabbitMQURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ url, want string }{
		{"amqp://alice:s3cret@mq:5672/", "amqp://alice:xxxxx@mq:5672/"},
		{"amqps://mq/vh", "amqps://mq/vh"},
		{"amqp://alice@mq/", "amqp://alice@mq/"},
		{"amqp://a:%zz@mq/", "(malformed URL)"},
	}
	for _, tt := range tests {
		if got := (Config{RabbitMQURLs: []string{tt.url}}).RedactedRabbitMQURLs(); len(got) != 1 || got[0] != tt.want {
			t.Errorf("RedactedRabbitMQURLs(%q) = %q, want %q", tt.url, got, tt.want)
		}
	}
}

func TestWithDotEnv(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, ".env")
	content := "# settings\nAPP_PORT=6001\nexport RABBITMQ_QUEUE=from_file\nREDIS_PASSWORD='pa$$word'\nENVIRONMENT=STAGING\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	real := env(map[string]string{"APP_PORT": "7001", "ENVIRONMENT": ""})

	getenv, err := WithDotEnv(file, real)
	if err != nil {
		t.Fatalf("WithDotEnv: %v", err)
	}
	for key, want := range map[string]string{
		"APP_PORT":       "7001",      // the real environment wins
		"RABBITMQ_QUEUE": "from_file", // the file fills the gaps
		"REDIS_PASSWORD": "pa$$word",  // single quotes keep '$'
		"ENVIRONMENT":    "STAGING",   // an empty real value is unset
		"REDIS_HOST":     "",
	} {
		if got := getenv(key); got != want {
			t.Errorf("getenv(%q) = %q, want %q", key, got, want)
		}
	}
	c, err := Load(getenv)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.AppPort != 7001 || c.RabbitMQQueues[0] != "from_file" {
		t.Errorf("Load through WithDotEnv: AppPort %d, RabbitMQQueues %q", c.AppPort, c.RabbitMQQueues)
	}
}

func TestWithDotEnvMissingFile(t *testing.T) {
	t.Parallel()
	getenv, err := WithDotEnv(filepath.Join(t.TempDir(), "absent.env"), env(map[string]string{"A": "1"}))
	if err != nil {
		t.Fatalf("WithDotEnv: %v", err)
	}
	if got := getenv("A"); got != "1" {
		t.Errorf("getenv(A) = %q, want 1", got)
	}
}

func TestWithDotEnvRejectsBadFiles(t *testing.T) {
	t.Parallel()
	const secret = "Hunter2Secret"
	tests := []struct {
		name, content, wantErr string
	}{
		{"a line without '='", "A=1\n\nPASSWORD " + secret + "\n", "line 3: unexpected character"},
		{"an unterminated quote", "A=1\nREDIS_PASSWORD=\"" + secret + "\n", "a quoted value is not terminated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), ".env")
			if err := os.WriteFile(file, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := WithDotEnv(file, env(nil))
			if err == nil {
				t.Fatal("WithDotEnv succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %q, want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error shows the file's text: %q", err)
			}
		})
	}

	t.Run("a directory instead of a file", func(t *testing.T) {
		t.Parallel()
		if _, err := WithDotEnv(t.TempDir(), env(nil)); err == nil {
			t.Error("WithDotEnv succeeded, want an error")
		}
	})
}

func TestLoadDetectionReadsOnlyTheDetectionSettings(t *testing.T) {
	t.Parallel()
	got, err := LoadDetection(env(map[string]string{
		"RABBITMQ_PORT": "abc", "REDIS_URL": "nonsense://", "APP_PORT": "0",
		"RULES_FILE": "a.yaml,b", "RULES_BUILTIN": "no", "FAILED_LOGIN_THRESHOLD": "5", "ENVIRONMENT": "REPLAY",
	}))
	if err != nil {
		t.Fatalf("LoadDetection: %v", err)
	}
	want := defaultDetection()
	want.RulesFiles, want.RulesBuiltin, want.FailedLoginThreshold, want.Environment = []string{"a.yaml", "b"}, false, 5, "REPLAY"
	want.Overrides.FailedLoginThreshold = true
	if !reflect.DeepEqual(got, want) {
		t.Errorf("LoadDetection =\n%+v\nwant\n%+v", got, want)
	}
	_, err = LoadDetection(env(map[string]string{"RULES_BUILTIN": "maybe", "MAX_CLOCK_SKEW": "soon"}))
	for _, want := range []string{`RULES_BUILTIN: "maybe" is not true or false`, "MAX_CLOCK_SKEW"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadDetection error = %v, want it to contain %q", err, want)
		}
	}
}

func TestLoadLoggingFallsBackToTheDefaults(t *testing.T) {
	t.Parallel()
	if lvl, f := LoadLogging(env(map[string]string{"LOG_LEVEL": "debug", "LOG_FORMAT": "TEXT", "APP_PORT": "x"})); lvl != slog.LevelDebug || f != "text" {
		t.Errorf("LoadLogging = %v, %q; want DEBUG, text", lvl, f)
	}
	if lvl, f := LoadLogging(env(map[string]string{"LOG_LEVEL": "loud", "LOG_FORMAT": "xml"})); lvl != slog.LevelInfo || f != "json" {
		t.Errorf("LoadLogging of bad values = %v, %q; want INFO, json", lvl, f)
	}
}

func TestLoadDotEnvSaysWhetherTheFileWasThere(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, ".env")
	if err := os.WriteFile(file, []byte("APP_PORT=7000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	getenv, loaded, err := LoadDotEnv(file, env(nil))
	if err != nil || !loaded || getenv("APP_PORT") != "7000" {
		t.Errorf("LoadDotEnv of a file = loaded %v, APP_PORT %q, %v", loaded, getenv("APP_PORT"), err)
	}
	if _, loaded, err := LoadDotEnv(filepath.Join(dir, "absent"), env(nil)); err != nil || loaded {
		t.Errorf("LoadDotEnv of a missing file = loaded %v, %v", loaded, err)
	}
}

func TestTLSFilesLoadIntoAVerifyingClientConfig(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	c, err := Load(env(map[string]string{
		"RABBITMQ_URL":           "amqps://mq.example.com/",
		"RABBITMQ_TLS_CA_FILE":   pki.CAFile,
		"RABBITMQ_TLS_CERT_FILE": pki.ClientCert,
		"RABBITMQ_TLS_KEY_FILE":  pki.ClientKey,
		"REDIS_TLS_CA_FILE":      pki.CAFile,
	}))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !c.Redis.TLS {
		t.Error("a Redis CA file did not turn TLS on")
	}
	tc, err := c.RabbitMQTLS.ClientConfig("mq.example.com")
	if err != nil {
		t.Fatalf("ClientConfig: %v", err)
	}
	if tc.InsecureSkipVerify || tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.ServerName != "mq.example.com" {
		t.Errorf("ClientConfig = %+v, want verification against the CA, the client certificate and the server name", tc)
	}

	_, err = Load(env(map[string]string{
		"REDIS_TLS_CERT_FILE": pki.ClientCert,
		"REDIS_TLS_KEY_FILE":  pki.ServerKey,
		"REDIS_TLS_CA_FILE":   pki.ClientKey,
	}))
	for _, want := range []string{"REDIS_TLS_CERT_FILE: load client certificate", "private key does not match public key", "REDIS_TLS_CA_FILE: CA file"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load with a mismatched key and a key as CA: error %v, want it to contain %q", err, want)
		}
	}
}
