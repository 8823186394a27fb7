-- One admission attempt for one request: admit it on the best account, or queue its ticket.
-- Atomic: checks the pool's queue for this model and every candidate account, then charges RPM and
-- TPM (both or neither) and takes a concurrency lease, all in one step on Redis server time.
--
-- KEYS[1] queue ZSET (ticket -> rank)      KEYS[2] ticket expiry ZSET (ticket -> expires at)
-- KEYS[3] ticket cost HASH (ticket -> tokens)
-- KEYS[2+2i] account i HASH (r, t, ts, cd)  KEYS[3+2i] account i lease ZSET (lease -> expires at)
-- ARGV[1] now ('' = TIME)  ARGV[2] ticket (= lease id)
-- ARGV[3] "priority;aging_s;tokens;lease_ttl_s;ticket_ttl_s;rank;upstream_lag_s" (rank '' = rank it now)
-- ARGV[4] wake channel  ARGV[5] model
-- ARGV[5+i] account i: "name;rpm;tpm;slots;weight;health" (slots 0 = no concurrency limit)
-- (Fields are packed into few arguments: encoding arguments is most of a call's client-side cost.)
-- Returns {1, account} or {0, reason, wait_ms, rank}.

local AHEAD_LIMIT = 64
local POLL_MS = 250
local WINDOW = 60.0

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local function fields(packed)
  local out = {}
  for part in string.gmatch(packed .. ';', '([^;]*);') do out[#out + 1] = part end
  return out
end

local ticket = ARGV[2]
local params = fields(ARGV[3])
local priority = tonumber(params[1])
local aging = tonumber(params[2])
local tokens = tonumber(params[3])
local lease_ttl = tonumber(params[4])
local ticket_ttl = tonumber(params[5])
local lag = tonumber(params[7])
local n = #ARGV - 5

-- Tickets of sidecars that stopped refreshing them are dead.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[3], unpack(dead))
end

local rank = tonumber(redis.call('ZSCORE', KEYS[1], ticket))
local queued = rank ~= nil
if rank == nil then
  if params[6] ~= '' then rank = tonumber(params[6]) else rank = now - priority * aging end
end

-- Better-ranked live tickets (ties: the smaller ticket id first).
local ahead_ids = {}
local near = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', rank, 'WITHSCORES', 'LIMIT', 0, AHEAD_LIMIT + 1)
for i = 1, #near, 2 do
  local id, score = near[i], tonumber(near[i + 1])
  if id ~= ticket and (score < rank or id < ticket) then ahead_ids[#ahead_ids + 1] = id end
end
local ahead_tokens = 0
if #ahead_ids > 0 then
  local costs = redis.call('HMGET', KEYS[3], unpack(ahead_ids))
  for i = 1, #costs do ahead_tokens = ahead_tokens + (tonumber(costs[i]) or 0) end
end

-- Every account as it stands now.
local accounts = {}
local free_r, free_t, free_s = 0, 0, 0
for i = 1, n do
  local f = fields(ARGV[5 + i])
  local acct = {
    name = f[1], rpm = tonumber(f[2]), tpm = tonumber(f[3]), slots = tonumber(f[4]),
    weight = tonumber(f[5]), health = tonumber(f[6]), key = KEYS[2 + 2 * i], leases = KEYS[3 + 2 * i],
  }
  local h = redis.call('HMGET', acct.key, 'r', 't', 'ts', 'cd')
  local r, t = tonumber(h[1]) or acct.rpm, tonumber(h[2]) or acct.tpm
  local ts, cd = tonumber(h[3]) or now, tonumber(h[4]) or 0
  if now > ts then
    r = r + (now - ts) * acct.rpm / WINDOW
    t = t + (now - ts) * acct.tpm / WINDOW
    ts = now
  end
  acct.r, acct.t, acct.ts, acct.cd = math.min(r, acct.rpm), math.min(t, acct.tpm), ts, cd
  redis.call('ZREMRANGEBYSCORE', acct.leases, '-inf', now)
  if acct.slots > 0 then
    acct.free = acct.slots - redis.call('ZCARD', acct.leases)
  else
    acct.free = math.huge
  end
  if cd <= now then
    free_r = free_r + math.max(0, acct.r)
    free_t = free_t + math.max(0, acct.t)
    free_s = free_s + math.max(0, acct.free)
  end
  accounts[i] = acct
end

local blocked = false
if #ahead_ids > AHEAD_LIMIT then
  blocked = true
elseif #ahead_ids > 0 then
  local need = #ahead_ids + 1
  blocked = free_r < need or free_s < need or free_t < ahead_tokens + tokens
end

-- The best account that fits: 0.3 RPM left + 0.3 TPM left + 0.4 health, times weight.
local best, best_score = nil, -math.huge
if not blocked then
  for _, acct in ipairs(accounts) do
    if acct.cd <= now and acct.free >= 1 and acct.r >= 1 and acct.t >= tokens then
      local score = acct.weight * (0.3 * math.max(0, acct.r) / acct.rpm
        + 0.3 * math.max(0, acct.t) / acct.tpm + 0.4 * acct.health)
      if score > best_score then best, best_score = acct, score end
    end
  end
end

if best ~= nil then
  -- A bucket taken off capacity also gives up what the upstream refills only once the request
  -- reaches it (buckets.py, UPSTREAM_LAG_S).
  local r, t = best.r - 1, best.t - tokens
  if best.r >= best.rpm then r = r - lag * best.rpm / WINDOW end
  if best.t >= best.tpm then t = t - lag * best.tpm / WINDOW end
  -- Numbers go to Redis as numbers: Redis keeps every digit (Lua's tostring keeps only 14).
  redis.call('HSET', best.key, 'r', r, 't', t, 'ts', best.ts)
  redis.call('PEXPIRE', best.key, math.ceil((math.max(0, best.cd - now) + 2 * WINDOW) * 1000))
  redis.call('ZADD', best.leases, now + lease_ttl, ticket)
  redis.call('PEXPIRE', best.leases, math.ceil(2 * lease_ttl * 1000))
  if queued then
    redis.call('ZREM', KEYS[1], ticket)
    redis.call('ZREM', KEYS[2], ticket)
    redis.call('HDEL', KEYS[3], ticket)
    if redis.call('ZCARD', KEYS[1]) > 0 then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
  end
  return {1, best.name}
end

redis.call('ZADD', KEYS[1], rank, ticket)
redis.call('ZADD', KEYS[2], now + ticket_ttl, ticket)
redis.call('HSET', KEYS[3], ticket, tokens)
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], math.ceil(2 * ticket_ttl * 1000)) end

if blocked then return {0, 'queue', POLL_MS, string.format('%.17g', rank)} end
local wait, reason = math.huge, 'capacity'
for _, acct in ipairs(accounts) do
  local w, why
  if acct.cd > now then
    w, why = acct.cd - now, 'cooldown'
  elseif acct.free < 1 then
    w, why = POLL_MS / 1000, 'concurrency'
  else
    w = 0
    if acct.r < 1 then w = (1 - acct.r) * WINDOW / acct.rpm end
    if acct.t < tokens then
      if tokens > acct.tpm then w = math.huge else w = math.max(w, (tokens - acct.t) * WINDOW / acct.tpm) end
    end
    why = 'capacity'
  end
  if w < wait then wait, reason = w, why end
end
if wait == math.huge then wait = 3600 end
return {0, reason, math.ceil(wait * 1000), string.format('%.17g', rank)}
