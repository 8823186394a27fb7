-- When could this waiter be admitted? Its best account's wait by the rule (rule.lua check), plus the
-- waiters ranked ahead of it at the accounts' effective rate. Reads only.
--
-- KEYS[1] queue ZSET  KEYS[2] ticket cost HASH
-- KEYS[3i], KEYS[3i+1], KEYS[3i+2]: account i's HASH, lease ZSET and window ZSET
-- ARGV[1] now ('' = TIME)  ARGV[2] ticket  ARGV[3] "tokens;rank;priority;aging_s" (rank '' = rank it
-- now, as admit.lua would)  ARGV[3+i] account i
-- Returns the seconds as a string.

local AHEAD_LIMIT = 64

local now = clock(ARGV[1])
local ticket = ARGV[2]
local params = split(ARGV[3])
local tokens = tonumber(params[1])
local rank = tonumber(redis.call('ZSCORE', KEYS[1], ticket)) or tonumber(params[2])
if rank == nil then rank = now - tonumber(params[3]) * tonumber(params[4]) end
local n = #ARGV - 3

-- Waiters ahead: better rank, or the same rank and a smaller ticket id. Their cost: the first
-- AHEAD_LIMIT exactly, the rest at the same average.
local ahead = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. num(rank))
local ids = {}
local near = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', rank, 'WITHSCORES', 'LIMIT', 0, AHEAD_LIMIT)
for i = 1, #near, 2 do
  local id, score_ = near[i], tonumber(near[i + 1])
  if id ~= ticket and (score_ < rank or id < ticket) then ids[#ids + 1] = id end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], rank, rank)) do
  if id < ticket then ahead = ahead + 1 end
end
local ahead_tokens = 0
if #ids > 0 then
  for _, cost in ipairs(redis.call('HMGET', KEYS[2], unpack(ids))) do
    ahead_tokens = ahead_tokens + (tonumber(cost) or 0)
  end
  ahead_tokens = ahead_tokens * ahead / #ids
end

local base, rate_r, rate_t = math.huge, 0.0, 0.0
for i = 1, n do
  local a = limits(ARGV[3 + i], KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2])
  load(a, now)
  refresh(a, now)
  local _, wait = check(a, tokens, now)
  if wait < base then base = wait end
  local er, et = effective(a)
  rate_r = rate_r + er / MINUTE
  rate_t = rate_t + et / MINUTE
end
if n == 0 then return 'inf' end
return num(base + math.max(ahead / rate_r, ahead_tokens / rate_t))
