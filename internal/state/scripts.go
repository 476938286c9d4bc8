package state

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// The store runs its Lua scripts as a pipeline of EVALSHA, one per update,
// each with every key it touches passed in KEYS and all of them in one hash
// slot (one {hash tag}). That works the same on one server, on the master a
// Sentinel names and on a Redis Cluster, where go-redis sends each command
// to the master of its slot and follows MOVED and ASK redirects.
//
// Some answers need more than the library does on its own, for every
// script alike:
//   - NOSCRIPT: a node's script cache is empty after a restart, a failover
//     or SCRIPT FLUSH, and in a Cluster a master may be the only one without
//     the script. Every script is loaded on every master, then the commands
//     that failed run again.
//   - TRYAGAIN: while a slot migrates, Redis refuses a command with several
//     keys unless all of them are on the node that gets it, and a group
//     rarely has all its keys. CLUSTERDOWN, LOADING and MASTERDOWN refuse
//     commands while a master fails over or starts. The refused commands
//     run again after a pause; if Redis still refuses them after that, the
//     batch fails and the caller retries it later.
//
// Only refused commands run again, so a script that ran keeps its answer (a
// repeat would answer Duplicate, or the same alert for an update that
// fired). The updates of one group are refused together, as they find the
// same keys on the same node, so they keep their order.
//
// In a Cluster, every script call is marked as not to be retried by go-redis
// itself (noRetry): when the first command of a node's batch is refused
// with an error it retries, go-redis v9.23 sends the node's whole batch
// again, including commands it is already sending to another node after an
// ASK redirect, and two goroutines then write one command's result at once
// (found by the race detector in TestRedisClusterFollowsASlotMigration).
// Redirects are still followed: that is not a retry.
const (
	scriptAttempts = 3
	refusedPause   = 100 * time.Millisecond
)

// refused reports whether Redis refused a command before running it, for a
// reason that passes.
func refused(err error) bool {
	for _, prefix := range []string{"TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN"} {
		if redis.HasErrorPrefix(err, prefix) {
			return true
		}
	}
	return false
}

// evalSha queues a call of script s on pipe.
func (r *Redis) evalSha(ctx context.Context, pipe redis.Pipeliner, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	all := make([]any, 0, 3+len(keys)+len(args))
	all = append(all, "evalsha", s.Hash(), len(keys))
	for _, k := range keys {
		all = append(all, k)
	}
	all = append(all, args...)
	cmd := redis.NewCmd(ctx, all...)
	if _, ok := r.client.(*redis.ClusterClient); ok {
		_ = pipe.Process(ctx, noRetry{cmd})
	} else {
		_ = pipe.Process(ctx, cmd)
	}
	return cmd
}

// noRetry is a command go-redis must not send again on its own.
type noRetry struct{ *redis.Cmd }

func (noRetry) NoRetry() bool { return true }

// pipelined queues n script calls with queue(pipe, i), which must use
// evalSha, and runs them in one round trip, handling the answers above. It returns the
// commands, in the order queued, or the first error left.
func (r *Redis) pipelined(ctx context.Context, n int, queue func(pipe redis.Pipeliner, i int) *redis.Cmd) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, n)
	todo := make([]int, n)
	for i := range todo {
		todo[i] = i
	}
	for attempt := 1; ; attempt++ {
		pipe := r.client.Pipeline()
		for _, i := range todo {
			cmds[i] = queue(pipe, i)
		}
		if _, err := pipe.Exec(ctx); err == nil {
			return cmds, nil
		}
		var again []int
		noScript := false
		for _, i := range todo {
			switch err := cmds[i].Err(); {
			case redis.HasErrorPrefix(err, "NOSCRIPT"):
				again, noScript = append(again, i), true
			case refused(err):
				again = append(again, i)
			}
		}
		if len(again) == 0 || attempt == scriptAttempts {
			break
		}
		if noScript {
			if err := r.loadScripts(ctx); err != nil {
				return nil, err
			}
		} else if err := sleep(ctx, refusedPause); err != nil {
			return nil, err
		}
		todo = again
	}
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return nil, err
		}
	}
	return cmds, nil
}

// loadScripts loads every script of the store on every master: the one
// server, the master a Sentinel names, or each master of a Cluster.
func (r *Redis) loadScripts(ctx context.Context) error {
	load := func(ctx context.Context, c redis.Scripter) error {
		for _, s := range r.scripts {
			if err := s.Load(ctx, c).Err(); err != nil {
				return fmt.Errorf("load state script %s: %w", s.Hash(), err)
			}
		}
		return nil
	}
	if cc, ok := r.client.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			if err := load(ctx, c); err != nil {
				return fmt.Errorf("on %s: %w", c.Options().Addr, err)
			}
			return nil
		})
	}
	return load(ctx, r.client)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
