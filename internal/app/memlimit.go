package app

import (
	"bufio"
	"io/fs"
	"log/slog"
	"math"
	"path"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// memoryLimitShare is the part of the container's memory limit given to
// the Go heap, leaving room for the stacks, the runtime and what the
// kernel counts besides.
const memoryLimitShare = 0.9

// limitMemory makes the Go runtime honour the container's memory limit:
// unless GOMEMLIMIT set a limit (the runtime read it at start), the soft
// limit becomes 90% of the cgroup's, so the collector works harder as the
// heap nears it instead of the kernel killing the process. root is the
// file system holding /proc and /sys (os.DirFS("/") outside tests).
func limitMemory(logger *slog.Logger, root fs.FS) {
	if current := debug.SetMemoryLimit(-1); current != math.MaxInt64 {
		logger.Info("memory limit from GOMEMLIMIT", "bytes", current)
		return
	}
	limit, file, ok := cgroupMemoryLimit(root)
	if !ok {
		logger.Info("no container memory limit found; the Go runtime sets none")
		return
	}
	soft := int64(float64(limit) * memoryLimitShare)
	debug.SetMemoryLimit(soft)
	logger.Info("memory limit set from the container's", "bytes", soft, "cgroup_limit_bytes", limit, "cgroup_file", file)
}

// cgroupMemoryLimit returns the memory limit of the cgroup this process
// runs in, the smallest along its path up to the root, under cgroup v2
// (memory.max) or v1 (memory.limit_in_bytes), with the file it came from.
func cgroupMemoryLimit(root fs.FS) (limit int64, file string, ok bool) {
	f, err := root.Open("proc/self/cgroup")
	if err != nil {
		return 0, "", false
	}
	defer f.Close()
	var v1, v2 string
	hasV2 := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2, hasV2 = parts[2], true
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			v1 = parts[2]
		}
	}
	if v1 != "" {
		if limit, file, ok := smallestLimit(root, "sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"); ok {
			return limit, file, true
		}
	}
	if hasV2 {
		return smallestLimit(root, "sys/fs/cgroup", v2, "memory.max")
	}
	return 0, "", false
}

// smallestLimit walks from the cgroup at dir/cgPath up to dir and returns
// the smallest limit found in name. Inside a container the cgroup path may
// name the host's hierarchy while the container sees its own cgroup at the
// mount's root, so missing directories are skipped.
func smallestLimit(root fs.FS, dir, cgPath, name string) (int64, string, bool) {
	var best int64
	var bestFile string
	p := path.Clean("/" + cgPath)
	for {
		file := path.Join(dir, p, name)
		if v, ok := readLimit(root, file); ok && (bestFile == "" || v < best) {
			best, bestFile = v, "/"+file
		}
		if p == "/" {
			break
		}
		p = path.Dir(p)
	}
	return best, bestFile, bestFile != ""
}

// readLimit reads a limit file: a number of bytes, or "max" (v2) or a
// value near MaxInt64 (v1) for no limit.
func readLimit(root fs.FS, file string) (int64, bool) {
	b, err := fs.ReadFile(root, file)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	// cgroup v1 reports "no limit" as MaxInt64 rounded down to a page.
	if err != nil || v <= 0 || v >= math.MaxInt64/2 {
		return 0, false
	}
	return v, true
}
