-- Applies one Update to one new-value group, with the semantics of
-- newvalue.go (which is the same algorithm in Go: keep the two in step).
--
-- KEYS[1] n: sorted set, value -> newest time seen (µs)
-- KEYS[2] f: string, the time of the group's first event (µs)
-- KEYS[3] a: hash, event id -> MessagePack {seq, reply} of the alert its
--         update raised, for the newest max alerts; field "\0" -> alerts
--         raised, "\0<seq>" -> the event id of alert seq
-- ARGV: event id, time, value, history µs, learn µs, max values, idle µs,
--       lateness µs, max alerts
--
-- Reply: {outcome, values known, values evicted}; outcomes 0 below,
-- 1 fired.

local nk, fk, ak = KEYS[1], KEYS[2], KEYS[3]
local id, ts, value = ARGV[1], ARGV[2], ARGV[3]
local t = tonumber(ts)
local history = tonumber(ARGV[4])
local learn = tonumber(ARGV[5])
local maxValues = tonumber(ARGV[6])
local idle = tonumber(ARGV[7])
local late = tonumber(ARGV[8])
local maxAlerts = tonumber(ARGV[9])

local function score(x)
  return string.format('%.0f', x)
end

-- 0. A group quiet for longer than its keys live starts afresh.
local r = redis.call('ZRANGE', nk, -1, -1, 'WITHSCORES')
local newest = r[2] and tonumber(r[2])
if newest and t - newest > idle then
  redis.call('DEL', nk, fk, ak)
  newest = nil
end

-- 1. A redelivered event that raised an alert raises it again.
local raw = redis.call('HGET', ak, id)
if raw then
  return cmsgpack.unpack(raw)[2]
end

-- 2. Is the value new?
local first = tonumber(redis.call('GET', fk) or ts)
if t < first then
  first = t
end
redis.call('SET', fk, score(first))
local last = redis.call('ZSCORE', nk, value)
last = last and tonumber(last)
local isNew = not last or (last <= t and t - last >= history)

-- 4. Remember it, forget what is too old, evict beyond the maximum.
if not last or t > last then
  redis.call('ZADD', nk, ts, value)
end
if not newest or t > newest then
  newest = t
end
redis.call('ZREMRANGEBYSCORE', nk, '-inf', '(' .. score(newest - history - late))
local known = redis.call('ZCARD', nk)
local evicted = 0
if known > maxValues then
  evicted = known - maxValues
  redis.call('ZPOPMIN', nk, evicted)
  known = maxValues
end
local ms = math.ceil(idle / 1000)
redis.call('PEXPIRE', nk, ms)
redis.call('PEXPIRE', fk, ms)
redis.call('PEXPIRE', ak, ms)

-- 3. Alert on a new value once the group has learnt long enough.
if not isNew or t - first < learn then
  return {0, known, evicted}
end
local reply = {1, known, evicted}
local seq = redis.call('HINCRBY', ak, '\0', 1)
redis.call('HSET', ak, id, cmsgpack.pack({seq, reply}), '\0' .. seq, id)
if seq > maxAlerts then
  local gone = '\0' .. (seq - maxAlerts)
  local oldest = redis.call('HGET', ak, gone)
  if oldest then
    redis.call('HDEL', ak, oldest, gone)
  end
end
redis.call('PEXPIRE', ak, ms)
return reply
