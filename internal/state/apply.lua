-- Applies one Update to one rule group, with the semantics of package state
-- (memory.go is the same algorithm in Go; keep the two in step).
--
-- KEYS[1] events:     sorted set, event id -> time (µs)
-- KEYS[2] values:     hash, event id -> value, for distinct rules only
-- KEYS[3] suppressed: sorted set, suppressed event id -> time (µs)
-- KEYS[4] meta:       cmsgpack {suppressed since last burst, bursts, count,
--                     suppress, wide}, a burst being {start, end, count,
--                     first id, trigger id, suppressed, ids}; count and
--                     suppress are the rule's last seen, wide is 1 once a
--                     burst was forgotten or they changed
-- ARGV: event id, time, value, distinct (1/0), count, window µs, suppress µs,
--       retention µs, key ttl ms, max events, max bursts, max ids,
--       max suppressed ids
--
-- Reply: {outcome} or, when fired, {1, start, end, count, first id,
-- trigger id, suppressed, ids...}. Outcomes: 0 below, 1 fired,
-- 2 suppressed, 3 duplicate.
--
-- Times stay exact: scores are written from ARGV strings or formatted with
-- %.0f (Lua's default number formatting keeps only 14 digits), and cmsgpack
-- stores integral numbers as integers.
--
-- Writes are ordered so that a run stopped halfway is harmless: the event id
-- (which makes a rerun a Duplicate) is written before the state derived from
-- it, so a partial run can lose an alert that a later event still raises,
-- but never records an alert that was not returned.

local ek, vk, sk, mk = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, ts, value = ARGV[1], ARGV[2], ARGV[3]
local t = tonumber(ts)
local distinct = ARGV[4] == '1'
local need = tonumber(ARGV[5])
local w = tonumber(ARGV[6])
local sup = tonumber(ARGV[7])
local keep = tonumber(ARGV[8])
local ttl = ARGV[9]
local maxEvents = tonumber(ARGV[10])
local maxBursts = tonumber(ARGV[11])
local maxIDs = tonumber(ARGV[12])
local maxSuppressed = tonumber(ARGV[13])

-- Lua's unpack is bounded by the C stack; commands take ids in chunks.
local chunk = 1000

local function score(x)
  return string.format('%.0f', x)
end

local function expire()
  for _, k in ipairs(KEYS) do
    redis.call('PEXPIRE', k, ttl)
  end
end

local function hdel(ids)
  for i = 1, #ids, chunk do
    redis.call('HDEL', vk, unpack(ids, i, math.min(i + chunk - 1, #ids)))
  end
end

-- 0. A group quiet for longer than its key lives, in event time, starts
-- afresh, as an expired key would.
local function newest(k)
  local r = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  return r[2] and tonumber(r[2])
end
local elast = newest(ek)
local last = elast
local slast = newest(sk)
if slast and (not last or slast > last) then
  last = slast
end
if last and t - last > tonumber(ttl) * 1000 then
  redis.call('DEL', ek, vk, sk, mk)
  elast = nil
end

local meta = {0, {}}
local raw = redis.call('GET', mk)
if raw then
  meta = cmsgpack.unpack(raw)
end
local bursts = meta[2]

local function save()
  redis.call('SET', mk, cmsgpack.pack(meta), 'PX', ttl)
end

-- A group whose rule changed its count or suppression (a reload) is wide:
-- see step 5.
local wide = meta[5] == 1
if meta[3] ~= need or meta[4] ~= sup then
  if meta[3] ~= nil then
    wide = true
  end
  meta[3], meta[4], meta[5] = need, sup, wide and 1 or 0
  save()
end

local function zoned(x)
  if sup <= 0 then
    return false
  end
  for _, b in ipairs(bursts) do
    if b[1] - sup < x and x < b[2] + sup then
      return true
    end
  end
  return false
end

local function fired(b)
  local r = {1, b[1], b[2], b[3], b[4], b[5], b[6]}
  for _, x in ipairs(b[7]) do
    r[#r + 1] = x
  end
  return r
end

-- 1. A known id changes nothing; a redelivered trigger gets its alert again.
if redis.call('ZSCORE', ek, id) or redis.call('ZSCORE', sk, id) then
  expire()
  for i = #bursts, 1, -1 do
    if bursts[i][5] == id then
      return fired(bursts[i])
    end
  end
  return {3}
end

-- 2. Suppression: close to an alerted burst.
if zoned(t) then
  redis.call('ZADD', sk, ts, id)
  local n = redis.call('ZCARD', sk)
  if n > maxSuppressed then
    redis.call('ZREMRANGEBYRANK', sk, 0, n - maxSuppressed - 1)
  end
  expire()
  meta[1] = meta[1] + 1
  save()
  return {2}
end

-- 3. Record the event.
if distinct then
  redis.call('HSET', vk, id, value)
end
redis.call('ZADD', ek, ts, id)
expire()

-- 4. Prune behind the newest event, then cap the number of events.
-- The newest event is this one or the newest before it (read in step 0).
local newest = t
if elast and elast > t then
  newest = elast
end
local floor = newest - keep
local oldest = tonumber(redis.call('ZRANGE', ek, 0, 0, 'WITHSCORES')[2])
local below = '(' .. score(floor)
if oldest < floor then
  local ids = redis.call('ZRANGEBYSCORE', ek, '-inf', below)
  redis.call('ZREMRANGEBYSCORE', ek, '-inf', below)
  hdel(ids)
end
redis.call('ZREMRANGEBYSCORE', sk, '-inf', below)
local n = redis.call('ZCARD', ek)
if n > maxEvents then
  local ids = redis.call('ZRANGE', ek, 0, n - maxEvents - 1)
  redis.call('ZREMRANGEBYRANK', ek, 0, n - maxEvents - 1)
  hdel(ids)
end

-- 5. Candidates: events less than a window away, outside suppression zones,
-- in (time, id) order.
--
-- A distinct rule with suppression narrows them to those strictly between
-- the nearest other candidates with the event's value, before and after it
-- (walked outwards a page at a time), so a flood of one value costs little.
-- That changes no answer: no window of earlier candidates holds the
-- threshold (it would have fired and be in a suppression zone now), so a
-- window that reaches it must gain this event's value from this event and
-- cannot hold another event with that value. A wide group, where a
-- forgotten burst or a changed rule voids that premise, scans everything.
local cids, ctimes, cvals = {}, {}, {}
if distinct and sup > 0 and not wide then
  local function walk(from, to, rev, out)
    -- Under a flood the first other event is usually the stop: start small.
    local off, page = 0, 4
    while true do
      local got
      if rev then
        got = redis.call('ZREVRANGEBYSCORE', ek, from, to, 'WITHSCORES', 'LIMIT', off, page)
      else
        got = redis.call('ZRANGEBYSCORE', ek, from, to, 'WITHSCORES', 'LIMIT', off, page)
      end
      if #got == 0 then
        return
      end
      local ids = {}
      for i = 1, #got, 2 do
        ids[#ids + 1] = got[i]
      end
      local vals = redis.call('HMGET', vk, unpack(ids))
      for k = 1, #ids do
        local x = tonumber(got[2 * k])
        if not zoned(x) then
          local v = vals[k] or ''
          if ids[k] ~= id and v == value then
            return
          end
          out[#out + 1] = {ids[k], x, v}
        end
      end
      if #got < 2 * page then
        return
      end
      off = off + page
      page = math.min(page * 4, 256)
    end
  end
  local back, fwd = {}, {}
  walk(score(t), '(' .. score(t - w), true, back)
  walk('(' .. score(t), '(' .. score(t + w), false, fwd)
  for i = #back, 1, -1 do
    cids[#cids + 1], ctimes[#ctimes + 1], cvals[#cvals + 1] = back[i][1], back[i][2], back[i][3]
  end
  for i = 1, #fwd do
    cids[#cids + 1], ctimes[#ctimes + 1], cvals[#cvals + 1] = fwd[i][1], fwd[i][2], fwd[i][3]
  end
  if #cids < need then
    return {0}
  end
else
  local found = redis.call('ZRANGEBYSCORE', ek, '(' .. score(t - w), '(' .. score(t + w), 'WITHSCORES')
  for i = 1, #found, 2 do
    local x = tonumber(found[i + 1])
    if not zoned(x) then
      cids[#cids + 1] = found[i]
      ctimes[#ctimes + 1] = x
    end
  end
  if #cids < need then
    return {0}
  end
  if distinct then
    for i = 1, #cids, chunk do
      local got = redis.call('HMGET', vk, unpack(cids, i, math.min(i + chunk - 1, #cids)))
      for _, v in ipairs(got) do
        cvals[#cvals + 1] = v or ''
      end
    end
  end
end

-- 6. The first window (oldest start first) that starts no later than the
-- event and reaches the threshold fires.
local size, j, seen = 0, 1, {}
for i = 1, #cids do
  local start = ctimes[i]
  if start > t then
    break
  end
  while j <= #cids and ctimes[j] < start + w do
    if not distinct then
      size = size + 1
    else
      local c = (seen[cvals[j]] or 0) + 1
      seen[cvals[j]] = c
      if c == 1 then
        size = size + 1
      end
    end
    j = j + 1
  end
  if size >= need then
    local ids = {}
    for k = i, math.min(j - 1, i + maxIDs - 1) do
      ids[#ids + 1] = cids[k]
    end
    local b = {start, ctimes[j - 1], size, cids[i], id, meta[1], ids}
    bursts[#bursts + 1] = b
    while #bursts > maxBursts do
      table.remove(bursts, 1)
      meta[5] = 1
    end
    meta[1] = 0
    save()
    return fired(b)
  end
  if not distinct then
    size = size - 1
  else
    local c = seen[cvals[i]] - 1
    seen[cvals[i]] = c
    if c == 0 then
      size = size - 1
    end
  end
end
return {0}
