package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/rules"
)

// reloadPoll is how often the rules file is checked for changes. Polling
// the content hash, rather than watching inodes, also follows the symlink
// swaps Kubernetes uses to update a mounted ConfigMap.
const reloadPoll = 2 * time.Second

// reloader reloads the rules file on SIGHUP or when its content changes. A
// file that fails validation is logged and counted; the running rules stay.
type reloader struct {
	engine  *rules.Engine
	cfg     config.Config
	metrics *metrics
	logger  *slog.Logger
	hash    string
}

func (r *reloader) run(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var tick <-chan time.Time
	if r.cfg.RulesFile != "" {
		t := time.NewTicker(reloadPoll)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reload("SIGHUP", true)
		case <-tick:
			data, err := os.ReadFile(r.cfg.RulesFile)
			if err != nil {
				continue // reported on the next real reload attempt
			}
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != r.hash {
				r.reload("file changed", false)
			}
		}
	}
}

// reload loads the rules again. force reloads even an unchanged file.
func (r *reloader) reload(trigger string, force bool) {
	set, err := loadRules(r.cfg, r.cfg.RulesFile, r.logger)
	if err != nil {
		r.metrics.rulesReload.WithLabelValues("failure").Inc()
		r.logger.Error("rules reload failed; the running rules stay", "trigger", trigger, "error", err)
		if sum, ok := fileHash(r.cfg.RulesFile); ok {
			// Do not retry the same broken content every poll.
			r.hash = sum
		}
		return
	}
	if !force && set.Hash == r.hash {
		return
	}
	r.metrics.rulesReload.WithLabelValues("success").Inc()
	r.publish(set)
	r.logger.Info("rules reloaded", "trigger", trigger, "source", set.Source, "sha256", set.Hash, "rules_enabled", set.Enabled())
}

// publish makes set the running rules and exposes it.
func (r *reloader) publish(set *rules.Set) {
	r.engine.SetRules(set)
	r.hash = set.Hash
	r.metrics.rulesLoaded.Set(float64(set.Enabled()))
	r.metrics.rulesInfo.Reset()
	r.metrics.rulesInfo.WithLabelValues(set.Source, set.Hash).Set(1)
}

func fileHash(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return "", false
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), true
}
