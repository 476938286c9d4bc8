package state

// idSet is a set of event ids: open addressing with linear probing over one
// flat slice. Replay touches thousands of groups in turn, so its cost is
// cache misses; a lookup here costs one or two where a Go map costs several.
// Callers pass the id's hash, computed once per update.
type idSet struct {
	slots []idSlot // length is zero or a power of two
	n     int
}

type idSlot struct {
	hash uint64 // 0 marks an empty slot; hashes are never 0
	id   string
}

func (s *idSet) has(h uint64, id string) bool {
	if s.n == 0 {
		return false
	}
	mask := uint64(len(s.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch sl := &s.slots[i]; {
		case sl.hash == 0:
			return false
		case sl.hash == h && sl.id == id:
			return true
		}
	}
}

// add inserts an id that is not in the set.
func (s *idSet) add(h uint64, id string) {
	if (s.n+1)*4 > len(s.slots)*3 {
		s.grow()
	}
	s.put(idSlot{hash: h, id: id})
	s.n++
}

func (s *idSet) put(sl idSlot) {
	mask := uint64(len(s.slots) - 1)
	i := sl.hash & mask
	for s.slots[i].hash != 0 {
		i = (i + 1) & mask
	}
	s.slots[i] = sl
}

func (s *idSet) grow() {
	old := s.slots
	s.slots = make([]idSlot, max(8, 2*len(old)))
	for _, sl := range old {
		if sl.hash != 0 {
			s.put(sl)
		}
	}
}

// remove deletes id if present, shifting later entries of its probe chain
// back into the hole (no tombstones, so lookups stay short).
func (s *idSet) remove(h uint64, id string) {
	if s.n == 0 {
		return
	}
	mask := uint64(len(s.slots) - 1)
	i := h & mask
	for ; ; i = (i + 1) & mask {
		sl := &s.slots[i]
		if sl.hash == 0 {
			return
		}
		if sl.hash == h && sl.id == id {
			break
		}
	}
	for j := (i + 1) & mask; s.slots[j].hash != 0; j = (j + 1) & mask {
		// The entry at j may fill the hole at i unless its home slot
		// lies cyclically within (i, j].
		home := s.slots[j].hash & mask
		if (i < j && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			s.slots[i] = s.slots[j]
			i = j
		}
	}
	s.slots[i] = idSlot{}
	s.n--
}
