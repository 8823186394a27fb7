-- A client's own RPM/TPM limits: caps.py's rule, on a sliding log in Redis. The client's window ZSET
-- holds "tokens:lease" -> admitted at; the pool's client-tokens HASH, client -> tokens in the window.

local CAP_WINDOW = 60.0  -- caps.WINDOW_S
local CAP_WALK = 256  -- caps.WALK_LIMIT

local function cap_tokens_of(member) return tonumber(string.match(member, '^([^:]*)')) end

-- caps.refresh: the calls and tokens left in the window, once those that aged out are dropped.
local function cap_refresh(win, totals, client, now)
  local old = redis.call('ZRANGEBYSCORE', win, '-inf', now - CAP_WINDOW)
  local stored = tonumber(redis.call('HGET', totals, client)) or 0
  local t = stored
  for _, member in ipairs(old) do t = t - cap_tokens_of(member) end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', win, '-inf', now - CAP_WINDOW) end
  local n = redis.call('ZCARD', win)
  if n == 0 then t = 0 end
  if t ~= stored then redis.call('HSET', totals, client, num(t)) end
  return n, t
end

-- caps.wait (rpm, tpm 0 = none)
local function cap_wait(win, n, t, rpm, tpm, tokens, now)
  local out = 0.0
  if rpm > 0 and n + 1 > rpm then
    local need = math.ceil(n + 1 - rpm)
    local e = redis.call('ZRANGE', win, need - 1, need - 1, 'WITHSCORES')
    out = math.max(out, tonumber(e[2]) + CAP_WINDOW - now)
  end
  if tpm > 0 and t + tokens > tpm then
    local excess, at = t + tokens - tpm, now
    local raw = redis.call('ZRANGE', win, 0, CAP_WALK - 1, 'WITHSCORES')
    for i = 1, #raw, 2 do
      excess = excess - cap_tokens_of(raw[i])
      at = tonumber(raw[i + 1])
      if excess <= 0 then break end
    end
    out = math.max(out, at + CAP_WINDOW - now)
  end
  return out
end

local function cap_keep(win, totals)
  redis.call('PEXPIRE', win, math.ceil(2 * CAP_WINDOW * 1000))
  redis.call('PEXPIRE', totals, math.ceil(2 * CAP_WINDOW * 1000))
end

-- caps.admit
local function cap_admit(win, totals, client, t, tokens, lease, now)
  redis.call('ZADD', win, now, tokens .. ':' .. lease)
  redis.call('HSET', totals, client, num(t + tokens))
  cap_keep(win, totals)
end

-- caps.settle (after cap_refresh)
local function cap_settle(win, totals, client, t, lease, charged, extra)
  if extra <= 0 then return end
  local entry = charged .. ':' .. lease
  local at = redis.call('ZSCORE', win, entry)
  if not at then return end
  redis.call('ZREM', win, entry)
  redis.call('ZADD', win, at, (charged + extra) .. ':' .. lease)
  redis.call('HSET', totals, client, num(t + extra))
  cap_keep(win, totals)
end
