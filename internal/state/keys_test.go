package state

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// TestScriptsTouchOnlyTheKeysTheyDeclare runs the behavioural suite and
// random sequences against a private Redis watched with MONITOR, which
// shows every command a script runs, and requires every key a script
// command names to be one of the KEYS of its call. On a Redis Cluster a
// key outside KEYS may live on another node, and the script fails there.
func TestScriptsTouchOnlyTheKeysTheyDeclare(t *testing.T) {
	t.Parallel()
	rs := testenv.StartRedis(t)
	mon := startMonitor(t, rs)
	// MONITOR slows Redis down: the suite's batches of 4,096 updates need
	// more than the usual read timeout.
	c := redis.NewClient(&redis.Options{Addr: rs.Addr(), ReadTimeout: time.Minute, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	const prefix = "keys_"
	newStore := func(t *testing.T) *Redis { return NewRedis(c, testenv.Name(t, prefix)+":") }
	t.Run("suite", func(t *testing.T) {
		t.Run("behaviour", func(t *testing.T) {
			testStore(t, func(t *testing.T) store { return newStore(t) })
		})
		t.Run("random", func(t *testing.T) {
			t.Parallel()
			agreeWithMemory(t, newStore(t), 30)
		})
	})
	calls, err := mon.check(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if calls < 1000 {
		t.Errorf("MONITOR showed only %d script calls: it missed most of the suite", calls)
	}
	t.Logf("%d script calls checked", calls)
}

// monitor collects what `redis-cli monitor` prints.
type monitor struct {
	t     *testing.T
	rs    *testenv.RedisServer
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func startMonitor(t *testing.T, rs *testenv.RedisServer) *monitor {
	t.Helper()
	_, port, _ := strings.Cut(rs.Addr(), ":")
	m := &monitor{t: t, rs: rs, cmd: exec.Command("redis-cli", "-p", port, "monitor"), done: make(chan struct{})}
	out, err := m.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.cmd.Process.Kill(); _ = m.cmd.Wait() })
	go func() {
		defer close(m.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			m.mu.Lock()
			m.lines = append(m.lines, sc.Text())
			m.mu.Unlock()
		}
	}()
	// MONITOR is on once it shows a command sent after it started.
	m.waitFor(t, "monitor-started")
	return m
}

// waitFor sends ECHO token until MONITOR shows it.
func (m *monitor) waitFor(t *testing.T, token string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: m.rs.Addr()})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_ = c.Echo(context.Background(), token).Err()
		time.Sleep(50 * time.Millisecond)
		m.mu.Lock()
		seen := len(m.lines) > 0 && strings.Contains(strings.Join(m.lines, "\n"), `"`+token+`"`)
		m.mu.Unlock()
		if seen {
			return
		}
	}
	t.Fatalf("MONITOR did not show %q", token)
}

// check stops MONITOR once it has shown everything so far and returns how
// many EVALSHA calls it saw, or the first key outside a call's KEYS.
func (m *monitor) check(prefix string) (int, error) {
	m.waitFor(m.t, "monitor-done")
	_ = m.cmd.Process.Kill()
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	calls := 0
	var keys map[string]bool
	for _, line := range m.lines {
		src, args, err := parseMonitorLine(line)
		if err != nil {
			return calls, fmt.Errorf("%w: %s", err, line)
		}
		if len(args) == 0 {
			continue
		}
		if src != "lua" {
			keys = nil
			if strings.EqualFold(args[0], "evalsha") && len(args) >= 3 {
				n, err := strconv.Atoi(args[2])
				if err != nil || 3+n > len(args) {
					return calls, fmt.Errorf("bad EVALSHA: %s", line)
				}
				calls++
				keys = map[string]bool{}
				for _, k := range args[3 : 3+n] {
					keys[k] = true
				}
			}
			continue
		}
		if keys == nil {
			return calls, fmt.Errorf("a script command without its EVALSHA: %s", line)
		}
		for _, a := range args[1:] {
			if strings.HasPrefix(a, prefix) && !keys[a] {
				return calls, fmt.Errorf("script command names key %q outside its KEYS: %s", a, line)
			}
		}
	}
	return calls, nil
}

// parseMonitorLine splits `1700000000.000000 [0 127.0.0.1:5000] "SET" "k"`
// into its source ("lua" or the client's address) and its arguments.
func parseMonitorLine(line string) (string, []string, error) {
	open := strings.Index(line, "[")
	end := strings.Index(line, "] ")
	if open < 0 || end < open {
		return "", nil, nil // "OK" and other lines that are not commands
	}
	_, src, _ := strings.Cut(line[open+1:end], " ")
	rest := line[end+2:]
	var args []string
	for len(rest) > 0 {
		if rest[0] == ' ' {
			rest = rest[1:]
			continue
		}
		if rest[0] != '"' {
			return "", nil, fmt.Errorf("unquoted argument")
		}
		var sb strings.Builder
		i := 1
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] != '\\' || i+1 >= len(rest) {
				sb.WriteByte(rest[i])
				continue
			}
			i++
			switch rest[i] {
			case 'n':
				sb.WriteByte('\n')
			case 'r':
				sb.WriteByte('\r')
			case 't':
				sb.WriteByte('\t')
			case 'a':
				sb.WriteByte('\a')
			case 'b':
				sb.WriteByte('\b')
			case 'x':
				if i+2 < len(rest) {
					b, err := strconv.ParseUint(rest[i+1:i+3], 16, 8)
					if err != nil {
						return "", nil, err
					}
					sb.WriteByte(byte(b))
					i += 2
				}
			default:
				sb.WriteByte(rest[i])
			}
		}
		if i >= len(rest) {
			return "", nil, fmt.Errorf("unterminated argument")
		}
		args = append(args, sb.String())
		rest = rest[i+1:]
	}
	return src, args, nil
}
