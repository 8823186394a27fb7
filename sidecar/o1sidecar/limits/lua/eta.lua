-- When could this waiter be admitted? queue_eta (queue.lua) on the accounts as they stand. Reads only.
--
-- KEYS[1] queue ZSET  KEYS[2] ticket cost HASH
-- KEYS[3i], KEYS[3i+1], KEYS[3i+2]: account i's HASH, lease ZSET and window ZSET
-- ARGV[1] now ('' = TIME)  ARGV[2] ticket  ARGV[3] "tokens;rank;priority;aging_s" (rank '' = rank it
-- now, as admit.lua would)  ARGV[3+i] account i
-- Returns the seconds as a string.

local now = clock(ARGV[1])
local ticket = ARGV[2]
local params = split(ARGV[3])
local tokens = tonumber(params[1])
local rank = tonumber(redis.call('ZSCORE', KEYS[1], ticket)) or tonumber(params[2])
if rank == nil then rank = now - tonumber(params[3]) * tonumber(params[4]) end
local accounts = {}
for i = 1, #ARGV - 3 do
  local a = limits(ARGV[3 + i], KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2])
  load(a, now)
  refresh(a, now)
  accounts[i] = a
end
local eta = queue_eta(KEYS[1], KEYS[2], ticket, rank, accounts, tokens, now)
if eta == math.huge then return 'inf' end
return num(eta)
