// Package config owns the service's settings: it reads the environment (and,
// through WithDotEnv, an optional .env file) once into a typed Config,
// validates every variable, and keeps secrets out of errors and logs.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config is the whole of the service's configuration. Load fills it from the
// environment; nothing else in the service reads environment variables.
type Config struct {
	// RabbitMQURLs are the nodes of one RabbitMQ cluster, tried in order:
	// RABBITMQ_URLS, else RABBITMQ_URL, else one URL built from
	// RABBITMQ_USER, RABBITMQ_PASS, RABBITMQ_HOST and RABBITMQ_PORT. They
	// hold the password: log RedactedRabbitMQURLs instead.
	RabbitMQURLs []string
	// RabbitMQQueues are the event queues, consumed together with one
	// prefetch budget: RABBITMQ_QUEUE, one name or a comma-separated list
	// (for events a platform shards over several queues). The default
	// dead-letter queue is named after the first.
	RabbitMQQueues     []string
	RabbitMQAlertQueue string
	// RabbitMQQueueType is the x-queue-type given to a queue the service
	// has to create: "classic" or "quorum". An existing queue is used as
	// the platform declared it, whatever its type and arguments.
	RabbitMQQueueType string
	// RabbitMQMaxDeliveries: a delivery whose x-delivery-count (quorum
	// queues count deliveries) says it was delivered more often than this
	// is dead-lettered instead of handled again.
	RabbitMQMaxDeliveries int
	// RabbitMQTLS are the files for amqps:// connections; empty files
	// mean the system roots and no client certificate.
	RabbitMQTLS TLSFiles
	// RabbitMQDeadLetterQueue receives deliveries that can never be
	// processed. Empty means dead-lettering is off and such deliveries are
	// rejected without requeue.
	RabbitMQDeadLetterQueue string
	// RabbitMQShadowQueue receives the alerts of rules in shadow mode.
	// Empty (the default, or "none") means they are only counted and
	// logged; they never go to the alert queue.
	RabbitMQShadowQueue string
	RabbitMQPrefetch    int
	// MaxInflightBytes bounds the bodies of the deliveries being handled
	// at once: a batch closes early when it reaches it.
	MaxInflightBytes int64

	Redis Redis
	// RedisKeyPrefix starts every key the service writes. It never contains
	// '{' or '}', so a prefix cannot turn into a Redis Cluster hash tag.
	RedisKeyPrefix string

	AppPort        int
	PrometheusPort int

	// Detection holds the settings replay reads too.
	Detection

	ShutdownTimeout time.Duration
	LogLevel        slog.Level
	LogFormat       string // "json" or "text"
}

// Redis says how to reach Redis: one server at Addr, a Redis Cluster
// through ClusterAddrs, or the master that Sentinels at SentinelAddrs name
// SentinelMaster. At most one of ClusterAddrs and SentinelAddrs is set.
type Redis struct {
	Addr     string // host:port
	Username string
	Password string
	DB       int
	// TLS is set by a rediss:// URL, REDIS_TLS=true or any TLS file.
	TLS      bool
	TLSFiles TLSFiles

	// ClusterAddrs are seed nodes (host:port) of a Redis Cluster.
	ClusterAddrs []string
	// SentinelAddrs are Sentinels (host:port) that watch SentinelMaster.
	SentinelAddrs    []string
	SentinelMaster   string
	SentinelUsername string
	SentinelPassword string
}

// Mode names how Redis is reached: "single", "cluster" or "sentinel".
func (r Redis) Mode() string {
	switch {
	case len(r.ClusterAddrs) > 0:
		return "cluster"
	case len(r.SentinelAddrs) > 0:
		return "sentinel"
	}
	return "single"
}

// TLSFiles are PEM files for a TLS client: the CA that signs the server's
// certificate (empty: the system roots) and the client's certificate and
// key (both or neither).
type TLSFiles struct {
	CAFile   string
	CertFile string
	KeyFile  string
}

// IsZero reports whether no file is set.
func (f TLSFiles) IsZero() bool { return f == TLSFiles{} }

// Defaults, as the service has always had them.
const (
	defaultRabbitMQHost    = "rabbitmq-service"
	defaultRabbitMQPort    = 5672
	defaultRabbitMQUser    = "guest"
	defaultRabbitMQPass    = "guest"
	defaultQueue           = "audit_events"
	defaultAlertQueue      = "audit_alerts"
	deadLetterSuffix       = ".dead-letter"
	noDeadLetterQueue      = "none"
	defaultPrefetch        = 256
	defaultQueueType       = "classic"
	defaultMaxDeliveries   = 10
	defaultInflightBytes   = 64 << 20
	minInflightBytes       = 1 << 20
	defaultRedisHost       = "redis-service"
	defaultRedisPort       = 6379
	defaultRedisKeyPrefix  = "audit-log-analysis:"
	defaultAppPort         = 5001
	defaultPrometheusPort  = 8001
	defaultEnvironment     = "DEVELOPMENT"
	defaultWindow          = 60 * time.Second
	defaultThreshold       = 3
	defaultMaxClockSkew    = 5 * time.Minute
	defaultShutdownTimeout = 8 * time.Second
	defaultLogFormat       = "json"
)

// Load reads the configuration through getenv (os.Getenv, or the result of
// WithDotEnv, or a map in tests). An empty value counts as unset. It reports
// every invalid variable at once, one error per variable joined with
// errors.Join; no error ever contains a password.
func Load(getenv func(string) string) (Config, error) {
	l := &loader{getenv: getenv}
	c := Config{
		RabbitMQURLs:       l.rabbitMQURLs(),
		RabbitMQQueues:     l.queueList("RABBITMQ_QUEUE", defaultQueue),
		RabbitMQAlertQueue: l.queue("RABBITMQ_ALERT_QUEUE", defaultAlertQueue),
		RabbitMQQueueType:  l.oneOf("RABBITMQ_QUEUE_TYPE", defaultQueueType, "classic", "quorum"),
		RabbitMQMaxDeliveries: l.integer("RABBITMQ_MAX_DELIVERIES", defaultMaxDeliveries, 1, math.MaxInt32,
			"a number of deliveries (an integer >= 1)"),
		RabbitMQTLS:      l.tlsFiles("RABBITMQ_TLS_"),
		RabbitMQPrefetch: l.integer("RABBITMQ_PREFETCH", defaultPrefetch, 1, math.MaxUint16, "a prefetch count (1-65535)"),
		MaxInflightBytes: l.bytes("MAX_INFLIGHT_BYTES", defaultInflightBytes, minInflightBytes),
		Redis:            l.redis(),
		RedisKeyPrefix:   l.keyPrefix(),
		AppPort:          l.port("APP_PORT", defaultAppPort),
		PrometheusPort:   l.port("PROMETHEUS_PORT", defaultPrometheusPort),
		Detection:        l.detection(),
		ShutdownTimeout:  l.duration("SHUTDOWN_TIMEOUT", defaultShutdownTimeout, true),
		LogLevel:         l.logLevel(),
		LogFormat:        l.oneOf("LOG_FORMAT", defaultLogFormat, "json", "text"),
	}
	c.RabbitMQDeadLetterQueue = l.deadLetterQueue(c.RabbitMQQueues)
	c.RabbitMQShadowQueue = l.shadowQueue()

	// Cross-checks, reported only when both sides are valid on their own.
	events := func(q string) bool { return slices.Contains(c.RabbitMQQueues, q) }
	if !l.failed("RABBITMQ_QUEUE") && !l.failed("RABBITMQ_ALERT_QUEUE") && events(c.RabbitMQAlertQueue) {
		l.fail("RABBITMQ_ALERT_QUEUE", "%q is also in RABBITMQ_QUEUE: alerts would be consumed as events", c.RabbitMQAlertQueue)
	}
	if dlq := c.RabbitMQDeadLetterQueue; dlq != "" && !l.failed("RABBITMQ_DEAD_LETTER_QUEUE") &&
		(events(dlq) || dlq == c.RabbitMQAlertQueue) {
		l.fail("RABBITMQ_DEAD_LETTER_QUEUE", "%q must differ from RABBITMQ_QUEUE's queues and RABBITMQ_ALERT_QUEUE", dlq)
	}
	if sq := c.RabbitMQShadowQueue; sq != "" && !l.failed("RABBITMQ_SHADOW_QUEUE") &&
		(events(sq) || sq == c.RabbitMQAlertQueue || sq == c.RabbitMQDeadLetterQueue) {
		l.fail("RABBITMQ_SHADOW_QUEUE", "%q must differ from RABBITMQ_QUEUE, RABBITMQ_ALERT_QUEUE and RABBITMQ_DEAD_LETTER_QUEUE", sq)
	}
	if !c.RabbitMQTLS.IsZero() && !l.failed("RABBITMQ_URLS") && !l.failed("RABBITMQ_URL") {
		for _, u := range c.RabbitMQURLs {
			if !strings.HasPrefix(u, "amqps://") {
				l.fail("RABBITMQ_TLS_CA_FILE", "TLS files are set but %s is not an amqps:// URL", redactURL(u))
				break
			}
		}
	}
	if !l.failed("APP_PORT") && !l.failed("PROMETHEUS_PORT") && c.AppPort == c.PrometheusPort {
		l.fail("PROMETHEUS_PORT", "%d is also APP_PORT; the two servers need different ports", c.PrometheusPort)
	}

	if err := l.err(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// RedactedRabbitMQURLs returns RabbitMQURLs with their passwords replaced
// by "xxxxx", for logs and errors.
func (c Config) RedactedRabbitMQURLs() []string {
	out := make([]string, len(c.RabbitMQURLs))
	for i, u := range c.RabbitMQURLs {
		out[i] = redactURL(u)
	}
	return out
}

// redactURL returns raw with its password replaced by "xxxxx".
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(malformed URL)"
	}
	return u.Redacted()
}

// LogValue summarises the configuration for the start-up log line. It says
// whether passwords are set, never what they are.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Any("rabbitmq_urls", c.RedactedRabbitMQURLs()),
		slog.String("rabbitmq_queue", strings.Join(c.RabbitMQQueues, ",")),
		slog.String("rabbitmq_alert_queue", c.RabbitMQAlertQueue),
		slog.String("rabbitmq_dead_letter_queue", c.RabbitMQDeadLetterQueue),
		slog.String("rabbitmq_shadow_queue", c.RabbitMQShadowQueue),
		slog.String("rabbitmq_queue_type", c.RabbitMQQueueType),
		slog.Int("rabbitmq_max_deliveries", c.RabbitMQMaxDeliveries),
		slog.Any("rabbitmq_tls", c.RabbitMQTLS),
		slog.Int("rabbitmq_prefetch", c.RabbitMQPrefetch),
		slog.Int64("max_inflight_bytes", c.MaxInflightBytes),
		slog.Any("redis", c.Redis),
		slog.String("redis_key_prefix", c.RedisKeyPrefix),
		slog.Int("app_port", c.AppPort),
		slog.Int("prometheus_port", c.PrometheusPort),
		slog.String("environment", c.Environment),
		slog.String("failed_login_window", c.FailedLoginWindow.String()),
		slog.Int("failed_login_threshold", c.FailedLoginThreshold),
		slog.Any("sensitive_files", c.SensitiveFiles),
		slog.Any("rules_files", c.RulesFiles),
		slog.Bool("rules_builtin", c.RulesBuiltin),
		slog.String("max_clock_skew", c.MaxClockSkew.String()),
		slog.String("shutdown_timeout", c.ShutdownTimeout.String()),
		slog.String("log_level", c.LogLevel.String()),
		slog.String("log_format", c.LogFormat),
	)
}

// LogValue describes the Redis settings without the password, so that
// logging a Redis value on its own is as safe as logging a Config.
func (r Redis) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("mode", r.Mode())}
	switch r.Mode() {
	case "cluster":
		attrs = append(attrs, slog.Any("cluster_addrs", r.ClusterAddrs))
	case "sentinel":
		attrs = append(attrs, slog.Any("sentinel_addrs", r.SentinelAddrs), slog.String("sentinel_master", r.SentinelMaster),
			slog.String("sentinel_username", r.SentinelUsername), slog.Bool("sentinel_password_set", r.SentinelPassword != ""))
	default:
		attrs = append(attrs, slog.String("addr", r.Addr))
	}
	return slog.GroupValue(append(attrs,
		slog.String("username", r.Username),
		slog.Bool("password_set", r.Password != ""),
		slog.Int("db", r.DB),
		slog.Bool("tls", r.TLS),
		slog.Any("tls_files", r.TLSFiles),
	)...)
}

// LogValue names the files; they hold no secret but the key, whose path
// is not one.
func (f TLSFiles) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("ca_file", f.CAFile),
		slog.String("cert_file", f.CertFile),
		slog.String("key_file", f.KeyFile),
	)
}

// loader reads variables and collects problems, one entry per variable.
type loader struct {
	getenv   func(string) string
	order    []string
	problems map[string][]string
}

func (l *loader) fail(name, format string, args ...any) {
	if l.problems == nil {
		l.problems = make(map[string][]string)
	}
	if _, seen := l.problems[name]; !seen {
		l.order = append(l.order, name)
	}
	l.problems[name] = append(l.problems[name], fmt.Sprintf(format, args...))
}

func (l *loader) failed(name string) bool {
	_, ok := l.problems[name]
	return ok
}

func (l *loader) err() error {
	errs := make([]error, 0, len(l.order))
	for _, name := range l.order {
		errs = append(errs, fmt.Errorf("%s: %s", name, strings.Join(l.problems[name], "; ")))
	}
	return errors.Join(errs...)
}

func (l *loader) isSet(name string) bool { return l.getenv(name) != "" }

func (l *loader) str(name, def string) string {
	if v := l.getenv(name); v != "" {
		return v
	}
	return def
}

// integer reads an integer in [lo, hi]; what describes the expected value
// in an error, e.g. "a port (1-65535)".
func (l *loader) integer(name string, def, lo, hi int, what string) int {
	v := l.getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		l.fail(name, "%q is not %s", v, what)
		return def
	}
	return n
}

func (l *loader) port(name string, def int) int {
	return l.integer(name, def, 1, math.MaxUint16, "a port (1-65535)")
}

// seconds reads a whole number of seconds >= 1 as a duration.
func (l *loader) seconds(name string, def time.Duration) time.Duration {
	n := l.integer(name, int(def/time.Second), 1, math.MaxInt, "a number of seconds (an integer >= 1)")
	if int64(n) > math.MaxInt64/int64(time.Second) {
		l.fail(name, "%d seconds is too long", n)
		return def
	}
	return time.Duration(n) * time.Second
}

// duration reads a Go duration such as "30s" that is >= 0, or > 0 when
// positive is set.
func (l *loader) duration(name string, def time.Duration, positive bool) time.Duration {
	v := l.getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		l.fail(name, "%q is not a duration such as 30s or 5m", v)
	case positive && d <= 0:
		l.fail(name, "%q is not a duration > 0", v)
	case d < 0:
		l.fail(name, "%q is not a duration >= 0", v)
	default:
		return d
	}
	return def
}

// oneOf reads one of a few words, case-insensitively, as lower case.
func (l *loader) oneOf(name, def string, words ...string) string {
	v := l.getenv(name)
	if v == "" {
		return def
	}
	for _, w := range words {
		if strings.EqualFold(v, w) {
			return w
		}
	}
	l.fail(name, "%q is not one of %s", v, strings.Join(words, ", "))
	return def
}

func (l *loader) logLevel() slog.Level {
	// "warning" is accepted too: it is what Python's logging calls the level.
	switch l.oneOf("LOG_LEVEL", "info", "debug", "info", "warn", "warning", "error") {
	case "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// paths reads a comma-separated list of absolute paths; spaces around
// entries and empty entries are dropped.
func (l *loader) paths(name string, def []string) []string {
	v := l.getenv(name)
	if v == "" {
		return append([]string(nil), def...)
	}
	var out []string
	for p := range strings.SplitSeq(v, ",") {
		p = strings.TrimSpace(p)
		switch {
		case p == "":
		case !path.IsAbs(p):
			l.fail(name, "%q is not an absolute path", p)
		default:
			out = append(out, p)
		}
	}
	if len(out) == 0 && !l.failed(name) {
		l.fail(name, "%q names no path", v)
	}
	return out
}

// maxQueueName is the longest name AMQP 0-9-1 can carry (a short string).
const maxQueueName = 255

func (l *loader) queue(name, def string) string {
	q := l.str(name, def)
	l.checkQueue(name, q)
	return q
}

func (l *loader) checkQueue(name, q string) {
	switch {
	case len(q) > maxQueueName:
		l.fail(name, "queue name is longer than %d bytes", maxQueueName)
	case strings.HasPrefix(q, "amq."):
		l.fail(name, "%q starts with \"amq.\", which RabbitMQ reserves", q)
	}
}

// queueList reads a comma-separated list of queue names, trimmed of
// spaces: each must be valid, and none empty or named twice.
func (l *loader) queueList(name, def string) []string {
	v := l.str(name, def)
	var out []string
	for _, q := range strings.Split(v, ",") {
		q = strings.TrimSpace(q)
		switch {
		case q == "":
			l.fail(name, "%q holds an empty queue name", v)
			return []string{def}
		case slices.Contains(out, q):
			l.fail(name, "%q names queue %q twice", v, q)
			return []string{def}
		}
		l.checkQueue(name, q)
		out = append(out, q)
	}
	return out
}

// deadLetterQueue reads RABBITMQ_DEAD_LETTER_QUEUE: by default the first
// event queue's name with deadLetterSuffix, whatever the others are.
func (l *loader) deadLetterQueue(queues []string) string {
	const name = "RABBITMQ_DEAD_LETTER_QUEUE"
	q := l.getenv(name)
	switch q {
	case noDeadLetterQueue:
		return ""
	case "":
		q = queues[0] + deadLetterSuffix
	}
	l.checkQueue(name, q)
	return q
}

// shadowQueue reads RABBITMQ_SHADOW_QUEUE: none by default.
func (l *loader) shadowQueue() string {
	const name = "RABBITMQ_SHADOW_QUEUE"
	q := l.getenv(name)
	if q == "" || q == noDeadLetterQueue {
		return ""
	}
	l.checkQueue(name, q)
	return q
}

func (l *loader) keyPrefix() string {
	const name = "REDIS_KEY_PREFIX"
	p := l.str(name, defaultRedisKeyPrefix)
	if strings.ContainsAny(p, "{}") {
		l.fail(name, "%q contains '{' or '}', which would make a Redis Cluster hash tag", p)
		return defaultRedisKeyPrefix
	}
	return p
}

// host reads a host name or an IP address (an IPv6 address with or without
// brackets).
func (l *loader) host(name, def string) string {
	v := l.getenv(name)
	if v == "" {
		return def
	}
	if h, ok := validHost(v); ok {
		return h
	}
	l.fail(name, "%q is not a host name or IP address", v)
	return def
}

func validHost(h string) (string, bool) {
	if strings.Contains(h, ":") {
		ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
		if ip == nil {
			return "", false
		}
		return ip.String(), true
	}
	if strings.ContainsAny(h, "/@?#[]%\\") || strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "", false
	}
	return h, true
}

// rabbitMQURLs returns the URLs of RABBITMQ_URLS if set and valid, else
// RABBITMQ_URL's, else one URL built from its parts. The parts are
// validated whenever they are set, used or not.
func (l *loader) rabbitMQURLs() []string {
	user := l.str("RABBITMQ_USER", defaultRabbitMQUser)
	pass := l.str("RABBITMQ_PASS", defaultRabbitMQPass)
	host := l.host("RABBITMQ_HOST", defaultRabbitMQHost)
	port := l.port("RABBITMQ_PORT", defaultRabbitMQPort)

	if raw := l.getenv("RABBITMQ_URLS"); raw != "" {
		var urls []string
		for i, u := range strings.Split(raw, ",") {
			u = strings.TrimSpace(u)
			if u == "" {
				continue
			}
			if l.amqpURL("RABBITMQ_URLS", u, i+1) {
				urls = append(urls, u)
			}
		}
		if len(urls) == 0 && !l.failed("RABBITMQ_URLS") {
			l.fail("RABBITMQ_URLS", "names no URL")
		}
		// RABBITMQ_URL is still checked when set, so a typo there is not
		// silently ignored.
		if raw := l.getenv("RABBITMQ_URL"); raw != "" {
			l.amqpURL("RABBITMQ_URL", raw, 0)
		}
		return urls
	}
	if raw := l.getenv("RABBITMQ_URL"); raw != "" {
		if !l.amqpURL("RABBITMQ_URL", raw, 0) {
			return nil
		}
		return []string{raw}
	}
	u := url.URL{
		Scheme: "amqp",
		User:   url.UserPassword(user, pass),
		Host:   net.JoinHostPort(host, strconv.Itoa(port)),
		Path:   "/",
	}
	return []string{u.String()}
}

// amqpURL checks one amqp:// or amqps:// URL of variable name; n > 0 is
// its position in a list, for errors.
func (l *loader) amqpURL(name, raw string, n int) bool {
	at := ""
	if n > 0 {
		at = fmt.Sprintf("URL %d: ", n)
	}
	before := len(l.problems[name])
	u, ok := l.parseURL(name, raw, "amqp://user:password@host:port/vhost")
	if ok && u.Scheme != "amqp" && u.Scheme != "amqps" {
		l.fail(name, "scheme %q is not amqp or amqps", u.Scheme)
	}
	if probs := l.problems[name]; len(probs) > before {
		for i := before; i < len(probs); i++ {
			probs[i] = at + probs[i]
		}
		return false
	}
	return true
}

// addrs reads a comma-separated list of host:port addresses.
func (l *loader) addrs(name string) []string {
	v := l.getenv(name)
	if v == "" {
		return nil
	}
	var out []string
	for a := range strings.SplitSeq(v, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			l.fail(name, "%q is not host:port", a)
			continue
		}
		h, ok := validHost(host)
		p, perr := strconv.Atoi(port)
		if !ok || host == "" || perr != nil || p < 1 || p > math.MaxUint16 {
			l.fail(name, "%q is not host:port with a port 1-65535", a)
			continue
		}
		out = append(out, net.JoinHostPort(h, port))
	}
	if len(out) == 0 && !l.failed(name) {
		l.fail(name, "%q names no address", v)
	}
	return out
}

// boolean reads true/false (also 1/0, yes/no).
func (l *loader) boolean(name string, def bool) bool {
	v := l.getenv(name)
	if v == "" {
		return def
	}
	switch strings.ToLower(v) {
	case "true", "1", "yes", "on":
		return true
	case "false", "0", "no", "off":
		return false
	}
	l.fail(name, "%q is not true or false", v)
	return def
}

// bytes reads a size in bytes: a whole number, optionally followed by
// KiB, MiB or GiB (KB, MB, GB and K, M, G mean the same here), at least
// lo.
func (l *loader) bytes(name string, def, lo int64) int64 {
	v := l.getenv(name)
	if v == "" {
		return def
	}
	num := strings.TrimSpace(v)
	mult := int64(1)
	upper := strings.ToUpper(num)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(upper, u.suffix) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult || n*mult < lo {
		l.fail(name, "%q is not a size of at least %d bytes, such as 64MiB", v, lo)
		return def
	}
	return n * mult
}

// tlsFiles reads PREFIX CA_FILE, CERT_FILE and KEY_FILE and checks that
// they load, so a wrong path fails the start with every other problem.
func (l *loader) tlsFiles(prefix string) TLSFiles {
	f := TLSFiles{
		CAFile:   l.getenv(prefix + "CA_FILE"),
		CertFile: l.getenv(prefix + "CERT_FILE"),
		KeyFile:  l.getenv(prefix + "KEY_FILE"),
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		l.fail(prefix+"CERT_FILE", "%sCERT_FILE and %sKEY_FILE go together: set both or neither", prefix, prefix)
		return f
	}
	_, errCA := f.loadCA()
	_, errCert := f.loadCert()
	for _, err := range []error{errCA, errCert} {
		var fe *fileError
		if errors.As(err, &fe) {
			l.fail(prefix+fe.which, "%v", err)
		}
	}
	return f
}

// redis reads the Redis settings. REDIS_URL wins for what it states;
// REDIS_PORT, REDIS_PASSWORD and REDIS_DB fill what it leaves out.
func (l *loader) redis() Redis {
	host := l.host("REDIS_HOST", defaultRedisHost)
	port := l.port("REDIS_PORT", defaultRedisPort)
	r := Redis{
		Username:         l.getenv("REDIS_USERNAME"),
		Password:         l.getenv("REDIS_PASSWORD"),
		DB:               l.integer("REDIS_DB", 0, 0, math.MaxInt, "a database number (an integer >= 0)"),
		TLS:              l.boolean("REDIS_TLS", false),
		TLSFiles:         l.tlsFiles("REDIS_TLS_"),
		ClusterAddrs:     l.addrs("REDIS_CLUSTER_ADDRS"),
		SentinelAddrs:    l.addrs("REDIS_SENTINEL_ADDRS"),
		SentinelMaster:   l.getenv("REDIS_SENTINEL_MASTER"),
		SentinelUsername: l.getenv("REDIS_SENTINEL_USERNAME"),
		SentinelPassword: l.getenv("REDIS_SENTINEL_PASSWORD"),
	}
	if !r.TLSFiles.IsZero() {
		r.TLS = true
	}
	switch {
	case len(r.ClusterAddrs) > 0 && len(r.SentinelAddrs) > 0:
		l.fail("REDIS_CLUSTER_ADDRS", "set either REDIS_CLUSTER_ADDRS (Redis Cluster) or REDIS_SENTINEL_ADDRS (Sentinel), not both")
	case len(r.SentinelAddrs) > 0 && r.SentinelMaster == "":
		l.fail("REDIS_SENTINEL_MASTER", "is required with REDIS_SENTINEL_ADDRS: the name of the master the Sentinels monitor")
	case r.SentinelMaster != "" && len(r.SentinelAddrs) == 0 && !l.failed("REDIS_SENTINEL_ADDRS"):
		l.fail("REDIS_SENTINEL_ADDRS", "is required with REDIS_SENTINEL_MASTER")
	}

	const name = "REDIS_URL"
	raw := l.getenv(name)
	if raw == "" {
		r.Addr = net.JoinHostPort(host, strconv.Itoa(port))
		l.checkClusterDB(r)
		return r
	}
	u, ok := l.parseURL(name, raw, "redis://[user:password@]host[:port][/db] or rediss://...")
	if !ok {
		return Redis{}
	}
	switch u.Scheme {
	case "redis":
	case "rediss":
		r.TLS = true
	default:
		l.fail(name, "scheme %q is not redis or rediss", u.Scheme)
	}
	if p, err := strconv.Atoi(u.Port()); err == nil {
		port = p
	}
	r.Addr = net.JoinHostPort(u.Hostname(), strconv.Itoa(port))
	if u.User != nil && u.User.Username() != "" {
		r.Username = u.User.Username()
	}
	if u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			r.Password = p
		}
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			// The path is not echoed: a password with an unescaped '/'
			// could have spilled into it.
			l.fail(name, "the path is not /N with a database number N >= 0")
		} else {
			r.DB = n
		}
	}
	if u.RawQuery != "" {
		l.fail(name, "query parameters are not supported")
	}
	if r.Mode() != "single" {
		l.fail(name, "names one server; with REDIS_CLUSTER_ADDRS or REDIS_SENTINEL_ADDRS leave it unset and use REDIS_USERNAME, REDIS_PASSWORD, REDIS_DB and REDIS_TLS")
	}
	l.checkClusterDB(r)
	return r
}

// checkClusterDB refuses a database number on Redis Cluster, which has
// only database 0.
func (l *loader) checkClusterDB(r Redis) {
	if r.Mode() == "cluster" && r.DB != 0 {
		l.fail("REDIS_DB", "Redis Cluster has only database 0")
	}
}

// parseURL parses a URL that may hold a password and checks its host and
// port; it returns false only when there is no URL to look further into.
// Its errors never quote the URL or url.Parse's message, both of which can
// contain the password.
func (l *loader) parseURL(name, raw, want string) (*url.URL, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" || strings.ContainsFunc(raw, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		l.fail(name, "malformed URL, want %s (percent-encode reserved characters in the user name and password)", want)
		return nil, false
	}
	// With an unescaped '/', '?' or '#' in the password, url.Parse ends
	// the host early and the rest, '@' included, lands in the path.
	if (u.User == nil && strings.Contains(raw, "@")) || u.Fragment != "" {
		l.fail(name, "malformed URL: percent-encode reserved characters such as / ? # @ in the user name and password")
		return nil, false
	}
	if u.Hostname() == "" {
		l.fail(name, "the URL has no host")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > math.MaxUint16 {
			l.fail(name, "the URL's port is not 1-65535")
		}
	}
	return u, true
}
