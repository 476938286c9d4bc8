package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitBin is where Debian installs the RabbitMQ scripts that run as the
// calling user; the /usr/sbin wrappers switch to the rabbitmq user and the
// shared node's cookie.
const rabbitBin = "/usr/lib/rabbitmq/bin"

// How long a private node gets to boot, and a control command to answer.
// Both are generous: several Erlang VMs booting at once on two busy cores
// take tens of seconds.
const (
	rabbitBootTimeout = 3 * time.Minute
	rabbitCtlTimeout  = 90 * time.Second
)

// RabbitMQOptions shape a private RabbitMQ node.
type RabbitMQOptions struct {
	// TLS adds an amqps listener with PKI's server certificate.
	TLS *PKI
	// VerifyPeer makes the TLS listener require a client certificate
	// signed by PKI's CA (verify_peer with fail_if_no_peer_cert).
	VerifyPeer bool
	// Plugins are enabled on the node (its own enabled-plugins file), such
	// as rabbitmq_consistent_hash_exchange; none by default.
	Plugins []string
}

// RabbitMQ is a rabbitmq-server node of the test's own: its own node
// name, Erlang cookie, ports, data and log directories, for tests that stop
// it, block it or cut its connections. The shared node is never touched.
// Its methods report failures to the test that started it; a subtest uses
// In(t) instead.
type RabbitMQ struct {
	t testing.TB
	*rabbitNode
}

// rabbitNode is the node itself, shared by every RabbitMQ value that In
// returns.
type rabbitNode struct {
	// Name is the node name, NAME@localhost.
	Name string
	// Port is the AMQP port, TLSPort the amqps port (0 without TLS).
	Port, TLSPort int
	distPort      int
	home, dir     string
	config        string

	mu  sync.Mutex
	cmd *exec.Cmd
	// exited is closed when the server process ends.
	exited chan struct{}
}

// In returns the same node with failures reported to t: a subtest must
// not fail the test that started the node.
func (n *RabbitMQ) In(t testing.TB) *RabbitMQ { return &RabbitMQ{t: t, rabbitNode: n.rabbitNode} }

// StartRabbitMQ starts a private node and waits until it accepts AMQP
// connections. It is stopped, and its directories removed, when the test
// ends. It skips the test when rabbitmq-server is not installed, or fails
// it where services are required.
func StartRabbitMQ(t testing.TB, opts RabbitMQOptions) *RabbitMQ {
	t.Helper()
	n := LaunchRabbitMQ(t, opts)
	n.WaitReady()
	return n
}

// LaunchRabbitMQ starts a private node without waiting for it: launch
// several, then WaitReady on each, and they boot side by side.
func LaunchRabbitMQ(t testing.TB, opts RabbitMQOptions) *RabbitMQ {
	t.Helper()
	needRabbitMQ(t)
	home := t.TempDir()
	writeCookie(t, home)
	n := newRabbitNode(t, home, "", opts)
	n.Start()
	return n
}

// newRabbitNode prepares a node's directories and configuration. A
// non-empty seed makes the node join seed's cluster when it first boots.
func newRabbitNode(t testing.TB, home, seed string, opts RabbitMQOptions) *RabbitMQ {
	t.Helper()
	n := &RabbitMQ{t: t, rabbitNode: &rabbitNode{
		Name:     "testenv-" + randomHex(t, 6) + "@localhost",
		Port:     FreePort(t),
		distPort: FreePort(t),
		home:     home,
		dir:      t.TempDir(),
	}}
	for _, d := range []string{"mnesia", "log"} {
		if err := os.Mkdir(filepath.Join(n.dir, d), 0o755); err != nil {
			t.Fatalf("rabbitmq: %v", err)
		}
	}
	conf := []string{
		"listeners.tcp.default = 127.0.0.1:" + strconv.Itoa(n.Port),
		"loopback_users = none",
	}
	if opts.TLS != nil {
		n.TLSPort = FreePort(t)
		conf = append(conf,
			"listeners.ssl.default = 127.0.0.1:"+strconv.Itoa(n.TLSPort),
			"ssl_options.cacertfile = "+opts.TLS.CAFile,
			"ssl_options.certfile = "+opts.TLS.ServerCert,
			"ssl_options.keyfile = "+opts.TLS.ServerKey,
		)
		if opts.VerifyPeer {
			conf = append(conf, "ssl_options.verify = verify_peer", "ssl_options.fail_if_no_peer_cert = true")
		} else {
			conf = append(conf, "ssl_options.verify = verify_none", "ssl_options.fail_if_no_peer_cert = false")
		}
	}
	if seed != "" {
		// A blank node joins seed's cluster as it boots, retrying for a
		// minute while seed itself is still booting.
		conf = append(conf,
			"cluster_formation.peer_discovery_backend = classic_config",
			"cluster_formation.classic_config.nodes.1 = "+seed,
			"cluster_formation.discovery_retry_limit = 120",
			"cluster_formation.discovery_retry_interval = 500",
		)
	}
	n.config = filepath.Join(n.dir, "rabbitmq.conf")
	files := map[string]string{
		n.config:                                strings.Join(conf, "\n") + "\n",
		filepath.Join(n.dir, "plugins"):         "[" + strings.Join(opts.Plugins, ",") + "].\n",
		filepath.Join(n.dir, "empty-env"):       "",
		filepath.Join(n.dir, "advanced.config"): "[].\n",
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatalf("rabbitmq: %v", err)
		}
	}
	// Registered after the directories, so it runs before they are removed.
	t.Cleanup(n.Kill)
	return n
}

// URL returns the node's amqp:// URL (guest/guest, vhost /).
func (n *rabbitNode) URL() string {
	return "amqp://guest:guest@127.0.0.1:" + strconv.Itoa(n.Port) + "/"
}

// TLSURL returns the node's amqps:// URL, with the host name the test
// certificate is made for.
func (n *rabbitNode) TLSURL() string {
	return "amqps://guest:guest@localhost:" + strconv.Itoa(n.TLSPort) + "/"
}

// Start starts the node (again, on the same ports and data) without
// waiting for it; WaitReady waits.
func (n *RabbitMQ) Start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return
	}
	out, err := os.OpenFile(filepath.Join(n.dir, "log", "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatalf("rabbitmq: %v", err)
	}
	defer out.Close()
	cmd := exec.Command(filepath.Join(rabbitBin, "rabbitmq-server"))
	cmd.Env = append(n.env(),
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(n.distPort),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(n.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(n.dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(n.dir, "pid"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(n.dir, "plugins"),
		"RABBITMQ_CONFIG_FILE="+n.config,
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(n.dir, "advanced.config"),
		// The script then execs the Erlang VM instead of running it as a
		// child, so the process started here is the node itself; without
		// a shell, since there is no input.
		"RABBITMQ_ALLOW_INPUT=true",
		"RABBITMQ_SERVER_START_ARGS=-noinput -noshell",
	)
	cmd.Stdout, cmd.Stderr = out, out
	// The Erlang VM gets a process group of its own, so that it and its
	// helper processes are killed together by the group's id, its pid; and
	// it dies with the test binary, even when that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start rabbitmq-server: %v", err)
	}
	n.cmd = cmd
	exited := make(chan struct{})
	n.exited = exited
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
}

// env is the environment of the node and of its control commands: the
// private HOME holds the cookie, the empty env file keeps the shared
// node's name out.
func (n *rabbitNode) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RABBITMQ_") && !strings.HasPrefix(kv, "ERL_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(env,
		"HOME="+n.home,
		"RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(n.dir, "empty-env"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
}

// WaitReady waits until the node accepts an AMQP connection, and fails
// the test with the end of the node's log when it does not boot.
func (n *RabbitMQ) WaitReady() {
	n.t.Helper()
	if err := n.waitReady(rabbitBootTimeout); err != nil {
		n.t.Fatalf("rabbitmq node %s: %v\n%s", n.Name, err, n.logTail())
	}
}

func (n *rabbitNode) waitReady(timeout time.Duration) error {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return errors.New("not started")
	}
	deadline := time.Now().Add(timeout)
	for {
		conn, err := amqp.DialConfig(n.URL(), amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("rabbitmq-server exited while booting")
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no AMQP connection after %s: %w", timeout, err)
		}
	}
}

// Kill stops the node at once (SIGKILL to its process group), as a crash
// or a power cut would; killing a stopped node does nothing.
func (n *rabbitNode) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	pgid := n.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-n.exited
	// Wait until its helper processes are gone too.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.cmd = nil
	_ = os.Remove(filepath.Join(n.dir, "pid"))
}

// Stop shuts the node down cleanly (rabbitmqctl shutdown), then makes sure
// its processes are gone.
func (n *RabbitMQ) Stop() {
	n.t.Helper()
	if _, err := n.Ctl("shutdown"); err != nil {
		n.t.Logf("rabbitmq node %s: shutdown: %v; killing it", n.Name, err)
	}
	n.Kill()
}

// Ctl runs rabbitmqctl against this node and returns its output. It may be
// called from any goroutine.
func (n *rabbitNode) Ctl(args ...string) (string, error) {
	return n.run("rabbitmqctl", args...)
}

// Queues runs rabbitmq-queues against this node and returns its output.
func (n *rabbitNode) Queues(args ...string) (string, error) {
	return n.run("rabbitmq-queues", args...)
}

func (n *rabbitNode) run(tool string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rabbitCtlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(rabbitBin, tool), append([]string{"-q", "-n", n.Name}, args...)...)
	cmd.Env = n.env()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// mustCtl runs rabbitmqctl and fails the test when it fails.
func (n *RabbitMQ) mustCtl(args ...string) string {
	n.t.Helper()
	out, err := n.Ctl(args...)
	if err != nil {
		n.t.Fatalf("rabbitmq node %s: %v", n.Name, err)
	}
	return out
}

// StopApp stops the RabbitMQ application and leaves the Erlang node
// running: every connection drops and new ones are refused.
func (n *RabbitMQ) StopApp() {
	n.t.Helper()
	n.mustCtl("stop_app")
}

// StartApp starts the application again and waits until it accepts AMQP
// connections.
func (n *RabbitMQ) StartApp() {
	n.t.Helper()
	n.mustCtl("start_app")
	n.WaitReady()
}

// CloseAllConnections closes every client connection on the node.
func (n *RabbitMQ) CloseAllConnections() {
	n.t.Helper()
	n.mustCtl("close_all_connections", "--global", "closed by test")
}

// SetMemoryAlarm raises the node's memory alarm by setting its high
// watermark below what it uses (publishers get connection.blocked), or
// clears it by setting the default watermark again.
func (n *RabbitMQ) SetMemoryAlarm(on bool) {
	n.t.Helper()
	watermark := "0.4"
	if on {
		watermark = "0.0001"
	}
	n.mustCtl("set_vm_memory_high_watermark", watermark)
}

// logTail returns the end of the node's logs, for failure messages.
func (n *rabbitNode) logTail() string {
	var b strings.Builder
	for _, name := range []string{"stdout.log", n.Name + ".log"} {
		data, err := os.ReadFile(filepath.Join(n.dir, "log", name))
		if err != nil {
			continue
		}
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		fmt.Fprintf(&b, "--- %s:\n%s\n", name, data)
	}
	return b.String()
}

// RabbitMQCluster is three (or more) private nodes joined in one cluster,
// sharing a private HOME and so one cookie, never the shared node's.
type RabbitMQCluster struct {
	t     testing.TB
	Nodes []*RabbitMQ
}

// StartRabbitMQCluster boots size private nodes side by side; every node
// but the first joins the first one's cluster as it boots. It waits until
// all of them run in one cluster. Everything is stopped and removed when
// the test ends.
func StartRabbitMQCluster(t testing.TB, size int) *RabbitMQCluster {
	t.Helper()
	c := LaunchRabbitMQCluster(t, size)
	c.WaitReady()
	return c
}

// LaunchRabbitMQCluster starts the nodes of a cluster without waiting for
// them; WaitReady waits.
func LaunchRabbitMQCluster(t testing.TB, size int) *RabbitMQCluster {
	t.Helper()
	needRabbitMQ(t)
	home := t.TempDir()
	writeCookie(t, home)
	c := &RabbitMQCluster{t: t}
	for i := range size {
		seed := ""
		if i > 0 {
			seed = c.Nodes[0].Name
		}
		n := newRabbitNode(t, home, seed, RabbitMQOptions{})
		n.Start()
		c.Nodes = append(c.Nodes, n)
	}
	return c
}

// WaitReady waits until every node accepts AMQP connections and all of
// them run in one cluster.
func (c *RabbitMQCluster) WaitReady() {
	c.t.Helper()
	for _, n := range c.Nodes {
		n.In(c.t).WaitReady()
	}
	deadline := time.Now().Add(rabbitBootTimeout)
	for {
		running, err := c.running()
		if err == nil && len(running) == len(c.Nodes) {
			// Nodes that joined as they booted can leave feature flags
			// off cluster-wide, quorum queues among them.
			if _, err := c.Nodes[0].Ctl("enable_feature_flag", "all"); err != nil {
				c.t.Fatalf("rabbitmq cluster: %v", err)
			}
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("rabbitmq cluster: running nodes %v (%v), want %d", running, err, len(c.Nodes))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// In returns the same cluster with failures reported to t.
func (c *RabbitMQCluster) In(t testing.TB) *RabbitMQCluster {
	in := &RabbitMQCluster{t: t}
	for _, n := range c.Nodes {
		in.Nodes = append(in.Nodes, n.In(t))
	}
	return in
}

// running lists the cluster's running nodes as the first live node sees
// them.
func (c *RabbitMQCluster) running() ([]string, error) {
	var lastErr error
	for _, n := range c.Nodes {
		out, err := n.Ctl("cluster_status", "--formatter", "json")
		if err != nil {
			lastErr = err
			continue
		}
		var status struct {
			Running []string `json:"running_nodes"`
		}
		if err := json.Unmarshal([]byte(out), &status); err != nil {
			return nil, fmt.Errorf("cluster_status: %w: %s", err, out)
		}
		return status.Running, nil
	}
	return nil, lastErr
}

// URLs returns every node's amqp:// URL, in node order.
func (c *RabbitMQCluster) URLs() []string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.URL()
	}
	return urls
}

// Node returns the node called name, or nil.
func (c *RabbitMQCluster) Node(name string) *RabbitMQ {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// QuorumMembers returns the leader and the members of quorum queue queue
// (vhost /), as the cluster reports them.
func (c *RabbitMQCluster) QuorumMembers(queue string) (leader *RabbitMQ, members []string, err error) {
	for _, n := range c.Nodes {
		out, err := n.Ctl("list_queues", "name", "type", "leader", "members", "--formatter", "json")
		if err != nil {
			continue
		}
		var queues []struct {
			Name    string   `json:"name"`
			Type    string   `json:"type"`
			Leader  string   `json:"leader"`
			Members []string `json:"members"`
		}
		if err := json.Unmarshal([]byte(out), &queues); err != nil {
			return nil, nil, fmt.Errorf("list_queues: %w: %s", err, out)
		}
		for _, q := range queues {
			if q.Name != queue {
				continue
			}
			if q.Type != "quorum" {
				return nil, nil, fmt.Errorf("queue %q is %s, not quorum", queue, q.Type)
			}
			if leader = c.Node(q.Leader); leader == nil {
				return nil, q.Members, fmt.Errorf("queue %q: leader %q is not a node of this cluster", queue, q.Leader)
			}
			return leader, q.Members, nil
		}
		return nil, nil, fmt.Errorf("queue %q not found", queue)
	}
	return nil, nil, errors.New("no node of the cluster answered list_queues")
}

// KillQuorumLeader kills the node that leads quorum queue queue and
// returns it (Start brings it back).
func (c *RabbitMQCluster) KillQuorumLeader(queue string) *RabbitMQ {
	c.t.Helper()
	leader, _, err := c.QuorumMembers(queue)
	if err != nil {
		c.t.Fatalf("rabbitmq cluster: %v", err)
	}
	leader.Kill()
	return leader
}

func needRabbitMQ(t testing.TB) {
	t.Helper()
	skipShort(t, "rabbitmq-server")
	if _, err := os.Stat(filepath.Join(rabbitBin, "rabbitmq-server")); err != nil {
		msg := "rabbitmq-server is not installed in " + rabbitBin + ": apt-get install rabbitmq-server"
		if Required() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// writeCookie gives a private HOME an Erlang cookie of its own.
func writeCookie(t testing.TB, home string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(home, ".erlang.cookie"), []byte(strings.ToUpper(randomHex(t, 10))), 0o400); err != nil {
		t.Fatalf("rabbitmq cookie: %v", err)
	}
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}
