-- Release one grant: free its concurrency lease and apply what the upstream said (rule.lua settle:
-- usage beyond the charge, lower remaining counts, the upstream's own limits, a 429's debt, episode,
-- cut, cooldown and probe; successes raise the effective limits back).
--
-- KEYS[1] account HASH   KEYS[2] lease ZSET   KEYS[3] window ZSET   KEYS[4] the model's queue ZSET
-- KEYS[5] the model's ticket cost HASH (the head's cost, to name it with its wait; queue.lua)
-- KEYS[6], KEYS[7] the client's window ZSET and the client-tokens HASH, when the call counted against
--          the client's own limits (caps.lua); ARGV[6] the client
-- ARGV[1] now ('' = TIME)  ARGV[2] wake channel  ARGV[3] model  ARGV[4] the account (limits() in rule.lua)
-- ARGV[5] "lease;outcome;extra tokens;remaining requests;remaining tokens;limit requests;limit tokens;
--          seconds since admission;retry-after seconds;limit type;reset requests s;reset tokens s;
--          charged tokens" ('' = unknown / none)
-- Returns 1 if the lease was still held, else 0.

local now = clock(ARGV[1])
local a = limits(ARGV[4], KEYS[1], KEYS[2], KEYS[3])
local f = split(ARGV[5])
local score = redis.call('ZSCORE', KEYS[2], f[1])
local held = score and 1 or 0
local live = (score and tonumber(score) > now) and 1 or 0  -- (counted in flight by refresh)
load(a, now)
refresh(a, now)
prune(a, now)
settle(a, {
  lease = f[1], outcome = f[2], extra = tonumber(f[3]), rem_r = tonumber(f[4]), rem_t = tonumber(f[5]),
  lim_r = tonumber(f[6]), lim_t = tonumber(f[7]), elapsed = tonumber(f[8]), retry = tonumber(f[9]),
  limit_type = f[10], reset_r = tonumber(f[11]), reset_t = tonumber(f[12]),
  charged = tonumber(f[13]),
}, now, redis.call('ZCARD', KEYS[4]) > 0)
save(a, now)
if #KEYS >= 7 then
  local t = select(2, cap_refresh(KEYS[6], KEYS[7], ARGV[6], now))
  cap_settle(KEYS[6], KEYS[7], ARGV[6], t, f[1], tonumber(f[13]) or 0, tonumber(f[3]) or 0)
end
a.inflight = a.inflight - live
name_queue_head(KEYS[4], KEYS[5], ARGV[2], ARGV[3], {a}, now, nil)
return held
