-- Waiters that left unserved (their deadline passed, their client went away): drop their tickets, each
-- giving its client's place back (fair.lua).
--
-- KEYS[1] queue ZSET  KEYS[2] ticket expiry ZSET  KEYS[3] ticket cost HASH
-- KEYS[4] the model's fair-share HASH  KEYS[5] the model's places HASH
-- KEYS[3+3i], KEYS[4+3i], KEYS[5+3i]: account i's HASH, lease ZSET and window ZSET
-- ARGV[1] wake channel  ARGV[2] model  ARGV[3] now ('' = TIME)  ARGV[4] the accounts' tag ('' none:
-- keys.accounts_tag)  ARGV[5] the number n of accounts (those of the waiters' requests)
-- ARGV[5+i] account i (see limits() in rule.lua)  ARGV[6+n...] the tickets
-- A new head is named (queue.lua), with its wait on the accounts (exact if they are its own; now if
-- there are none).

local n = tonumber(ARGV[5])
local now, accounts = 0, nil
if n > 0 then
  now, accounts = clock(ARGV[3]), {}
  for i = 1, n do
    local a = limits(ARGV[5 + i], KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i])
    load(a, now)
    refresh(a, now)
    accounts[i] = a
  end
end
local tag = ARGV[4]
if tag == '' then tag = nil end
local head0 = queue_head(KEYS[1])
local tickets = {unpack(ARGV, 6 + n)}
for _, ticket in ipairs(tickets) do fair_give_back(KEYS[4], KEYS[5], ticket) end
redis.call('ZREM', KEYS[1], unpack(tickets))
redis.call('ZREM', KEYS[2], unpack(tickets))
redis.call('HDEL', KEYS[3], unpack(tickets))
local function drop(id)
  fair_give_back(KEYS[4], KEYS[5], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
if queue_head(KEYS[1]) ~= head0 then
  name_queue_head(KEYS[1], KEYS[3], ARGV[1], ARGV[2], accounts, now, nil, tag, drop)
end
return #tickets
