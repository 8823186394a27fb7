-- What a sidecar exchanges with the pool every interval (poolsync.py): it adds its counters (demand.py,
-- spend.py) and reads the pool's refused keys (quarantine.py), model outages (outage_sync.py) and
-- prediction (prediction.py), with the clock of the server that holds them (the entries carry times on
-- that clock). All keys carry the pool's hash tag: one cluster slot. Run by the limiter's heartbeat
-- (heartbeat.lua, after its own keys and arguments) or on its own (pool_sync.lua).
--
-- From KEYS[k] on, one key per operation; from ARGV[a] on, for each operation in turn: its kind, then
--   'add':  the HASH's TTL in seconds, the number n of its fields, then n pairs field, increment;
--   'hash': nothing (HGETALL);  'get': nothing (GET; '' when absent).
-- Returns {TIME's reply, then per operation: 'add' the fields' new values in order, 'hash' its fields
--   and values (flat), 'get' the value}.
local function pool_sync(k, a)
  local out = {redis.call('TIME')}
  for i = k, #KEYS do
    local kind = ARGV[a]
    a = a + 1
    if kind == 'add' then
      local ttl, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
      a = a + 2
      local values = {}
      for _ = 1, n do
        values[#values + 1] = redis.call('HINCRBY', KEYS[i], ARGV[a], ARGV[a + 1])
        a = a + 2
      end
      redis.call('EXPIRE', KEYS[i], ttl)
      out[#out + 1] = values
    elseif kind == 'hash' then
      out[#out + 1] = redis.call('HGETALL', KEYS[i])
    elseif kind == 'get' then
      out[#out + 1] = redis.call('GET', KEYS[i]) or ''
    else
      return redis.error_reply('sync.lua: unknown operation ' .. tostring(kind))
    end
  end
  return out
end
