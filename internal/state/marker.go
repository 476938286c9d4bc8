package state

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Marker notices that Redis lost the store's data: a restart without
// persistence, a failover to a replica that did not have it, FLUSHALL or
// FLUSHDB, or eviction. It keeps a marker key beside the state, written
// when first seen missing and never expiring, and reads it on every Check:
// a marker that was there and is gone means everything stored with it is
// gone too. In a Redis Cluster every master holds a marker of its own,
// since one master can lose its slots alone.
//
// A marker's value is the time it was written and a random token. Every
// replica of the service remembers the value it last saw, so the replica
// that finds a marker missing and writes it again, and the others that
// only find the new value, each report the loss once.
type Marker struct {
	client redis.UniversalClient
	prefix string
	now    func() time.Time

	mu    sync.Mutex
	known map[string]string // marker key -> value last seen
}

// Loss describes one marker found missing or rewritten.
type Loss struct {
	// Key is the marker key, which names the hash slot (and so, in a
	// Cluster, the master) whose data was lost.
	Key string
	// Since is when the lost marker was written: the state lost was kept
	// from then on.
	Since time.Time
	// ByOther is set when another replica of the service found the
	// marker missing first and wrote it again.
	ByOther bool
}

// NewMarker returns a Marker for the store under prefix (see NewRedis).
func NewMarker(client redis.UniversalClient, prefix string) *Marker {
	if strings.ContainsAny(prefix, "{}") {
		panic(fmt.Sprintf("state: Redis key prefix %q contains a brace", prefix))
	}
	return &Marker{client: client, prefix: prefix, now: time.Now, known: map[string]string{}}
}

// Check reads the markers and returns those lost since the previous Check.
// Markers it has not seen before (the first Check, or a master that took
// over slots) are written and are not a loss. On an error nothing is
// decided; the next Check starts from what was last seen.
func (m *Marker) Check(ctx context.Context) ([]Loss, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys, err := m.keys(ctx)
	if err != nil {
		return nil, err
	}
	pipe := m.client.Pipeline()
	gets := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		gets[i] = pipe.Get(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read state markers: %w", err)
	}
	var lost []Loss
	for i, k := range keys {
		val, err := gets[i].Result()
		prev, seen := m.known[k]
		switch {
		case err == nil && (!seen || val == prev):
			m.known[k] = val
		case err == nil:
			// Another replica found it missing and wrote it again.
			m.known[k] = val
			lost = append(lost, Loss{Key: k, Since: markerTime(prev), ByOther: true})
		case errors.Is(err, redis.Nil):
			if val, err = m.write(ctx, k); err != nil {
				return lost, err
			}
			m.known[k] = val
			if seen {
				lost = append(lost, Loss{Key: k, Since: markerTime(prev)})
			}
		default:
			return lost, fmt.Errorf("read state marker %s: %w", k, err)
		}
	}
	// Markers of slots that moved to another master are no longer read.
	for k := range m.known {
		if !slices.Contains(keys, k) {
			delete(m.known, k)
		}
	}
	return lost, nil
}

// write sets a missing marker unless another replica did so meanwhile, and
// returns the marker's value.
func (m *Marker) write(ctx context.Context, key string) (string, error) {
	var token [8]byte
	_, _ = rand.Read(token[:])
	val := strconv.FormatInt(m.now().UnixMilli(), 10) + ":" + hex.EncodeToString(token[:])
	ok, err := m.client.SetNX(ctx, key, val, 0).Result()
	if err != nil {
		return "", fmt.Errorf("write state marker %s: %w", key, err)
	}
	if ok {
		return val, nil
	}
	val, err = m.client.Get(ctx, key).Result()
	if err != nil {
		return "", fmt.Errorf("read state marker %s: %w", key, err)
	}
	return val, nil
}

// markerTime is when a marker value was written, or the zero time.
func markerTime(val string) time.Time {
	ms, _, _ := strings.Cut(val, ":")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

// keys returns the marker keys: one for a single server (or the master a
// Sentinel names), one per master in a Cluster.
func (m *Marker) keys(ctx context.Context) ([]string, error) {
	cc, ok := m.client.(*redis.ClusterClient)
	if !ok {
		return []string{m.markerKey(0)}, nil
	}
	// CLUSTER SLOTS answers on every Redis version; CLUSTER SHARDS, which
	// replaces it, needs Redis 7.
	//lint:ignore SA1019 see above
	slots, err := cc.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("read the cluster's slots: %w", err)
	}
	owned := map[string][]slotRange{} // master id -> its slots
	for _, s := range slots {
		if len(s.Nodes) == 0 {
			continue
		}
		id := s.Nodes[0].ID
		if id == "" {
			id = s.Nodes[0].Addr
		}
		owned[id] = append(owned[id], slotRange{s.Start, s.End})
	}
	keys := make([]string, 0, len(owned))
	for _, ranges := range owned {
		if n, ok := markerTag(ranges); ok {
			keys = append(keys, m.markerKey(n))
		}
	}
	slices.Sort(keys)
	return keys, nil
}

// markerKey is the marker with hash tag "m<n>". No state key has that tag:
// theirs are hexadecimal.
func (m *Marker) markerKey(n int) string {
	return m.prefix + "{m" + strconv.Itoa(n) + "}:marker"
}

type slotRange struct{ start, end int }

// markerTag returns the smallest n whose tag "m<n>" hashes into ranges, so
// a master keeps the same marker for as long as it keeps that slot. The
// first 2^20 tags cover every slot.
func markerTag(ranges []slotRange) (int, bool) {
	for n := range 1 << 20 {
		slot := keySlot("m" + strconv.Itoa(n))
		for _, r := range ranges {
			if r.start <= slot && slot <= r.end {
				return n, true
			}
		}
	}
	return 0, false
}

// keySlot is the Redis Cluster hash slot of a key without a hash tag (or of
// the tag itself): CRC16 (XMODEM) modulo 16384.
func keySlot(key string) int {
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}
