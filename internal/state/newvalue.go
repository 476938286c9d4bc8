package state

import (
	"container/heap"
	"slices"
)

// A new-value group remembers, for each value it has seen, the newest time
// it saw it, and the time of its first event. Both stores apply an update
// the same way (newvalue.lua is the Redis version):
//
//  0. A group whose newest event is more than newValueLimit before the
//     update starts afresh, as expired keys would.
//  1. A redelivered event that raised an alert raises it again; any other
//     redelivery finds its value seen at its own time, which is not new.
//  2. The value is new when the group has never seen it, or last saw it
//     History or longer before the event. A value already seen after the
//     event (a later event arrived first) is not new: the later one was
//     judged with nothing before it, and History is far longer than any
//     event arrives late. The group's first event is the earliest event
//     time it has seen, this one included.
//  3. The event alerts when its value is new and the group's first event
//     is at least Learn before it.
//  4. The value's time becomes the newest of its times; values last seen
//     more than History plus five minutes before the group's newest event
//     are forgotten (a late event may still look back that far), and then
//     the least recently seen beyond MaxValues, the oldest time first,
//     ties by value. Evicted counts those.
//
// The cost per event is a few O(log n) operations on one sorted set of at
// most MaxValues members.

// valueGroup is the state of one new-value group.
type valueGroup struct {
	first, newest int64
	byValue       map[string]*valueSlot
	lru           valueHeap
	alerts        []sent
	seq           int
	idle          int64
}

type valueSlot struct {
	value string
	time  int64
	index int // in lru
}

// valueHeap orders values by (time, value): the least recently seen first.
type valueHeap []*valueSlot

func (h valueHeap) Len() int { return len(h) }
func (h valueHeap) Less(i, j int) bool {
	return h[i].time < h[j].time || (h[i].time == h[j].time && h[i].value < h[j].value)
}
func (h valueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *valueHeap) Push(x any) {
	s := x.(*valueSlot)
	s.index = len(*h)
	*h = append(*h, s)
}
func (h *valueHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return s
}

func (m *Memory) newValue(u Update) Result {
	g := m.values[u.Key]
	if g != nil && u.Time-g.newest > newValueLimit(u) {
		g = nil
	}
	if g == nil {
		g = &valueGroup{first: u.Time, newest: u.Time, byValue: make(map[string]*valueSlot)}
		m.values[u.Key] = g
	}
	g.idle = newValueLimit(u)
	for i := len(g.alerts) - 1; i >= 0; i-- {
		if g.alerts[i].emitter == u.EventID {
			return clone(g.alerts[i].result)
		}
	}
	g.first = min(g.first, u.Time)
	g.newest = max(g.newest, u.Time)
	slot := g.byValue[u.Value]
	isNew := slot == nil || (slot.time <= u.Time && u.Time-slot.time >= micros(u.History))
	if slot == nil {
		slot = &valueSlot{value: u.Value, time: u.Time}
		g.byValue[u.Value] = slot
		heap.Push(&g.lru, slot)
	} else if u.Time > slot.time {
		slot.time = u.Time
		heap.Fix(&g.lru, slot.index)
	}
	evicted := 0
	floor := g.newest - micros(u.History) - micros(minLateness)
	for len(g.lru) > 0 && (g.lru[0].time < floor || len(g.lru) > u.MaxValues) {
		s := heap.Pop(&g.lru).(*valueSlot)
		delete(g.byValue, s.value)
		if s.time >= floor {
			evicted++
		}
	}
	res := Result{Outcome: Below, Known: len(g.lru), Evicted: evicted}
	if !isNew || u.Time-g.first < micros(u.Learn) {
		return res
	}
	res.Outcome = Fired
	res.Bursts = []Burst{{Start: u.Time, End: u.Time, Count: 1, FirstEventID: u.EventID, LastEventID: u.EventID, EventIDs: []string{u.EventID}}}
	g.seq++
	g.alerts = append(g.alerts, sent{seq: g.seq, emitter: u.EventID, result: res})
	if over := len(g.alerts) - maxAlerts; over > 0 {
		g.alerts = slices.Delete(g.alerts, 0, over)
	}
	return clone(res)
}
