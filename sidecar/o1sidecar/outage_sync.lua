-- A model's outage state for the whole pool (outage_sync.py), on Redis time.
-- KEYS[1] the pool's HASH of models not up: model -> "phase;since;probe_at;step_s" (seconds)
-- KEYS[2] the model's probe lock
-- ARGV[1] 'set' or 'probe'  ARGV[2] model
-- set:   ARGV[3] phase ('up' deletes the entry)  ARGV[4] since, seconds ago  ARGV[5] probe_at, seconds
--        from now  ARGV[6] seconds to keep the entry  ARGV[7] a ramp step's seconds. Returns 1.
-- probe: ARGV[3] milliseconds the probe holds the lock. Returns 1 if the caller is the probe.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if ARGV[1] == 'probe' then
  if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return 1 end
  return 0
end
if ARGV[3] == 'up' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  return 1
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3] .. ';' .. string.format('%.3f', now - tonumber(ARGV[4])) .. ';' ..
  string.format('%.3f', now + tonumber(ARGV[5])) .. ';' .. string.format('%.3f', tonumber(ARGV[7])))
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[6]) * 1000))
return 1
