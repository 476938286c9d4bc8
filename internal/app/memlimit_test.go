package app

import (
	"testing"
	"testing/fstest"
)

func TestCgroupMemoryLimitIsTheSmallestAlongTheProcessPath(t *testing.T) {
	t.Parallel()
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	tests := []struct {
		name      string
		fs        fstest.MapFS
		want      int64
		wantFile  string
		wantFound bool
	}{
		{
			name: "cgroup v2 inside a container sees its own cgroup at the root",
			fs: fstest.MapFS{
				"proc/self/cgroup":         file("0::/\n"),
				"sys/fs/cgroup/memory.max": file("268435456\n"),
			},
			want: 256 << 20, wantFile: "/sys/fs/cgroup/memory.max", wantFound: true,
		},
		{
			name: "cgroup v2 takes a parent's lower limit",
			fs: fstest.MapFS{
				"proc/self/cgroup":                           file("0::/kubepods/pod1/ctr\n"),
				"sys/fs/cgroup/kubepods/pod1/ctr/memory.max": file("max\n"),
				"sys/fs/cgroup/kubepods/pod1/memory.max":     file("536870912\n"),
				"sys/fs/cgroup/kubepods/memory.max":          file("max\n"),
			},
			want: 512 << 20, wantFile: "/sys/fs/cgroup/kubepods/pod1/memory.max", wantFound: true,
		},
		{
			name: "cgroup v2 without a limit",
			fs: fstest.MapFS{
				"proc/self/cgroup":         file("0::/\n"),
				"sys/fs/cgroup/memory.max": file("max\n"),
			},
		},
		{
			name: "cgroup v1 with a limit",
			fs: fstest.MapFS{
				"proc/self/cgroup": file("12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"),
				"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": file("134217728\n"),
				"sys/fs/cgroup/memory/memory.limit_in_bytes":            file("9223372036854771712\n"),
			},
			want: 128 << 20, wantFile: "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", wantFound: true,
		},
		{
			name: "cgroup v1 without a limit reports MaxInt64 rounded to a page",
			fs: fstest.MapFS{
				"proc/self/cgroup":                           file("4:memory:/\n"),
				"sys/fs/cgroup/memory/memory.limit_in_bytes": file("9223372036854771712\n"),
			},
		},
		{
			name: "no cgroup information at all",
			fs:   fstest.MapFS{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, file, ok := cgroupMemoryLimit(tt.fs)
			if got != tt.want || file != tt.wantFile || ok != tt.wantFound {
				t.Errorf("cgroupMemoryLimit = %d, %q, %v; want %d, %q, %v", got, file, ok, tt.want, tt.wantFile, tt.wantFound)
			}
		})
	}
}
