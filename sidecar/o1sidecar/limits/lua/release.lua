-- Release one grant: free its concurrency lease and reconcile the account+model with what the
-- upstream said (usage beyond the charge, lower remaining counts, a 429 cooldown that only extends).
--
-- KEYS[1] account HASH (r, t, ts, cd)   KEYS[2] lease ZSET   KEYS[3] the model's queue ZSET
-- ARGV[1] now ('' = TIME)  ARGV[2] lease id  ARGV[3] wake channel  ARGV[4] model
-- ARGV[5] "rpm;tpm;extra tokens;remaining requests;remaining tokens;seconds since admission;
--          cooldown seconds" ('' = unknown / none)
-- Returns 1 if the lease was still held, else 0.

local WINDOW = 60.0

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local f = {}
for part in string.gmatch(ARGV[5] .. ';', '([^;]*);') do f[#f + 1] = part end
local rpm, tpm = tonumber(f[1]), tonumber(f[2])
local extra = tonumber(f[3])
local rem_req, rem_tok, cooldown = f[4], f[5], f[7]
local elapsed = math.max(0, tonumber(f[6]))

local held = redis.call('ZREM', KEYS[2], ARGV[2])

local changed = extra > 0 or rem_req ~= '' or rem_tok ~= '' or cooldown ~= ''
if changed then
  local h = redis.call('HMGET', KEYS[1], 'r', 't', 'ts', 'cd')
  local r, t = tonumber(h[1]) or rpm, tonumber(h[2]) or tpm
  local ts, cd = tonumber(h[3]) or now, tonumber(h[4]) or 0
  if now > ts then
    r = math.min(rpm, r + (now - ts) * rpm / WINDOW)
    t = math.min(tpm, t + (now - ts) * tpm / WINDOW)
    ts = now
  end
  if extra > 0 then t = math.max(-tpm, t - extra) end
  if rem_req ~= '' then
    local upstream = math.min(rpm, tonumber(rem_req) + elapsed * rpm / WINDOW)
    if upstream < r then r = math.max(-rpm, upstream) end
  end
  if rem_tok ~= '' then
    local upstream = math.min(tpm, tonumber(rem_tok) + elapsed * tpm / WINDOW)
    if upstream < t then t = math.max(-tpm, upstream) end
  end
  if cooldown ~= '' then cd = math.max(cd, now + tonumber(cooldown)) end
  redis.call('HSET', KEYS[1], 'r', r, 't', t, 'ts', ts, 'cd', cd)
  redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(0, cd - now) + 2 * WINDOW) * 1000))
end

if redis.call('ZCARD', KEYS[3]) > 0 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return held
