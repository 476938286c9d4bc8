package state

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed correlate.lua
	correlateScript string
	//go:embed newvalue.lua
	newValueScript string
)

// Redis keeps rule state in Redis, shared by every replica of the service.
// A group's keys share one hash slot, prefix{key}:
//
//	threshold and sequence groups:
//	  :0 … :7  sorted sets, one per step: event id -> time (µs)
//	  :v       hash, event id -> value (distinct steps only)
//	  :l       sorted set, value -> newest time (distinct thresholds only)
//	  :b       sorted set, the triggers that alerted (once the group alerts)
//	  :a       hash, the alerts raised, to answer a redelivered event
//	new-value groups:
//	  :n       sorted set, value -> newest time seen
//	  :f       the time of the group's first event
//	  :a       as above
//
// Every update resets the lifetime of the group's keys: for a threshold or
// sequence group the window plus the lateness, and after an alert the
// larger of window and suppression plus the lateness and ten minutes; for
// a new-value group the larger of history and learning time plus five
// minutes. Beside them, Marker keeps prefix{m<n>}:marker keys, which never
// expire, to notice that Redis lost the state.
//
// The client may be a single server's, a Sentinel failover client or a
// Cluster client; scripts.go says how calls are made on each.
type Redis struct {
	client    redis.UniversalClient
	prefix    string
	correlate *redis.Script
	newValue  *redis.Script
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
	r := &Redis{
		client:    client,
		prefix:    prefix,
		correlate: redis.NewScript(correlateScript),
		newValue:  redis.NewScript(newValueScript),
	}
	r.scripts = []*redis.Script{r.correlate, r.newValue}
	return r
}

// Apply applies updates in order in one round trip (a pipeline of one
// script call per update) and returns one Result per update. The whole
// batch is validated first. A Redis error means some, all or none of the
// batch may have been applied; applying the same batch again is safe,
// because every update is idempotent by event id.
func (r *Redis) Apply(ctx context.Context, updates []Update) ([]Result, error) {
	if err := validate(updates); err != nil {
		return nil, err
	}
	if len(updates) == 0 {
		return []Result{}, nil
	}
	cmds, err := r.pipelined(ctx, len(updates), func(pipe redis.Pipeliner, i int) *redis.Cmd {
		return r.eval(ctx, pipe, &updates[i])
	})
	if err != nil {
		return nil, fmt.Errorf("apply %d state updates: %w", len(updates), err)
	}
	results := make([]Result, len(updates))
	for i, cmd := range cmds {
		if results[i], err = parseResult(cmd, updates[i]); err != nil {
			return nil, fmt.Errorf("apply state update %d (key %q): %w", i, updates[i].Key, err)
		}
	}
	return results, nil
}

// eval queues the script call for one update.
func (r *Redis) eval(ctx context.Context, pipe redis.Pipeliner, u *Update) *redis.Cmd {
	base := r.prefix + "{" + u.Key + "}"
	if u.Kind == NewValue {
		return r.evalSha(ctx, pipe, r.newValue, []string{base + ":n", base + ":f", base + ":a"},
			u.EventID, u.Time, u.Value, micros(u.History), micros(u.Learn), u.MaxValues,
			newValueLimit(*u), micros(minLateness), maxAlerts)
	}
	var rl shape
	newShape(u, &rl)
	k := rl.k()
	keys := make([]string, 0, k+4)
	for s := range k {
		keys = append(keys, base+":"+strconv.Itoa(s))
	}
	keys = append(keys, base+":v", base+":l", base+":b", base+":a")
	sequence := 0
	if u.Kind == Sequence {
		sequence = 1
	}
	args := make([]any, 0, 14+3*k)
	args = append(args, u.EventID, u.Time, sequence, k, rl.mask, rl.w, rl.s, retention(u.Window),
		idleLimit(*u, false), idleLimit(*u, true), maxEvents, maxBursts, maxAlerts, MaxEventIDs)
	for s := range k {
		st := rl.step(s)
		distinct := 0
		if st.Distinct {
			distinct = 1
		}
		args = append(args, st.Count, distinct, rl.value(s))
	}
	return r.evalSha(ctx, pipe, r.correlate, keys, args...)
}

// parseResult decodes a script's reply (see correlate.lua and
// newvalue.lua).
func parseResult(cmd *redis.Cmd, u Update) (Result, error) {
	reply, err := cmd.Slice()
	if err != nil {
		return Result{}, err
	}
	p := replyReader{reply: reply}
	outcome := Outcome(p.int())
	if u.Kind == NewValue {
		res := Result{Outcome: outcome, Known: p.int(), Evicted: p.int()}
		if outcome == Fired {
			res.Bursts = []Burst{{Start: u.Time, End: u.Time, Count: 1, FirstEventID: u.EventID, LastEventID: u.EventID, EventIDs: []string{u.EventID}}}
		}
		if p.err || p.i != len(reply) || (outcome != Below && outcome != Fired) {
			return Result{}, fmt.Errorf("unexpected new-value script reply %v", reply)
		}
		return res, nil
	}
	res := Result{Outcome: outcome}
	if outcome == Fired {
		res.Bursts = make([]Burst, p.int())
		for i := range res.Bursts {
			b := &res.Bursts[i]
			b.Start, b.End, b.Count = int64(p.int()), int64(p.int()), p.int()
			b.FirstEventID, b.LastEventID, b.Suppressed = p.str(), p.str(), p.int()
			if n := p.int(); n > 0 && n <= MaxSequenceEvents {
				b.EventIDs = make([]string, n)
				for j := range b.EventIDs {
					b.EventIDs[j] = p.str()
				}
			}
			if n := p.int(); n > 0 && n <= MaxSteps {
				b.Steps = make([]StepReport, n)
				for j := range b.Steps {
					b.Steps[j] = StepReport{Count: p.int(), First: int64(p.int()), Last: int64(p.int())}
				}
			}
		}
	}
	if p.err || p.i != len(reply) || outcome < Below || outcome > Duplicate || (outcome == Fired && len(res.Bursts) == 0) {
		return Result{}, fmt.Errorf("unexpected state script reply %v", reply)
	}
	return res, nil
}

// replyReader reads a script's flat reply; err records any element of the
// wrong type or a reply too short.
type replyReader struct {
	reply []any
	i     int
	err   bool
}

func (p *replyReader) next() any {
	if p.i >= len(p.reply) {
		p.err = true
		return nil
	}
	v := p.reply[p.i]
	p.i++
	return v
}

func (p *replyReader) int() int {
	v, ok := p.next().(int64)
	p.err = p.err || !ok
	return int(v)
}

func (p *replyReader) str() string {
	v, ok := p.next().(string)
	p.err = p.err || !ok
	return v
}
