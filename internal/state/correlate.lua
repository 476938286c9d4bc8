-- Applies one Update to one threshold or sequence group, with the semantics
-- of package state (update.go; memory.go is the same algorithm in Go: keep
-- the two in step).
--
-- KEYS[1..k]  sorted sets, one per step: event id -> time (µs)
-- KEYS[k+1]   v: hash, event id -> value (a threshold's distinct value, or
--             a sequence's values per step, MessagePack)
-- KEYS[k+2]   l: sorted set, value -> newest time seen (distinct
--             thresholds: an upper bound on a window's distinct values)
-- KEYS[k+3]   b: sorted set, alerting trigger id -> time; exists once the
--             group alerted
-- KEYS[k+4]   a: hash, event id -> MessagePack {seq, reply} of the alerts
--             its update raised, for the newest max alerts of them; field
--             "" -> matches suppressed since the last alert, "\0" -> alerts
--             raised, "\0<seq>" -> the event id of alert seq (event ids
--             hold no NUL)
-- ARGV: event id, time, sequence (1/0), steps k, mask, window µs,
--       suppress µs, retention µs, idle µs, idle µs once alerted,
--       max events, max bursts, max alerts, max ids,
--       then per step: count, distinct (1/0), value
--
-- Reply: {outcome} or, when fired, {1, n, burst...}; a burst is {start,
-- end, count, first id, last id, suppressed, n ids, ids..., n steps,
-- (count, first, last)...}. Outcomes: 0 below, 1 fired, 2 suppressed,
-- 3 duplicate.
--
-- Times stay exact: scores are written from ARGV strings or formatted with
-- %.0f (Lua's default number formatting keeps only 14 digits), and cmsgpack
-- stores integral numbers as integers.
--
-- Writes are ordered so that a run stopped halfway is harmless: the event
-- (which makes a rerun a Duplicate) is written before the state derived
-- from it, so a partial run can lose an alert that a later event still
-- raises, but never records an alert that was not returned.

local id, ts = ARGV[1], ARGV[2]
local t = tonumber(ts)
local sequence = ARGV[3] == '1'
local k = tonumber(ARGV[4])
local mask = tonumber(ARGV[5])
local w = tonumber(ARGV[6])
local sup = tonumber(ARGV[7])
local keep = tonumber(ARGV[8])
local idle = tonumber(ARGV[9])
local idleAlerted = tonumber(ARGV[10])
local maxEvents = tonumber(ARGV[11])
local maxBursts = tonumber(ARGV[12])
local maxAlerts = tonumber(ARGV[13])
local maxIDs = tonumber(ARGV[14])
local counts, distinct, values = {}, {}, {}
local anyDistinct = false
for s = 1, k do
  counts[s] = tonumber(ARGV[12 + 3 * s])
  distinct[s] = ARGV[13 + 3 * s] == '1'
  values[s] = ARGV[14 + 3 * s]
  anyDistinct = anyDistinct or distinct[s]
end
local vk, lk, bk, ak = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
local L = KEYS[k]
local chunk = 256

local function bit(s)
  -- Whether the event matches step s (1-based): bit s-1 of the mask.
  return math.floor(mask / 2 ^ (s - 1)) % 2 == 1
end

local function score(x)
  return string.format('%.0f', x)
end

local function less(t1, id1, t2, id2)
  return t1 < t2 or (t1 == t2 and id1 < id2)
end

-- expire sets the lifetime of the group's keys; the alert keys exist only
-- once it alerted, the value keys only for distinct steps.
local function expire(ttl)
  local ms = math.ceil(ttl / 1000)
  local last = k
  if anyDistinct then
    last = k + 2
  end
  for q = 1, last do
    redis.call('PEXPIRE', KEYS[q], ms)
  end
  if ttl == idleAlerted then
    redis.call('PEXPIRE', bk, ms)
    redis.call('PEXPIRE', ak, ms)
  end
end

-- 0. A group quiet for longer than its keys live, in event time, starts
-- afresh, as expired keys would.
local newest = nil
for s = 1, k do
  local r = redis.call('ZRANGE', KEYS[s], -1, -1, 'WITHSCORES')
  if r[2] then
    local x = tonumber(r[2])
    if not newest or x > newest then
      newest = x
    end
  end
end
local nb = redis.call('ZCARD', bk)
local alerted = nb > 0
if newest then
  local limit = idle
  if alerted then
    limit = idleAlerted
  end
  if t - newest > limit then
    redis.call('DEL', unpack(KEYS))
    newest, alerted, nb = nil, false, 0
  end
end

-- 1. A redelivered event that raised alerts raises them again.
local first = 1
while not bit(first) do
  first = first + 1
end
if redis.call('ZSCORE', KEYS[first], id) then
  if alerted then
    expire(idleAlerted)
  else
    expire(idle)
  end
  local raw = redis.call('HGET', ak, id)
  if raw then
    return cmsgpack.unpack(raw)[2]
  end
  return {3}
end

-- 2. Too late to be placed among its events.
local floor = t - keep
if newest and newest > t then
  floor = newest - keep
end
if t < floor then
  return {0}
end
local oldestBurst = nil
if alerted then
  local got = redis.call('ZRANGE', bk, 0, 0, 'WITHSCORES')
  oldestBurst = {tonumber(got[2]), got[1]}
  if nb >= maxBursts and not less(oldestBurst[1], oldestBurst[2], t, id) then
    return {0}
  end
end

-- 3. Record the event, then forget what is older than the retention, and
-- the oldest of a step beyond the maximum.
if anyDistinct then
  if sequence then
    redis.call('HSET', vk, id, cmsgpack.pack(values))
  else
    redis.call('HSET', vk, id, values[1])
    redis.call('ZADD', lk, 'GT', ts, values[1])
  end
end
for s = 1, k do
  if bit(s) then
    redis.call('ZADD', KEYS[s], ts, id)
  end
end
if alerted then
  expire(idleAlerted)
else
  expire(idle)
end

local below = '(' .. score(floor)
local capped = false
local sizes = {}
for s = 1, k do
  local key = KEYS[s]
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if oldest[2] and tonumber(oldest[2]) < floor then
    if anyDistinct then
      local ids = redis.call('ZRANGEBYSCORE', key, '-inf', below)
      for i = 1, #ids, chunk do
        redis.call('HDEL', vk, unpack(ids, i, math.min(i + chunk - 1, #ids)))
      end
    end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', below)
  end
  local n = redis.call('ZCARD', key)
  sizes[s] = math.min(n, maxEvents)
  if n > maxEvents then
    capped = true
    local ids = redis.call('ZRANGE', key, 0, n - maxEvents - 1)
    redis.call('ZREMRANGEBYRANK', key, 0, n - maxEvents - 1)
    if anyDistinct then
      -- An event another step still holds keeps its values.
      for _, x in ipairs(ids) do
        local held = false
        for s2 = 1, k do
          if s2 ~= s and redis.call('ZSCORE', KEYS[s2], x) then
            held = true
          end
        end
        if not held then
          redis.call('HDEL', vk, x)
        end
      end
    end
  end
end
if anyDistinct and not sequence then
  redis.call('ZREMRANGEBYSCORE', lk, '-inf', below)
end
if alerted and oldestBurst[1] < floor then
  local n = redis.call('ZCOUNT', bk, '-inf', below)
  if n > 1 then
    redis.call('ZREMRANGEBYRANK', bk, 0, n - 2)
  end
end
if capped and not redis.call('ZSCORE', KEYS[first], id) then
  return {0} -- dropped at once, the oldest of a full step
end

-- 4. Recompute the alerting triggers from the event on.
local pages = {}
local nLast = sizes[k]

-- The bursts: the last before the event's time, then all at or after it.
-- Events mostly arrive in order, so the newest few usually hold them all.
local old = {} -- {time, id} in order, from the last before the event on
local b0 = 1 -- old[b0] is the first burst at or after the event
if alerted then
  local few = redis.call('ZREVRANGEBYSCORE', bk, '+inf', '-inf', 'WITHSCORES', 'LIMIT', 0, 4)
  local n = #few / 2
  if n < 4 or tonumber(few[2 * n]) < t then
    -- They hold every burst at or after the event's time and the newest
    -- before it.
    for j = #few - 1, 1, -2 do
      old[#old + 1] = {tonumber(few[j + 1]), few[j]}
    end
    while #old > 1 and old[2][1] < t do
      table.remove(old, 1)
    end
  else
    local prev = redis.call('ZREVRANGEBYSCORE', bk, '(' .. ts, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if prev[2] then
      old[1] = {tonumber(prev[2]), prev[1]}
    end
    local rest = redis.call('ZRANGEBYSCORE', bk, ts, '+inf', 'WITHSCORES')
    for j = 1, #rest, 2 do
      old[#old + 1] = {tonumber(rest[j + 1]), rest[j]}
    end
  end
end
b0 = 1
while b0 <= #old and less(old[b0][1], old[b0][2], t, id) do
  b0 = b0 + 1
end

local NONE = nil
local zn = NONE
if b0 > 1 then
  zn = old[b0 - 1][1] + sup
end
local zoned = zn ~= NONE and t < zn
local changedEnd = t + w
local i
if bit(k) then
  i = redis.call('ZRANK', L, id)
  pages[k] = {[i] = {t, id}}
end

-- The common case, fast: the event is the newest and no alert lies at or
-- after it, so nothing after it can change. In a suppression zone it is
-- suppressed; a threshold that does not reach its count is below.
if i == nLast - 1 and b0 > #old then
  if zoned then
    redis.call('HINCRBY', ak, '', 1)
    return {2}
  end
  if k == 1 and not distinct[1] and i - redis.call('ZCOUNT', L, '-inf', score(t - w)) + 1 < counts[1] then
    return {0}
  end
end

-- Reading events. at(s, i) is the event at 0-based rank i of step s:
-- {time, id}; pages are cached.
local function at(s, i)
  local p = pages[s]
  if not p then
    p = {}
    pages[s] = p
  end
  local e = p[i]
  if e then
    return e
  end
  local got = redis.call('ZRANGE', KEYS[s], i, i + 15, 'WITHSCORES')
  for j = 1, #got, 2 do
    p[i + (j - 1) / 2] = {tonumber(got[j + 1]), got[j]}
  end
  return p[i]
end


-- Number of events of step s with times before x.
local function before(s, x)
  return redis.call('ZCOUNT', KEYS[s], '-inf', '(' .. score(x))
end

-- Number of events of step s with times no later than x.
local function upto(s, x)
  return redis.call('ZCOUNT', KEYS[s], '-inf', score(x))
end

local valueCache = {}
-- value(s, ids) returns the step-s values of the events named.
local function valuesOf(s, ids)
  local out = {}
  local missing = {}
  for i, x in ipairs(ids) do
    local v = valueCache[x]
    if v then
      out[i] = v
    else
      missing[#missing + 1] = i
    end
  end
  if #missing > 0 then
    local names = {}
    for j, i in ipairs(missing) do
      names[j] = ids[i]
    end
    local got = redis.call('HMGET', vk, unpack(names))
    for j, i in ipairs(missing) do
      local v = got[j] or ''
      if sequence and v ~= '' then
        v = cmsgpack.unpack(v)
      end
      valueCache[ids[i]] = v
      out[i] = v
    end
  end
  for i, v in ipairs(out) do
    if sequence then
      if type(v) == 'table' then
        out[i] = v[s] or ''
      else
        out[i] = ''
      end
    end
  end
  return out
end

-- ranks(s, from, to) returns the events of step s at ranks from..to
-- (inclusive) as {time, id}, walking forward.
local function ranks(s, from, to)
  local out = {}
  if to < from then
    return out
  end
  local got = redis.call('ZRANGE', KEYS[s], from, to, 'WITHSCORES')
  for j = 1, #got, 2 do
    out[#out + 1] = {tonumber(got[j + 1]), got[j]}
  end
  return out
end

-- satisfy finds the earliest events of step s after time after that
-- satisfy it, all before time limit; it returns the time of the one that
-- completes it.
local function satisfy(s, after, limit)
  local a = upto(s, after)
  if not distinct[s] then
    local e = at(s, a + counts[s] - 1)
    if not e or e[1] >= limit then
      return nil
    end
    return e[1]
  end
  local seen, n = {}, 0
  local from = a
  while true do
    local page = ranks(s, from, from + chunk - 1)
    if #page == 0 then
      return nil
    end
    local ids = {}
    for j, e in ipairs(page) do
      ids[j] = e[2]
    end
    local vals = valuesOf(s, ids)
    for j, e in ipairs(page) do
      if e[1] >= limit then
        return nil
      end
      if not seen[vals[j]] then
        seen[vals[j]] = true
        n = n + 1
        if n == counts[s] then
          return e[1]
        end
      end
    end
    from = from + chunk
  end
end

-- distinctDown counts distinct values of step s from rank i down to rank
-- a, stopping at need.
local function distinctDown(s, i, a, need)
  local seen, n = {}, 0
  local hi = i
  while hi >= a and n < need do
    local lo = math.max(a, hi - chunk + 1)
    local page = ranks(s, lo, hi)
    local ids = {}
    for j, e in ipairs(page) do
      ids[j] = e[2]
    end
    local vals = valuesOf(s, ids)
    for j = #page, 1, -1 do
      if not seen[vals[j]] then
        seen[vals[j]] = true
        n = n + 1
        if n >= need then
          return n
        end
      end
    end
    hi = lo - 1
  end
  return n
end

-- completes reports whether the trigger at rank i of the last step
-- completes.
local function completes(i)
  local x = at(k, i)
  local after = x[1] - w
  for s = 1, k - 1 do
    after = satisfy(s, after, x[1])
    if not after then
      return false
    end
  end
  local a = upto(k, after)
  if a > i then
    return false
  end
  if not distinct[k] then
    return i - a + 1 >= counts[k]
  end
  if not sequence then
    -- Values newer than the window's start bound its distinct values.
    if redis.call('ZCOUNT', lk, '(' .. score(after), '+inf') < counts[k] then
      return false
    end
  end
  return distinctDown(k, i, a, counts[k]) >= counts[k]
end

local function lowerBound(s, pt, pid)
  -- The rank of the first event of step s at or after (pt, pid).
  local n = before(s, pt)
  local ties = redis.call('ZRANGEBYSCORE', KEYS[s], score(pt), score(pt))
  for _, x in ipairs(ties) do
    if x < pid then
      n = n + 1
    end
  end
  return n
end

if not i then
  i = lowerBound(k, t, id)
end
local j = b0
local fresh = {}

local function zoneIndex(z, from)
  -- The rank of the first event of the last step at or after time z,
  -- from rank from on.
  return math.max(from, before(k, z))
end

while i < nLast do
  local x = at(k, i)
  while j <= #old and less(old[j][1], old[j][2], x[1], x[2]) do
    j = j + 1
  end
  local zo = NONE
  if j > 1 then
    zo = old[j - 1][1] + sup
  end
  local same = zn == zo or ((zn == NONE or zn <= x[1]) and (zo == NONE or zo <= x[1]))
  if same and x[1] >= changedEnd then
    break
  end
  if zn ~= NONE and x[1] < zn then
    i = zoneIndex(zn, i + 1)
  elseif completes(i) then
    fresh[#fresh + 1] = x
    zn = x[1] + sup
    i = zoneIndex(zn, i + 1)
  else
    i = i + 1
  end
end
local stop = #old + 1 -- old[b0 .. stop-1] are replaced by fresh
if i < nLast then
  local x = at(k, i)
  stop = b0
  while stop <= #old and less(old[stop][1], old[stop][2], x[1], x[2]) do
    stop = stop + 1
  end
end

local d = #fresh - (stop - b0)
local added = {}
local moved = false
local o = b0
for _, x in ipairs(fresh) do
  while o < stop and less(old[o][1], old[o][2], x[1], x[2]) do
    o = o + 1
  end
  if not (o < stop and old[o][1] == x[1] and old[o][2] == x[2]) then
    if x[1] == t and x[2] == id then
      moved = true
    end
    added[#added + 1] = x
  end
end

-- Store the new bursts.
local changed = #fresh ~= stop - b0
for n = 1, #added do
  changed = true
end
if changed then
  for n = b0, stop - 1 do
    redis.call('ZREM', bk, old[n][2])
  end
  for _, x in ipairs(fresh) do
    redis.call('ZADD', bk, score(x[1]), x[2])
  end
  local total = redis.call('ZCARD', bk)
  if total > maxBursts then
    redis.call('ZREMRANGEBYRANK', bk, 0, total - maxBursts - 1)
  end
end


-- Whether the event lies in the window of an alerting trigger at or after
-- it: a late match of a window that already alerted.
local function covered()
  if not alerted and not changed then
    return false
  end
  local got = redis.call('ZRANGEBYSCORE', bk, ts, '+inf', 'WITHSCORES', 'LIMIT', 0, 64)
  for q = 1, #got, 2 do
    local bt = tonumber(got[q + 1])
    if not less(bt, got[q], t, id) then
      return t > bt - w
    end
  end
  return false
end

local last = bit(k)
if d <= 0 then
  if last and (moved or zoned or covered()) then
    redis.call('HINCRBY', ak, '', 1)
    return {2}
  end
  return {0}
end

-- 5. Report the new bursts.
local function report(x)
  local rank = redis.call('ZRANK', L, x[2])
  local after = x[1] - w
  if not sequence then
    local a = upto(1, after)
    local count = rank - a + 1
    local win = ranks(1, a, math.min(rank, a + maxIDs - 1))
    if distinct[1] then
      count = distinctDown(1, rank, a, math.huge)
    end
    local ids = {}
    for n, e in ipairs(win) do
      ids[n] = e[2]
    end
    return {win[1][1], x[1], count, win[1][2], x[2], 0, ids, {}}
  end
  local ids, steps = {}, {}
  for s = 1, k - 1 do
    local a = upto(s, after)
    local seen, n = {}, 0
    local st = {0, 0, 0}
    local from = a
    while n < counts[s] do
      local page = ranks(s, from, from + math.max(counts[s], 16) - 1)
      if #page == 0 then
        break
      end
      local vals = {}
      if distinct[s] then
        local names = {}
        for q, e in ipairs(page) do
          names[q] = e[2]
        end
        vals = valuesOf(s, names)
      end
      for q, e in ipairs(page) do
        if n < counts[s] and not (distinct[s] and seen[vals[q]]) then
          if distinct[s] then
            seen[vals[q]] = true
          end
          ids[#ids + 1] = e[2]
          if n == 0 then
            st[2] = e[1]
          end
          st[3] = e[1]
          n = n + 1
        end
      end
      from = from + #page
    end
    st[1] = n
    steps[s] = st
    after = st[3]
  end
  local a = upto(k, after)
  local picked, seen = {}, {}
  local hi = rank
  while hi >= a and #picked < counts[k] do
    local lo = math.max(a, hi - chunk + 1)
    local page = ranks(k, lo, hi)
    local vals = {}
    if distinct[k] then
      local names = {}
      for q, e in ipairs(page) do
        names[q] = e[2]
      end
      vals = valuesOf(k, names)
    end
    for q = #page, 1, -1 do
      local e = page[q]
      if #picked < counts[k] and not (distinct[k] and seen[vals[q]]) then
        if distinct[k] then
          seen[vals[q]] = true
        end
        picked[#picked + 1] = e
      end
    end
    hi = lo - 1
  end
  for q = #picked, 1, -1 do
    ids[#ids + 1] = picked[q][2]
  end
  steps[k] = {#picked, picked[#picked][1], x[1]}
  return {steps[1][2], x[1], #ids, ids[1], x[2], 0, ids, steps}
end

-- Report the newest triggers that did not alert before (a window that
-- only moved earlier is not news), then, if need be, the newest others.
local chosen = {}
if d >= #added then
  for n = 1, #added do
    chosen[n] = true
  end
else
  local alertedIDs = {}
  local all = redis.call('HGETALL', ak)
  for q = 1, #all, 2 do
    if string.byte(all[q]) ~= 0 and all[q] ~= '' then
      local r = cmsgpack.unpack(all[q + 1])[2]
      -- {1, n, burst...}: walk the bursts for their last event ids.
      local pos = 3
      for _ = 1, r[2] do
        alertedIDs[r[pos + 4]] = true
        local nids = r[pos + 6]
        pos = pos + 7 + nids
        local nsteps = r[pos]
        pos = pos + 1 + 3 * nsteps
      end
    end
  end
  local n = 0
  for _, pass in ipairs({false, true}) do
    for q = #added, 1, -1 do
      if n < d and not chosen[q] and (alertedIDs[added[q][2]] == true) == pass then
        chosen[q] = true
        n = n + 1
      end
    end
  end
end

local reply = {1, d}
local suppressedSince = tonumber(redis.call('HGET', ak, '') or '0')
local firstReported = true
for n = 1, #added do
  if chosen[n] then
    local b = report(added[n])
    if firstReported then
      b[6] = suppressedSince
      firstReported = false
    end
    for _, v in ipairs({b[1], b[2], b[3], b[4], b[5], b[6], #b[7]}) do
      reply[#reply + 1] = v
    end
    for _, v in ipairs(b[7]) do
      reply[#reply + 1] = v
    end
    reply[#reply + 1] = #b[8]
    for _, st in ipairs(b[8]) do
      reply[#reply + 1] = st[1]
      reply[#reply + 1] = st[2]
      reply[#reply + 1] = st[3]
    end
  end
end

-- Remember the alert for a redelivery, the newest maxAlerts of them.
local seq = redis.call('HINCRBY', ak, '\0', 1)
redis.call('HSET', ak, '', 0, id, cmsgpack.pack({seq, reply}), '\0' .. seq, id)
if seq > maxAlerts then
  local gone = '\0' .. (seq - maxAlerts)
  local oldest = redis.call('HGET', ak, gone)
  if oldest then
    redis.call('HDEL', ak, oldest, gone)
  end
end
expire(idleAlerted)
return reply
