-- A sidecar's heartbeat: say this sidecar is alive, renew the concurrency leases and queue tickets
-- it holds, and read back the live sidecar count and every account+model's usage, effective limits
-- and request caps left (rule.lua, in memory: nothing of an account's state is written).
--
-- KEYS[1] sidecar ZSET (sidecar id -> last seen)
-- then per model m: its ticket expiry ZSET, queue ZSET, ticket cost HASH and places HASH (the model's
--   queue lives as long as a ticket in it does: a waiter asks only when its turn comes, so the queue
--   may see no new ticket for longer than its keys' TTL);
-- then per account+model p: its HASH, lease ZSET, window ZSET
-- ARGV: now ('' = TIME), sidecar id, seconds a sidecar counts as live after its last heartbeat
--       (config.RedisConfig.live_for_s), lease ttl s, ticket ttl s,
--       number of models, then per model: number of tickets, then per ticket its id and its request's
--       deadline ('' none: a ticket expires at its deadline, if its sidecar does not stop sooner),
--       number of pairs, then per pair: the account (limits() in rule.lua), number of leases, lease ids...
--       then, if the pool's sync rides along (poolsync.py), its keys and arguments (sync.lua).
-- Returns {live sidecars, now, then per pair: requests used ratio, tokens used ratio, effective RPM,
--          effective TPM, daily left, monthly left ('' = no cap); then the sync's reply, if any} (numbers
--          as strings).

local now = clock(ARGV[1])
local stale, lease_ttl, ticket_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * stale)
redis.call('PEXPIRE', KEYS[1], math.ceil(20 * stale * 1000))
local live = redis.call('ZCOUNT', KEYS[1], '(' .. (now - stale), '+inf')

local i, k = 6, 1
local models = tonumber(ARGV[i])
for _ = 1, models do
  local count = tonumber(ARGV[i + 1])
  for j = 1, count do
    local deadline = tonumber(ARGV[i + 2 * j + 1]) or math.huge
    redis.call('ZADD', KEYS[k + 1], 'XX', math.min(now + ticket_ttl, deadline), ARGV[i + 2 * j])
  end
  for key = k + 1, k + 4 do redis.call('PEXPIRE', KEYS[key], math.ceil(2 * ticket_ttl * 1000)) end
  k = k + 4
  i = i + 1 + 2 * count
end

local out = {live, num(now)}
i = i + 1
local pairs_n = tonumber(ARGV[i])
for _ = 1, pairs_n do
  local a = limits(ARGV[i + 1], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3])
  k = k + 3
  local count = tonumber(ARGV[i + 2])
  for j = 1, count do
    redis.call('ZADD', a.leases, 'XX', now + lease_ttl, ARGV[i + 2 + j])
  end
  if count > 0 then redis.call('PEXPIRE', a.leases, math.ceil(2 * lease_ttl * 1000)) end
  i = i + 2 + count
  load(a, now)
  refresh(a, now)
  local er, et = effective(a)
  local daily, monthly = '', ''
  if a.daily > 0 then daily = num(math.max(0, a.daily - a.dc)) end
  if a.monthly > 0 then monthly = num(math.max(0, a.monthly - a.mc)) end
  out[#out + 1] = num(a.wn / a.rpm)
  out[#out + 1] = num(a.wt / a.tpm)
  out[#out + 1] = num(er)
  out[#out + 1] = num(et)
  out[#out + 1] = daily
  out[#out + 1] = monthly
end
if #KEYS > k then out[#out + 1] = pool_sync(k + 1, i + 1) end  -- (the pool's sync, if it rides along)
return out
