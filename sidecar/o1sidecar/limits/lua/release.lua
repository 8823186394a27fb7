-- Release one grant: free its concurrency lease and reconcile the account+model with what the
-- upstream said (usage beyond the charge, lower remaining counts, a 429 cooldown that only extends).
--
-- KEYS[1] account HASH (r, t, ts, cd)   KEYS[2] lease ZSET   KEYS[3] the model's queue ZSET
-- ARGV: now ('' = TIME), lease id, rpm, tpm, extra tokens, remaining requests ('' = unknown),
--       remaining tokens ('' = unknown), seconds since admission, cooldown seconds ('' = none),
--       wake channel, model
-- Returns 1 if the lease was still held, else 0.

local WINDOW = 60.0

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
local extra = tonumber(ARGV[5])
local elapsed = math.max(0, tonumber(ARGV[8]))

local held = redis.call('ZREM', KEYS[2], ARGV[2])

local changed = extra > 0 or ARGV[6] ~= '' or ARGV[7] ~= '' or ARGV[9] ~= ''
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
  if ARGV[6] ~= '' then
    local upstream = math.min(rpm, tonumber(ARGV[6]) + elapsed * rpm / WINDOW)
    if upstream < r then r = math.max(-rpm, upstream) end
  end
  if ARGV[7] ~= '' then
    local upstream = math.min(tpm, tonumber(ARGV[7]) + elapsed * tpm / WINDOW)
    if upstream < t then t = math.max(-tpm, upstream) end
  end
  if ARGV[9] ~= '' then cd = math.max(cd, now + tonumber(ARGV[9])) end
  redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(t), 'ts', tostring(ts), 'cd', tostring(cd))
  redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(0, cd - now) + 2 * WINDOW) * 1000))
end

if redis.call('ZCARD', KEYS[3]) > 0 then redis.call('PUBLISH', ARGV[10], ARGV[11]) end
return held
