package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// procUsage is what /proc says about one process at one moment.
type procUsage struct {
	// CPU is user plus system time of all its threads.
	CPU time.Duration
	// PeakRSS is VmHWM: the most resident memory it ever had.
	PeakRSS int64
}

// readProcUsage reads /proc/PID/stat and /proc/PID/status.
func readProcUsage(pid int) (procUsage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procUsage{}, err
	}
	ticks, err := parseStatCPU(stat)
	if err != nil {
		return procUsage{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procUsage{}, err
	}
	hwm, err := parseStatusKB(status, "VmHWM")
	if err != nil {
		return procUsage{}, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return procUsage{CPU: ticksToDuration(ticks, clockTicks()), PeakRSS: hwm}, nil
}

// parseStatCPU returns utime+stime, in clock ticks, of a /proc/PID/stat
// line. The command name in parentheses may hold spaces and parentheses,
// so fields are counted from the last ')'.
func parseStatCPU(b []byte) (int64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no ')' after the command name")
	}
	// After ')': state (field 3), ppid (4), … utime (14), stime (15).
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	var sum int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("utime/stime %q is not a tick count", s)
		}
		sum += n
	}
	return sum, nil
}

// parseStatusKB returns, in bytes, a "Name:   123 kB" line of
// /proc/PID/status or /proc/meminfo.
func parseStatusKB(b []byte, name string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != name {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s: %q is not a size in kB", name, strings.TrimSpace(v))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%s: %q is not a size in kB", name, f[0])
		}
		return n << 10, nil
	}
	return 0, fmt.Errorf("no %s line", name)
}

func ticksToDuration(ticks, perSecond int64) time.Duration {
	return time.Duration(ticks) * time.Second / time.Duration(perSecond)
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat times:
// AT_CLKTCK of the auxiliary vector, 100 when it cannot be read.
func clockTicks() int64 {
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		return 100
	}
	if hz := auxvValue(b, 17); hz > 0 { // AT_CLKTCK
		return hz
	}
	return 100
}

// auxvValue finds a key in a native-endian auxiliary vector of 64-bit
// pairs (0 when absent or on a 32-bit system).
func auxvValue(b []byte, key uint64) int64 {
	if strconv.IntSize != 64 {
		return 0
	}
	for ; len(b) >= 16; b = b[16:] {
		k, v := binary.NativeEndian.Uint64(b), binary.NativeEndian.Uint64(b[8:])
		if k == key && v <= 1<<31 {
			return int64(v)
		}
		if k == 0 {
			break
		}
	}
	return 0
}

// machineInfo describes where the figures were measured.
type machineInfo struct {
	CPUs     int    `json:"cpus"`
	Model    string `json:"model"`
	MemTotal int64  `json:"mem_total_bytes"`
	Kernel   string `json:"kernel,omitempty"`
}

func readMachine() machineInfo {
	m := machineInfo{CPUs: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.Model = parseCPUModel(b)
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemTotal, _ = parseStatusKB(b, "MemTotal")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// parseCPUModel returns the first "model name" of /proc/cpuinfo.
func parseCPUModel(b []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// loadAverage is /proc/loadavg's 1, 5 and 15 minute figures.
type loadAverage [3]float64

func readLoadAverage() (loadAverage, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return loadAverage{}, err
	}
	return parseLoadAverage(b)
}

func parseLoadAverage(b []byte) (loadAverage, error) {
	var l loadAverage
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return l, fmt.Errorf("/proc/loadavg: %q", b)
	}
	for i := range l {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return l, fmt.Errorf("/proc/loadavg: %q: %w", f[i], err)
		}
		l[i] = v
	}
	return l, nil
}

func (l loadAverage) String() string {
	return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2])
}
