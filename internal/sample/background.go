package sample

import (
	"fmt"
	"slices"
	"time"
)

// Background traffic draws from these tables. No path here is sensitive to
// the built-in rules or to rules/examples.yaml, no user is a privileged or
// service account those rules watch, and no address is one the planted
// scenarios use (they come from the documentation ranges).
var (
	users = []string{
		"alice", "bob", "carol", "dave", "attacker_bob", "devops_admin",
		"app_user", "guest_user", "monitoring_agent", "erin",
	}
	hosts = []string{
		"prod-web-01", "prod-web-02", "prod-db-01", "prod-db-02",
		"dev-api-03", "test-worker-04", "prod-bastion-01",
	}
	files = []string{
		"/var/log/nginx/access.log", "/var/log/syslog", "/opt/app/config.json",
		"/var/www/html/index.php", "/etc/hosts", "/etc/nginx/nginx.conf",
		"/srv/data/report.csv", "/home/alice/notes.txt", "/tmp/build.log",
	}
	commands = []string{
		"/usr/bin/sudo apt update", "/bin/systemctl restart nginx",
		"/usr/bin/python3 /opt/app/worker.py", "/usr/bin/rsync -a /srv/data /backup",
		"/usr/bin/crontab -l",
	}
	ports         = []int{443, 5432, 6379}
	configChanges = []object{
		{{"resource", "nginx.service"}, {"setting", "worker_connections"}, {"old_value", "512"}, {"new_value", "1024"}},
		{{"resource", "mysql.service"}, {"setting", "max_connections"}, {"old_value", "151"}, {"new_value", "300"}},
		{{"resource", "app.service"}, {"setting", "log_level"}, {"old_value", "info"}, {"new_value", "debug"}},
	}
)

// background adds n background events at random intervals from the start
// and returns the time they span.
func (g *generator) background(n int) time.Duration {
	pos := g.start
	for i := range n {
		if i > 0 {
			gap := time.Duration(g.r.ExpFloat64() * float64(meanGap)).Truncate(time.Microsecond)
			pos = pos.Add(max(gap, time.Microsecond))
		}
		ts := pos
		if g.r.Float64() < lateFraction {
			ts = ts.Add(-g.between(time.Second, 5*time.Second))
			if ts.Before(g.start) {
				ts = g.start
			}
		}
		g.add(g.backgroundRecord(ts), pos, -1)
	}
	return pos.Sub(g.start)
}

// backgroundRecord draws one event of the generator's kinds.
func (g *generator) backgroundRecord(ts time.Time) record {
	host, user, ip := g.pick(hosts), g.pick(users), g.clientIP()
	n := g.r.IntN(100)
	switch {
	case n < 3 && g.mayFail(ts, user, host, ip):
		return g.newRecord(ts, host, "user_login", "WARNING", user, "FAILURE", object{
			{"reason", "Incorrect password"}, {"ip_address", ip}, {"protocol", g.pick([]string{"ssh", "console"})},
		})
	case n < 28:
		return g.newRecord(ts, host, "user_login", "INFO", user, "SUCCESS", object{
			{"ip_address", ip}, {"protocol", g.pick([]string{"ssh", "console"})},
		})
	case n < 40:
		return g.newRecord(ts, host, "user_logout", "INFO", user, "SUCCESS", object{
			{"ip_address", ip}, {"session_duration_seconds", 1 + g.r.IntN(7200)},
		})
	case n < 58:
		return g.newRecord(ts, host, "file_accessed", "INFO", user, "SUCCESS", object{
			{"resource", g.pick(files)}, {"access_mode", "read"},
		})
	case n < 68:
		return g.newRecord(ts, host, "file_modified", "CRITICAL", user, "MODIFIED", g.modification(g.pick(files)))
	case n < 71:
		return g.newRecord(ts, host, "file_deleted", "WARNING", user, "DELETED", object{
			{"resource", g.pick(files)},
		})
	case n < 85:
		return g.newRecord(ts, host, "process_started", "INFO", user, "STARTED", object{
			{"command", g.pick(commands)}, {"pid", 1000 + g.r.IntN(60000)}, {"tty", "/dev/pts/0"}, {"cwd", "/home/" + user},
		})
	case n < 90:
		return g.newRecord(ts, host, "config_changed", "INFO", user, "SUCCESS", configChanges[g.r.IntN(len(configChanges))])
	case n < 93:
		return g.newRecord(ts, host, "permission_changed", "WARNING", user, "SUCCESS", object{
			{"resource", g.pick(files)}, {"old_mode", "0644"}, {"new_mode", "0600"},
		})
	default:
		result := "ALLOWED"
		if g.r.IntN(10) == 0 {
			result = "BLOCKED"
		}
		return g.newRecord(ts, host, "network_connection", "INFO", user, result, object{
			{"ip_address", ip}, {"destination_ip", fmt.Sprintf("10.0.%d.%d", g.r.IntN(4), 1+g.r.IntN(254))},
			{"destination_port", ports[g.r.IntN(len(ports))]}, {"protocol", "tcp"},
		})
	}
}

// mayFail reports whether a background failed login fits: never for a
// planted pair, and far from the last one of the same pair or address.
// When it fits, it is recorded.
func (g *generator) mayFail(ts time.Time, user, host, ip string) bool {
	if slices.Contains(plantedPairs, [2]string{user, host}) {
		return false
	}
	pair, addr := user+"\x00"+host, "ip:"+ip
	for _, k := range []string{pair, addr} {
		if last, ok := g.lastFailure[k]; ok && ts.Sub(last).Abs() < failureSpacing {
			return false
		}
	}
	g.lastFailure[pair], g.lastFailure[addr] = ts, ts
	return true
}

// clientIP draws an address the way the generator does.
func (g *generator) clientIP() string { return fmt.Sprintf("192.168.1.%d", 100+g.r.IntN(101)) }

// modification is the generator's file_modified details.
func (g *generator) modification(path string) object {
	return object{
		{"resource", path},
		{"old_checksum", fmt.Sprintf("%08x", g.r.Uint32())},
		{"new_checksum", fmt.Sprintf("%08x", g.r.Uint32())},
		{"size_change_bytes", g.r.IntN(2001) - 1000},
	}
}
