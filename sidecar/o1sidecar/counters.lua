-- Add to counters in several HASHes of one pool in one call (demand.py, spend.py): what was a pipeline
-- of one HINCRBY per field and an EXPIRE per HASH is one command.
-- KEYS[i]: a HASH of the pool (all keys carry the pool's hash tag: one cluster slot).
-- ARGV, for each KEYS[i] in turn: its TTL in seconds, the number n of its fields, then n pairs
--   field, increment.
-- Returns the new values of every field, in order (a flat list).

local out = {}
local a = 1
for i = 1, #KEYS do
  local ttl, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, n do
    out[#out + 1] = redis.call('HINCRBY', KEYS[i], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('EXPIRE', KEYS[i], ttl)
end
return out
