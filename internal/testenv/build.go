package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BuildService builds the service's binary (cmd/audit-log-analysis) as
// make build does (no cgo, -trimpath) into a directory of the test's own,
// and returns its path. The module is found from the working directory up.
func BuildService(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("find the module to build the service from: %v", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the service: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "audit-log-analysis")
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", bin, "./cmd/audit-log-analysis")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the service: %v\n%s", err, out)
	}
	return bin
}

// moduleRoot is the nearest directory from the working one up that holds
// a go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}
