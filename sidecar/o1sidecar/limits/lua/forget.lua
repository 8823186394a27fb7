-- Waiters that left unserved (their deadline passed, their client went away): drop their tickets, each
-- giving its client's place back (fair.lua).
--
-- KEYS[1] queue ZSET  KEYS[2] ticket expiry ZSET  KEYS[3] ticket cost HASH
-- KEYS[4] the model's fair-share HASH  KEYS[5] the model's places HASH
-- ARGV[1] wake channel  ARGV[2] model  ARGV[3...] the tickets
-- A new head is named (queue.lua).

local head0 = queue_head(KEYS[1])
local tickets = {unpack(ARGV, 3)}
for _, ticket in ipairs(tickets) do fair_give_back(KEYS[4], KEYS[5], ticket) end
redis.call('ZREM', KEYS[1], unpack(tickets))
redis.call('ZREM', KEYS[2], unpack(tickets))
redis.call('HDEL', KEYS[3], unpack(tickets))
if queue_head(KEYS[1]) ~= head0 then name_queue_head(KEYS[1], KEYS[3], ARGV[1], ARGV[2], nil, 0, nil) end
return #tickets
