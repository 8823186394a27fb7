-- Waiters that left unserved (their deadline passed, their client went away): drop their tickets, each
-- giving its client's place back (fair.lua).
--
-- KEYS[1] queue ZSET  KEYS[2] ticket expiry ZSET  KEYS[3] ticket cost HASH
-- KEYS[4] the model's fair-share HASH  KEYS[5] the model's places HASH
-- ARGV: the tickets

for _, ticket in ipairs(ARGV) do fair_give_back(KEYS[4], KEYS[5], ticket) end
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('ZREM', KEYS[2], unpack(ARGV))
redis.call('HDEL', KEYS[3], unpack(ARGV))
return #ARGV
