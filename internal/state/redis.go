package state

import (
	"context"
	_ "embed"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

//go:embed apply.lua
var applyScript string

// Redis keeps rule state in Redis, shared by every replica of the service.
// Each group lives in four keys sharing one hash slot:
//
//	prefix{key}:e  sorted set, event id -> time (µs)
//	prefix{key}:v  hash, event id -> value (distinct rules only)
//	prefix{key}:s  sorted set, suppressed event id -> time (µs)
//	prefix{key}:m  string, MessagePack of the alerted bursts and the
//	               number of events suppressed since the last one
//
// Every update resets the lifetime of all four to the retention plus the
// suppression span plus ten minutes. Beside them, Marker keeps
// prefix{m<n>}:marker keys, which never expire, to notice that Redis lost
// the state.
//
// The client may be a single server's, a Sentinel failover client or a
// Cluster client; scripts.go says how calls are made on each.
type Redis struct {
	client redis.UniversalClient
	prefix string
	apply  *redis.Script
	// scripts are all the scripts the store runs, loaded together on
	// every master when one answers NOSCRIPT (see scripts.go).
	scripts []*redis.Script
}

// NewRedis returns a store keeping its keys under prefix. The prefix must
// not contain braces: the group key alone has to choose the hash slot. The
// client should have ContextTimeoutEnabled set, so that the deadline of
// Apply's context bounds the round trip.
func NewRedis(client redis.UniversalClient, prefix string) *Redis {
	if strings.ContainsAny(prefix, "{}") {
		panic(fmt.Sprintf("state: Redis key prefix %q contains a brace", prefix))
	}
	r := &Redis{client: client, prefix: prefix, apply: redis.NewScript(applyScript)}
	r.scripts = []*redis.Script{r.apply}
	return r
}

// Apply applies updates in order in one round trip and returns one Result
// per update. The whole batch is validated first. A Redis error means some,
// all or none of the batch may have been applied; applying the same batch
// again is safe, because every update is idempotent by event id.
func (r *Redis) Apply(ctx context.Context, updates []Update) ([]Result, error) {
	if err := validate(updates); err != nil {
		return nil, err
	}
	if len(updates) == 0 {
		return []Result{}, nil
	}
	cmds, err := r.exec(ctx, updates)
	if err != nil {
		return nil, fmt.Errorf("apply %d state updates: %w", len(updates), err)
	}
	results := make([]Result, len(updates))
	for i, cmd := range cmds {
		if results[i], err = parseResult(cmd); err != nil {
			return nil, fmt.Errorf("apply state update %d (key %q): %w", i, updates[i].Key, err)
		}
	}
	return results, nil
}

func (r *Redis) exec(ctx context.Context, updates []Update) ([]*redis.Cmd, error) {
	return r.pipelined(ctx, len(updates), func(pipe redis.Pipeliner, i int) *redis.Cmd {
		u := updates[i]
		base := r.prefix + "{" + u.Key + "}"
		keys := []string{base + ":e", base + ":v", base + ":s", base + ":m"}
		distinct := 0
		if u.Distinct {
			distinct = 1
		}
		return r.evalSha(ctx, pipe, r.apply, keys,
			u.EventID, u.Time, u.Value, distinct, u.Count,
			micros(u.Window), micros(u.Suppress), retention(u.Window),
			keyTTL(u).Milliseconds(), maxEvents, maxBursts, MaxEventIDs, maxSuppressed)
	})
}

// parseResult decodes the script's reply (see apply.lua).
func parseResult(cmd *redis.Cmd) (Result, error) {
	reply, err := cmd.Slice()
	if err != nil {
		return Result{}, err
	}
	bad := func() (Result, error) {
		return Result{}, fmt.Errorf("unexpected state script reply %v", reply)
	}
	if len(reply) == 0 {
		return bad()
	}
	outcome, ok := reply[0].(int64)
	if !ok {
		return bad()
	}
	switch Outcome(outcome) {
	case Below, Suppressed, Duplicate:
		if len(reply) != 1 {
			return bad()
		}
		return Result{Outcome: Outcome(outcome)}, nil
	case Fired:
	default:
		return bad()
	}
	if len(reply) < 8 {
		return bad()
	}
	start, ok1 := reply[1].(int64)
	end, ok2 := reply[2].(int64)
	count, ok3 := reply[3].(int64)
	first, ok4 := reply[4].(string)
	trigger, ok5 := reply[5].(string)
	suppressed, ok6 := reply[6].(int64)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) {
		return bad()
	}
	b := Burst{
		Start:          start,
		End:            end,
		Count:          int(count),
		FirstEventID:   first,
		TriggerEventID: trigger,
		Suppressed:     int(suppressed),
	}
	b.EventIDs = make([]string, len(reply)-7)
	for i, v := range reply[7:] {
		if b.EventIDs[i], ok = v.(string); !ok {
			return bad()
		}
	}
	return Result{Outcome: Fired, Burst: b}, nil
}
