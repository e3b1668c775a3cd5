-- observe.lua: update and read the counters of one event (or undo its increments of active
-- counts), for one or more entities in one call.
--
-- KEYS[j]      rg:c2:{<entity>}: entity j's hash. Its distinct() sets are KEYS[j]..':'..<counter>,
--              their HyperLogLog buckets KEYS[j]..':'..<counter>..':'..<window>..':'..<bucket>;
--              all carry the entity's hash tag, so on Redis Cluster the store sends one call per
--              entity (on a single Redis, one call for the whole event).
-- ARGV[1]      the event time t (whole seconds), or '-' / '-<token>' for a retract, or
--              't|px|mark' to claim a request first (single Redis only; see the end)
-- ARGV[2j]     the number of segment j's program: its items P (below) are static per event kind
--              and written into this script as constants by store.py, so nothing is parsed or
--              interned per call
-- ARGV[2j+1]   segment j's values for this event, struct-packed with the format P[1]
--
-- P: values_format nf nw no, then
--   F[1..nf]         the field names one HMGET fetches (fields of the entity's hash: a counter's
--                    2-byte tag and 1-2 more bytes); a window's ring slot is its prefix here, the
--                    event's position (char(bucket % n)) appended per event. A window keeps its
--                    newest bucket's amount in a field of its own and the older live buckets in
--                    the ring, so one that only ever held one bucket resets without cleaning.
--   nw window rows   g n f v: granularity, buckets, F index of its head bucket (total f+1, the
--                    head bucket's amount f+2, ring slot f+3), the index of its op's value
--   no op rows       code v ttl f a b c d e (9 items; v: its first value, f: its first field)
--     'c' count/sum  f: F_all (0: no `all`), a..b: its windows, longest first. value: amount
--                    (0 = read only; negative = a closure, lowering only `all`, never below 0)
--     'd' distinct   f: F_meta (newest time seen, negative once approximate), f+1: the member
--                    while there is only one (no set key), a: P index of ':<counter>', b: has_all,
--                    c: cap, d: P index of its windows (g n ttl)*e. values: flag, member. Exact:
--                    one member in the hash, from two a zset member -> newest time; past `cap`
--                    members in the longest window, HyperLogLogs per window bucket.
--     'i' idle_days  f: F_last (gaps: f+1 .. f+a), b: P index of the a run gaps. value: flag
--   then the strings and runs the rows point to.
-- A retract's P: values_format mark, then 'u' F_all per active count (value: the amount to
-- take back); mark suffixes the idempotency key.
-- Returns one value per window of each op (in program order), then its all-time value.
--
-- Costs, measured on these machines: a Lua arithmetic step ~13 ns, a redis.call ~0.5 us plus
-- ~0.1 us per argument, a Lua number given to redis.call ~0.4 us more (%.17g), a new table
-- ~0.12 us and one grown by five inserts ~0.8 us; unpacking a program of 150 items sent as an
-- argument ~4 us. So a segment makes few tables: P (one constructor of constants), the values
-- (one struct.unpack), F (one copy), the HMGET reply (which then holds the windows' state), the
-- writes; one HMGET fetches every field its ops need (heads, totals, the event's own ring
-- slots, metadata) and one HSET writes them back. An entity seen now and then (most of them)
-- costs no more: a window that held one bucket resets by overwriting its head, a distinct()
-- counter with one member in its windows keeps it in the hash (no set key, no ZADD, no
-- EXPIRE). Cost does not grow with how full a window is: totals are kept running; ring slots
-- leaving a window are read by name when the window moves by a few buckets, else (a long
-- move, or a reset of a window that held several buckets) found with one HGETALL of the
-- entity's hash. The hash's TTL is only raised (EXPIRE .. GT), when a counter's
-- longest window opens a bucket (every write for all-time counters, daily for idle_days), so
-- counters sharing a hash never shorten each other's life.

local floor, max, min, abs = math.floor, math.max, math.min, math.abs
local char, sub, byte = string.char, string.sub, string.byte
local sunpack = struct.unpack
local FEW = 8 -- a window moving by up to this many buckets reads the slots it expires by name
local RETRACT_MARK_SECONDS = 172800

local header = ARGV[1]
local t = tonumber(header)
local out, nout = {}, 0
local segments = #KEYS

-- program(id): the items P of program `id`, as Lua constants (store.py writes it in below, from
-- the counter file, so this file alone is a template: one script per counter file)
local program
--@programs

local function segment(j)
  local P = program(tonumber(ARGV[2 * j]))
  return P, { sunpack(P[1], ARGV[2 * j + 1]) }
end

local function emit(value)
  nout = nout + 1
  out[nout] = value
end

local function observe(K, P, V)
  local nf, nw, no = P[2], P[3], P[4]
  local W0 = 4 + nf -- window w's row: P[W0 + 4w - 3 ..]
  local O0 = W0 + 4 * nw -- op o's row: P[O0 + 9o - 8 ..]
  local F = { unpack(P, 5, 4 + nf) }
  for r = W0, O0 - 1, 4 do
    local f = P[r + 3] + 3
    F[f] = F[f] .. char(floor(t / P[r + 1]) % P[r + 2])
  end
  local cur = redis.call('HMGET', K, unpack(F, 1, nf))
  local existed = false
  for x = 1, nf do
    if cur[x] then
      existed = true
      break
    end
  end

  -- count/sum windows: where each one stands, and which ring slots leave it. A window's newest
  -- (head) bucket keeps its amount in a field of its own; the ring holds the older live buckets.
  -- The state replaces the four replies: cur[f] head bucket (or false), cur[f+1] total,
  -- cur[f+2] the head's amount, cur[f+3] the slot of a late event's bucket (or false).
  local dels, ndel = nil, 0
  local near, nearw, nn = nil, nil, 0
  local scan = nil -- ring prefix -> window (negative: reset), for one HGETALL
  for w = 1, nw do
    local r = W0 + 4 * w - 4
    local n, f = P[r + 2], P[r + 3]
    local b = floor(t / P[r + 1])
    local update = V[P[r + 4]] > 0
    local h = tonumber(cur[f])
    local s = tonumber(cur[f + 1]) or 0
    local hv = tonumber(cur[f + 2]) or 0
    local slot = tonumber(cur[f + 3]) or false
    if h and b > h then
      local k = b - h
      if k >= n then
        -- the whole window slid past: empty. Older buckets than its head's sit in the ring
        -- only if the total says so (an entity seen now and then has none); they go when
        -- the window is written again.
        if update and s > hv then
          scan = scan or {}
          scan[P[4 + f + 3]] = -w
        end
        s = 0
      elseif k <= FEW then
        -- the buckets leaving the window hold the positions of h+1 .. b
        if slot then
          s = s - slot
          if update then
            dels = dels or {}
            ndel = ndel + 1
            dels[ndel] = F[f + 3]
          end
        end
        if k > 1 then
          near, nearw = near or {}, nearw or {}
          for m = 1, k - 1 do
            nn = nn + 1
            near[nn] = P[4 + f + 3] .. char((b - m) % n)
            nearw[nn] = w
          end
        end
      else
        scan = scan or {}
        scan[P[4 + f + 3]] = w
      end
      slot = false
    elseif not h or b == h then
      slot = false
    end
    cur[f], cur[f + 1], cur[f + 2], cur[f + 3] = h or false, s, hv, slot
  end
  if nn > 0 then
    local got = redis.call('HMGET', K, unpack(near, 1, nn))
    for x = 1, nn do
      local value = tonumber(got[x])
      if value then
        local r = W0 + 4 * nearw[x] - 4
        local f = P[r + 3]
        cur[f + 1] = cur[f + 1] - value
        if V[P[r + 4]] > 0 then
          dels = dels or {}
          ndel = ndel + 1
          dels[ndel] = near[x]
        end
      end
    end
  end
  if scan then
    local all = redis.call('HGETALL', K)
    for x = 1, #all, 2 do
      local field = all[x]
      local w = #field == 4 and scan[sub(field, 1, 3)]
      if w then
        dels = dels or {}
        if w < 0 then
          ndel = ndel + 1
          dels[ndel] = field
        else
          -- the bucket this slot holds: the newest one before the head with its position
          local r = W0 + 4 * w - 4
          local n, f = P[r + 2], P[r + 3]
          local h = cur[f]
          if h - (h - byte(field, 4)) % n <= floor(t / P[r + 1]) - n then
            cur[f + 1] = cur[f + 1] - tonumber(all[x + 1])
            if V[P[r + 4]] > 0 then
              ndel = ndel + 1
              dels[ndel] = field
            end
          end
        end
      end
    end
  end

  -- the values, op by op, and what to write
  local writes, nwr, need = { unpack(F, 1, nf) }, 0, 0
  for o = 1, no do
    local r = O0 + 9 * o - 9
    local code, v, ttl, f = P[r + 1], P[r + 2], P[r + 3], P[r + 4]
    if code == 'c' then
      local amount = V[v]
      local wrote, opened = false, false
      for w = P[r + 5], P[r + 6] do
        local wr = W0 + 4 * w - 4
        local n, wf = P[wr + 2], P[wr + 3]
        local b = floor(t / P[wr + 1])
        local h, s = cur[wf], cur[wf + 1]
        if amount > 0 then
          if not h or b > h then
            if h and b - h < n then
              -- the old head stays in the window: into the ring, at its position
              writes[nwr + 1] = P[4 + wf + 3] .. char(h % n)
              writes[nwr + 2] = cur[wf + 2]
              nwr = nwr + 2
            end
            s = s + amount
            writes[nwr + 1] = F[wf]
            writes[nwr + 2] = b
            writes[nwr + 3] = F[wf + 2]
            writes[nwr + 4] = amount
            writes[nwr + 5] = F[wf + 1]
            writes[nwr + 6] = s
            nwr = nwr + 6
            wrote = true
            -- the first window is the longest: its new bucket starts the TTL again
            opened = opened or w == P[r + 5]
          elseif b == h then
            s = s + amount
            writes[nwr + 1] = F[wf + 2]
            writes[nwr + 2] = cur[wf + 2] + amount
            writes[nwr + 3] = F[wf + 1]
            writes[nwr + 4] = s
            nwr = nwr + 4
            wrote = true
          elseif b > h - n then
            s = s + amount
            writes[nwr + 1] = F[wf + 3]
            writes[nwr + 2] = (cur[wf + 3] or 0) + amount
            writes[nwr + 3] = F[wf + 1]
            writes[nwr + 4] = s
            nwr = nwr + 4
            wrote = true
          end
        end
        emit(s)
      end
      if f > 0 then
        local before = tonumber(cur[f]) or 0
        local a = max(0, before + amount)
        if a ~= before then
          writes[nwr + 1] = F[f]
          writes[nwr + 2] = a
          nwr = nwr + 2
          wrote, opened = true, true
        end
        emit(a)
      end
      if wrote and (opened or P[r + 5] > P[r + 6]) then
        need = max(need, ttl)
      end
    elseif code == 'i' then
      local nwin, gaps = P[r + 5], P[r + 6]
      local l = tonumber(cur[f])
      local update = V[v] == 1 and (l == nil or t >= l)
      if update then
        writes[nwr + 1] = F[f]
        writes[nwr + 2] = t
        nwr = nwr + 2
        -- kept `retain` (+ up to a day) after the last update: raised once a day
        if l == nil or floor(t / 86400) > floor(l / 86400) then
          need = max(need, ttl)
        end
      end
      for x = 1, nwin do
        local gap = P[gaps + x - 1]
        local d = tonumber(cur[f + x]) or 0
        if update and (l == nil or t - l >= gap) then
          d = l and t - l or 0
          writes[nwr + 1] = F[f + x]
          writes[nwr + 2] = d
          nwr = nwr + 2
        end
        if update then
          emit(floor(d / 86400))
        elseif l == nil then
          emit(0)
        elseif t - l >= gap then
          emit(floor((t - l) / 86400))
        else
          emit(floor(d / 86400))
        end
      end
    else -- 'd'
      local Z = K .. P[P[r + 5]]
      local has_all, cap, ws, nwin = P[r + 6] == 1, P[r + 7], P[r + 8], P[r + 9]
      local update = V[v] == 1
      local member = V[v + 1]
      local meta = tonumber(cur[f])
      local approximate = meta ~= nil and meta < 0
      local head = meta and abs(meta)
      -- each window ends at the newest bucket seen, or the event's if newer
      local advanced = head == nil
      local passed = head ~= nil
      if head ~= nil then
        for x = 1, nwin do
          local g, n = P[ws + 3 * x - 3], P[ws + 3 * x - 2]
          local b, hb = floor(t / g), floor(head / g)
          if x == 1 and b > hb then
            advanced = true
          end
          if b - hb < n then
            passed = false
          end
        end
      end
      if approximate and update and passed and not has_all then
        -- idle for every window since its newest member: exact counting again, from an empty set
        approximate = false
        head = nil
        advanced = true
      end
      -- the first second of window x, and its last bucket
      local function window(x)
        local g, n = P[ws + 3 * x - 3], P[ws + 3 * x - 2]
        local e = floor(t / g)
        if head ~= nil then
          e = max(e, floor(head / g))
        end
        return (e - n + 1) * g, e
      end
      if not approximate then
        -- exact: nothing yet; one member, kept in the hash (`single`, its time the head); a set
        local single = head ~= nil and cur[f + 1]
        local mode = single and 1 or 3 -- 1 one member, 2 two (just made a set), 3 a set
        local newest = head
        local added = 0
        if update then
          local oldest = window(1)
          for x = 2, nwin do
            oldest = min(oldest, (window(x)))
          end
          if head == nil or (not has_all and head < oldest) then
            -- nothing seen yet, or nothing still in a window (an entity seen now and then):
            -- one member, in the hash; a stale set goes
            if head ~= nil and not single then
              redis.call('DEL', Z)
            end
            writes[nwr + 1] = F[f + 1]
            writes[nwr + 2] = member
            nwr = nwr + 2
            need = max(need, ttl)
            mode = 1
          elseif single then
            if single == member then
              if advanced then
                need = max(need, ttl)
              end
            else
              -- a second member: now a set
              redis.call('ZADD', Z, head, single, t, member)
              redis.call('EXPIRE', Z, ttl)
              dels = dels or {}
              ndel = ndel + 1
              dels[ndel] = F[f + 1]
              need = max(need, ttl)
              mode, added = 2, 1
            end
          else
            added = redis.call('ZADD', Z, 'GT', t, member)
            if has_all then
              redis.call('EXPIRE', Z, ttl)
              need = max(need, ttl)
            elseif advanced then
              -- window 1 (the longest) opened a bucket: prune, and restart the TTL
              redis.call('ZREMRANGEBYSCORE', Z, '-inf', '(' .. oldest)
              redis.call('EXPIRE', Z, ttl)
              need = max(need, ttl)
            elseif added == 1 and redis.call('EXPIRE', Z, ttl, 'NX') == 1 then
              need = max(need, ttl) -- the set had expired and was created again
            end
          end
          if head == nil or t > head then
            newest = t
            writes[nwr + 1] = F[f]
            writes[nwr + 2] = t
            nwr = nwr + 2
          end
        end
        local first = nout + 1
        for x = 1, nwin do
          local lo = window(x)
          -- nothing seen yet, or nothing as new as the window: no need to ask
          if newest == nil or newest < lo then
            emit(0)
          elseif mode == 1 then
            emit(1)
          elseif mode == 2 then
            emit((head >= lo and 1 or 0) + (t >= lo and 1 or 0))
          else
            emit(redis.call('ZCOUNT', Z, lo, '+inf'))
          end
        end
        if has_all then
          emit(newest == nil and 0 or mode < 3 and mode or redis.call('ZCARD', Z))
        end
        if added == 1 and out[first] > cap then
          -- Past the cap: switch to HyperLogLogs. Each member goes to the bucket of its
          -- newest occurrence, which is all a window ending at the newest bucket needs.
          nout = first - 1
          local all = redis.call('ZRANGE', Z, 0, -1, 'WITHSCORES')
          redis.call('DEL', Z)
          for x = 1, nwin do
            local g, n, wttl = P[ws + 3 * x - 3], P[ws + 3 * x - 2], P[ws + 3 * x - 1]
            local _, last = window(x)
            local groups = {}
            for y = 1, #all, 2 do
              local bucket = floor(tonumber(all[y + 1]) / g)
              if bucket > last - n then
                local group = groups[bucket]
                if group == nil then
                  group = {}
                  groups[bucket] = group
                end
                group[#group + 1] = all[y]
              end
            end
            for bucket, group in pairs(groups) do
              local hll = Z .. ':' .. x .. ':' .. bucket
              redis.call('PFADD', hll, unpack(group))
              redis.call('EXPIRE', hll, wttl)
            end
          end
          if has_all then
            local members = {}
            for y = 1, #all, 2 do
              members[#members + 1] = all[y]
            end
            redis.call('PFADD', Z .. ':a', unpack(members))
            redis.call('EXPIRE', Z .. ':a', ttl)
          end
          writes[nwr + 1] = F[f]
          writes[nwr + 2] = -newest
          nwr = nwr + 2
          need = max(need, ttl)
          approximate = true
          update = false -- its member is in the HyperLogLogs now
          head = newest
        end
      end
      if approximate then
        if update then
          for x = 1, nwin do
            local g, n = P[ws + 3 * x - 3], P[ws + 3 * x - 2]
            local _, last = window(x)
            local b = floor(t / g)
            if b > last - n then
              local hll = Z .. ':' .. x .. ':' .. b
              redis.call('PFADD', hll, member)
              redis.call('EXPIRE', hll, P[ws + 3 * x - 1])
            end
          end
          if has_all then
            redis.call('PFADD', Z .. ':a', member)
            redis.call('EXPIRE', Z .. ':a', ttl)
          end
          if t > head then
            writes[nwr + 1] = F[f]
            writes[nwr + 2] = -t
            nwr = nwr + 2
          end
          need = max(need, ttl)
        end
        for x = 1, nwin do
          local n = P[ws + 3 * x - 2]
          local _, last = window(x)
          local names = {}
          for bucket = last - n + 1, last do
            names[#names + 1] = Z .. ':' .. x .. ':' .. bucket
          end
          emit(redis.call('PFCOUNT', unpack(names)))
        end
        if has_all then
          emit(redis.call('PFCOUNT', Z .. ':a'))
        end
      end
    end
  end

  if ndel > 0 then
    redis.call('HDEL', K, unpack(dels, 1, ndel))
  end
  if nwr > 0 then
    redis.call('HSET', K, unpack(writes, 1, nwr))
  end
  if need > 0 then
    -- A hash that existed has a TTL (every write that creates one raises it, and HDEL never
    -- empties it: heads and totals stay). GT never shortens what another counter needs.
    if existed then
      redis.call('EXPIRE', K, need, 'GT')
    elseif redis.call('EXPIRE', K, need, 'NX') == 0 then
      redis.call('EXPIRE', K, need, 'GT')
    end
  end
end

-- Undo this event's increments of active counts: subtract the amounts it added, never below 0.
-- A hash that expired meanwhile is not created again. With a token, once per entity and token.
local function retract(K, P, V)
  local F = {}
  for x = 3, #P, 2 do
    F[#F + 1] = P[x + 1]
  end
  local cur = redis.call('HMGET', K, unpack(F))
  local fresh = #header == 1
    or redis.call('SET', K .. ':u:' .. sub(header, 2) .. P[2], 1, 'NX', 'EX', RETRACT_MARK_SECONDS)
  local writes = {}
  for x = 1, #F do
    local a = tonumber(cur[x])
    if a and fresh and V[x] > 0 then
      local after = max(0, a - V[x])
      if after ~= a then
        writes[#writes + 1] = F[x]
        writes[#writes + 1] = after
      end
      a = after
    end
    nout = nout + 1
    out[nout] = a or 0
  end
  if #writes > 0 then
    redis.call('HSET', K, unpack(writes))
  end
end

-- A claim (header 't|px|mark', the request's key last in KEYS): the stored answer of an earlier
-- attempt (a decision, or another attempt's pending mark) is returned as it is, a string, and
-- nothing is counted; else the request is marked as this attempt's (PX px) and counted. One
-- call where a separate claim script would cost a round trip of its own.
if not t and byte(header, 1) ~= 45 then
  local bar = string.find(header, '|', 1, true)
  local bar2 = string.find(header, '|', bar + 1, true)
  local claim = KEYS[segments]
  segments = segments - 1
  local stored = redis.call('GET', claim)
  if stored then
    return stored
  end
  redis.call('SET', claim, sub(header, bar2 + 1), 'PX', sub(header, bar + 1, bar2 - 1))
  t = tonumber(sub(header, 1, bar - 1))
end

for j = 1, segments do
  local P, V = segment(j)
  if t then
    observe(KEYS[j], P, V)
  else
    retract(KEYS[j], P, V)
  end
end
return out
