-- A sidecar's heartbeat: say this sidecar is alive, renew the concurrency leases and queue tickets
-- it holds, and read back the live sidecar count and every account+model's usage.
--
-- KEYS[1] sidecar ZSET (sidecar id -> last seen)
-- then per model m: its ticket expiry ZSET;  then per account+model p: its HASH and its lease ZSET
-- ARGV: now ('' = TIME), sidecar id, heartbeat interval s, lease ttl s, ticket ttl s,
--       number of models, then per model: number of tickets, ticket ids...,
--       number of pairs, then per pair: rpm, tpm, number of leases, lease ids...
-- Returns {live sidecars, now, then per pair: requests used ratio, tokens used ratio (strings)}.

local WINDOW = 60.0

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local interval, lease_ttl, ticket_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local stale = 3 * interval

redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * stale)
redis.call('PEXPIRE', KEYS[1], math.ceil(20 * stale * 1000))
local live = redis.call('ZCOUNT', KEYS[1], '(' .. (now - stale), '+inf')

local a, k = 6, 1
local models = tonumber(ARGV[a])
for _ = 1, models do
  k = k + 1
  local count = tonumber(ARGV[a + 1])
  for j = 1, count do
    redis.call('ZADD', KEYS[k], 'XX', now + ticket_ttl, ARGV[a + 1 + j])
  end
  a = a + 1 + count
end

local out = {live, string.format('%.17g', now)}
a = a + 1
local pairs_n = tonumber(ARGV[a])
for _ = 1, pairs_n do
  local rpm, tpm, count = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local key, leases = KEYS[k + 1], KEYS[k + 2]
  k = k + 2
  for j = 1, count do
    redis.call('ZADD', leases, 'XX', now + lease_ttl, ARGV[a + 3 + j])
  end
  if count > 0 then redis.call('PEXPIRE', leases, math.ceil(2 * lease_ttl * 1000)) end
  a = a + 3 + count
  local h = redis.call('HMGET', key, 'r', 't', 'ts')
  local r, t, ts = tonumber(h[1]) or rpm, tonumber(h[2]) or tpm, tonumber(h[3]) or now
  if now > ts then
    r = math.min(rpm, r + (now - ts) * rpm / WINDOW)
    t = math.min(tpm, t + (now - ts) * tpm / WINDOW)
  end
  out[#out + 1] = tostring((rpm - r) / rpm)
  out[#out + 1] = tostring((tpm - t) / tpm)
end
return out
