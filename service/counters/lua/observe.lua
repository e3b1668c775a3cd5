-- observe.lua: update and read the counters of ONE entity in one call.
--
-- Every KEYS[i] is `rg:c:{<entity>}:<counter>` with the same hash tag, so the
-- call (and the HyperLogLog bucket keys `KEYS[i]..':'..w..':'..bucket` it may
-- create, which carry the tag too) stays in one Redis Cluster slot.
-- The semantics are those of service/counters/spec.py; the replay kernels in
-- service/counters/kernels.py implement the same steps, and a test feeds both
-- one random event stream and compares every value.
--
-- ARGV[1] = event time t (integer seconds); then two arguments per key:
--   layout  the counter's static shape, packed by store.py: an op letter, a
--           count byte, then that many little-endian int32 (struct.unpack)
--   value   'c': the signed amount to add (0 = read only; -1 = decrement)
--           'd': the member to add (8 hashed bytes; '' = read only)
--           'i': '1' to update, '0' to read
--
--   'c' count/sum   layout: nwin {g n}*nwin has_all ttl
--       Hash: h<w> newest bucket of window w, s<w> running total of window w,
--       field w*1000 + bucket % n = one ring slot per bucket, a = all-time total.
--       Decrements apply to the all-time total only, never below 0.
--   'd' distinct    layout: nwin {g n ttl}*nwin has_all ttl cap
--       Exact: zset member -> newest time seen. Above `cap` members in the
--       longest window the key becomes a hash {h = newest time} and members go
--       to per-bucket HyperLogLogs KEY:w:bucket (and KEY:a for all-time).
--   'i' idle_days   layout: nwin {gap}*nwin ttl
--       Hash: l newest time, d<w> silence before the current run (seconds).
-- Returns one value per window (in layout order), then the all-time value.
--
-- Cost does not grow with how full a window is: totals are kept running; ring
-- slots are expired only when a new bucket opens (read in the same HMGET for a
-- short advance; after a longer one, the whole key is dropped or its existing
-- slots read with one HGETALL); TTLs are refreshed, and distinct sets pruned,
-- only when the longest window (window 1) opens a bucket (every write for
-- all-time counters, once a day for idle_days). At most 8 windows per counter.
-- Each redis.call costs a few microseconds, so the code saves calls first.

local t = tonumber(ARGV[1])
local out = {}
-- Numbers go to redis.call as Lua numbers: Redis formats them with %.17g,
-- exact for integers below 2^53. Field names are constants where they can be.
local H = { 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'h7', 'h8' }
local S = { 's1', 's2', 's3', 's4', 's5', 's6', 's7', 's8' }
local D = { 'd1', 'd2', 'd3', 'd4', 'd5', 'd6', 'd7', 'd8' }
-- A window that moves by at most this many buckets finds the slots it expires
-- in the first HMGET.
local NEAR = 4

local function layout(packed)
  local count = string.byte(packed, 2)
  return { struct.unpack('<' .. string.rep('i', count), packed, 3) }
end

local function op_windows(key, L, amount)
  local nwin = L[1]
  local has_all = L[2 * nwin + 2] == 1
  local ttl = L[2 * nwin + 3]
  -- per window: head, total, and the ring slots of the NEAR newest buckets up to
  -- the event's: its own slot, and the ones a short advance expires
  local stride = 2 + NEAR
  local b, n, fields = {}, {}, {}
  for i = 1, nwin do
    local ni = L[2 * i + 1]
    local bi = math.floor(t / L[2 * i])
    b[i], n[i] = bi, ni
    local base = (i - 1) * stride
    fields[base + 1] = H[i]
    fields[base + 2] = S[i]
    for m = 0, NEAR - 1 do
      fields[base + 3 + m] = i * 1000 + (bi - m) % ni
    end
  end
  if has_all then
    fields[#fields + 1] = 'a'
  end
  local cur = redis.call('HMGET', key, unpack(fields))
  local h, s, dels = {}, {}, {}
  local mid, reset = false, 0
  for i = 1, nwin do
    local base = (i - 1) * stride
    local hi = tonumber(cur[base + 1])
    local si = tonumber(cur[base + 2]) or 0
    h[i] = hi
    if hi and b[i] > hi then
      local k = b[i] - hi
      if k >= n[i] then
        si = 0 -- the whole window has slid past
        reset = reset + 1
      elseif k > NEAR then
        mid = true
      else
        -- buckets hi+1 .. b reuse the slots of the buckets leaving the window
        for m = 0, k - 1 do
          local v = tonumber(cur[base + 3 + m])
          if v then
            si = si - v
            dels[#dels + 1] = fields[base + 3 + m]
          end
        end
      end
    end
    s[i] = si
  end
  local update = amount ~= 0
  if update and reset == nwin and not has_all then
    redis.call('DEL', key) -- every window slid past: start afresh
    dels = {}
  elseif mid or (update and reset > 0) then
    -- read the ring slots that exist rather than every bucket passed
    local all = redis.call('HGETALL', key)
    for k = 1, #all, 2 do
      local f = tonumber(all[k]) -- ring slots are the numeric fields
      if f then
        local i = math.floor(f / 1000)
        local hi = h[i]
        if hi and b[i] - hi > NEAR then
          if b[i] - hi >= n[i] then
            dels[#dels + 1] = f
          else
            local bucket = hi - (hi - (f - i * 1000)) % n[i]
            if bucket <= b[i] - n[i] then
              s[i] = s[i] - tonumber(all[k + 1])
              dels[#dels + 1] = f
            end
          end
        end
      end
    end
  end
  local writes = {}
  for i = 1, nwin do
    if amount > 0 then
      local hi = h[i]
      local base = (i - 1) * stride
      if hi == nil or b[i] > hi then
        s[i] = s[i] + amount
        writes[#writes + 1] = H[i]
        writes[#writes + 1] = b[i]
        writes[#writes + 1] = fields[base + 3]
        writes[#writes + 1] = amount
        writes[#writes + 1] = S[i]
        writes[#writes + 1] = s[i]
      elseif b[i] > hi - n[i] then
        s[i] = s[i] + amount
        writes[#writes + 1] = fields[base + 3]
        writes[#writes + 1] = (tonumber(cur[base + 3]) or 0) + amount
        writes[#writes + 1] = S[i]
        writes[#writes + 1] = s[i]
      end
    end
    out[#out + 1] = s[i]
  end
  if has_all then
    local before = tonumber(cur[#fields]) or 0
    local a = math.max(0, before + amount)
    if a ~= before then
      writes[#writes + 1] = 'a'
      writes[#writes + 1] = a
    end
    out[#out + 1] = a
  end
  if amount > 0 and #dels > 0 then
    redis.call('HDEL', key, unpack(dels))
  end
  if #writes > 0 then
    redis.call('HSET', key, unpack(writes))
    -- window 1 is the longest: its new bucket starts the key's TTL again
    if has_all or h[1] == nil or b[1] > h[1] then
      redis.call('EXPIRE', key, ttl)
    end
  end
end

local function op_distinct(key, L, member)
  local nwin = L[1]
  local has_all = L[3 * nwin + 2] == 1
  local ttl = L[3 * nwin + 3]
  local cap = L[3 * nwin + 4]
  local update = member ~= ''
  -- exact: a zset whose newest member gives the head; approximate: a hash (WRONGTYPE here)
  local top = redis.pcall('ZRANGE', key, -1, -1, 'WITHSCORES')
  local approximate = top.err ~= nil
  local head
  if approximate then
    head = tonumber(redis.call('HGET', key, 'h'))
  else
    head = tonumber(top[2])
  end
  -- each window ends at the newest bucket seen, or the event's if newer
  local b, n, g, wttl, last, lo = {}, {}, {}, {}, {}, {}
  local advanced = head == nil
  for i = 1, nwin do
    g[i], n[i], wttl[i] = L[3 * i - 1], L[3 * i], L[3 * i + 1]
    b[i] = math.floor(t / g[i])
    local end_bucket = b[i]
    if head ~= nil then
      local hb = math.floor(head / g[i])
      if hb >= end_bucket then
        end_bucket = hb
      elseif i == 1 then
        advanced = true
      end
    end
    last[i] = end_bucket
    lo[i] = (end_bucket - n[i] + 1) * g[i]
  end

  if not approximate then
    local added = 0
    if update then
      added = redis.call('ZADD', key, 'GT', t, member)
      if has_all then
        redis.call('EXPIRE', key, ttl)
      elseif advanced then
        -- window 1 (the longest) opened a bucket: prune, and restart the TTL
        local oldest = lo[1]
        for i = 2, nwin do
          oldest = math.min(oldest, lo[i])
        end
        redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. oldest)
        redis.call('EXPIRE', key, ttl)
      end
    end
    local values = {}
    for i = 1, nwin do
      values[i] = redis.call('ZCOUNT', key, lo[i], '+inf')
    end
    if has_all then
      values[nwin + 1] = redis.call('ZCARD', key)
    end
    if added == 0 or values[1] <= cap then
      for i = 1, #values do
        out[#out + 1] = values[i]
      end
      return
    end
    -- Past the cap: switch to HyperLogLogs. Each member goes to the bucket of its
    -- newest occurrence, which is all a window ending at the newest bucket needs.
    local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    redis.call('DEL', key)
    for i = 1, nwin do
      local groups = {}
      for k = 1, #all, 2 do
        local bucket = math.floor(tonumber(all[k + 1]) / g[i])
        if bucket > last[i] - n[i] then
          local group = groups[bucket]
          if group == nil then
            group = {}
            groups[bucket] = group
          end
          group[#group + 1] = all[k]
        end
      end
      for bucket, group in pairs(groups) do
        local hll = key .. ':' .. i .. ':' .. bucket
        redis.call('PFADD', hll, unpack(group))
        redis.call('EXPIRE', hll, wttl[i])
      end
    end
    if has_all then
      local members = {}
      for k = 1, #all, 2 do
        members[#members + 1] = all[k]
      end
      redis.call('PFADD', key .. ':a', unpack(members))
      redis.call('EXPIRE', key .. ':a', ttl)
    end
    local newest = t
    if head ~= nil and head > t then
      newest = head
    end
    redis.call('HSET', key, 'h', newest)
    redis.call('EXPIRE', key, ttl)
  elseif update then
    for i = 1, nwin do
      if b[i] > last[i] - n[i] then
        local hll = key .. ':' .. i .. ':' .. b[i]
        redis.call('PFADD', hll, member)
        redis.call('EXPIRE', hll, wttl[i])
      end
    end
    if has_all then
      redis.call('PFADD', key .. ':a', member)
      redis.call('EXPIRE', key .. ':a', ttl)
    end
    if head == nil or t > head then
      redis.call('HSET', key, 'h', t)
    end
    redis.call('EXPIRE', key, ttl)
  end
  for i = 1, nwin do
    local names = {}
    for bucket = last[i] - n[i] + 1, last[i] do
      names[#names + 1] = key .. ':' .. i .. ':' .. bucket
    end
    out[#out + 1] = redis.call('PFCOUNT', unpack(names))
  end
  if has_all then
    out[#out + 1] = redis.call('PFCOUNT', key .. ':a')
  end
end

local function op_idle(key, L, update)
  local nwin = L[1]
  local ttl = L[nwin + 2]
  local fields = { 'l' }
  for i = 1, nwin do
    fields[i + 1] = D[i]
  end
  local cur = redis.call('HMGET', key, unpack(fields))
  local l = tonumber(cur[1])
  local d = {}
  for i = 1, nwin do
    d[i] = tonumber(cur[i + 1]) or 0
  end
  if update and (l == nil or t >= l) then
    local writes = { 'l', t }
    for i = 1, nwin do
      if l == nil or t - l >= L[i + 1] then
        d[i] = l and t - l or 0
        writes[#writes + 1] = D[i]
        writes[#writes + 1] = d[i]
      end
    end
    redis.call('HSET', key, unpack(writes))
    -- kept `retain` (+ up to a day) after the last update: refreshed once a day
    if l == nil or math.floor(t / 86400) > math.floor(l / 86400) then
      redis.call('EXPIRE', key, ttl)
    end
    l = t
  end
  for i = 1, nwin do
    if l == nil then
      out[#out + 1] = 0
    elseif t - l >= L[i + 1] then
      out[#out + 1] = math.floor((t - l) / 86400)
    else
      out[#out + 1] = math.floor(d[i] / 86400)
    end
  end
end

for k = 1, #KEYS do
  local packed = ARGV[2 * k]
  local value = ARGV[2 * k + 1]
  local code = string.sub(packed, 1, 1)
  if code == 'c' then
    op_windows(KEYS[k], layout(packed), tonumber(value))
  elseif code == 'd' then
    op_distinct(KEYS[k], layout(packed), value)
  elseif code == 'i' then
    op_idle(KEYS[k], layout(packed), value == '1')
  else
    return redis.error_reply('observe.lua: unknown op ' .. tostring(code))
  end
end
return out
