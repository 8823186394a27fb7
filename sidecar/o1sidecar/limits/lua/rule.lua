-- The admission rule of one account+model: the same rule as limits/rule.py, function by function
-- (refresh, check, free, headroom, admit, settle), on state kept in Redis. scripts.py loads this file
-- in front of every script. A property test drives this and rule.py with the same operations and
-- compares every decision and every field.
--
-- Per account+model: a HASH (the fields of rule.AccountModel under the same names), a lease ZSET
-- (lease -> expires at) and a window ZSET ("tokens:lease" -> admitted at).

local MINUTE = 60.0
local WINDOW = 60.1  -- MINUTE + the upstream's lag
local PROBE_HOLD = 2.0
local POLL = 0.25
local BASE_BACKOFF = 0.5
local TOKEN_LIMIT_FACTOR = 2.0
local FIRST_CUT = 0.01
local MAX_CUT = 0.5
local ESTIMATE_MARGIN = 0.98
local ESTIMATE_MIN_SHARE = 0.5
local ESTIMATE_SPAN = 57.0
local PROBES_TO_ESTIMATE = 2
local IN_A_ROW_REQUESTS = 10
local RECOVER = 20.0
local RAISE_PER_MIN = 0.05
local RAISE_NEAR_PER_MIN = 0.001
local NEAR_LOW, NEAR_HIGH = 0.99, 1.01
local PRESSURE = 0.9
local MIN_FACTOR = 0.01
local CALIBRATE_MIN_SHARE = 0.02
local CALIBRATE_SLACK = 1.1
local PER_MINUTE_RESET = 0.9
local WALK_LIMIT = 64
local DAY = 86400.0
local NEVER = -1e18
local STATE_TTL = 3600.0
local SLOW_START = 60.0
local SLOW_START_FROM = 0.5
local SLOW_START_LOOKBACK = 5.0
local SLOW_START_GRACE = 10.0

local FIELDS = {'r', 't', 'ts', 'bt', 'ss', 'fr', 'ft', 'hr', 'ht', 'ra', 'cd', 'es', 'en', 'cn', 'mr', 'mt',
                'pn', 'pl', 'pu', 'wn', 'wt', 'day', 'dc', 'month', 'mc'}

local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local function split(packed)
  local out = {}
  for part in string.gmatch(packed .. ';', '([^;]*);') do out[#out + 1] = part end
  return out
end

local function num(x) return string.format('%.17g', x) end

-- Calendar (UTC): days since 1970-01-01 <-> year, month (H. Hinnant's civil algorithms).
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5)
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function day_index(now) return math.floor(now / DAY) end

local function month_index(now)
  local y, m = civil(math.floor(now / DAY))
  return y * 12 + m - 1
end

local function next_day(now) return (day_index(now) + 1) * DAY - now end

local function next_month(now)
  local y, m = civil(math.floor(now / DAY))
  if m == 12 then y, m = y + 1, 1 else m = m + 1 end
  return days_from_civil(y, m) * DAY - now
end

local function capacity(e, burst) return math.max(1.0, e * burst / MINUTE) end

-- rule.slow_start_share
local function slow_start_share(ends, now)
  if now >= ends then return 1.0 end
  return 1.0 - (1.0 - SLOW_START_FROM) * (ends - now) / SLOW_START
end

-- rule.paced_s
local function paced_s(ends, since, now)
  local gone = math.max(0.0, ends - since) ^ 2 - math.max(0.0, ends - now) ^ 2
  return (now - since) - (1.0 - SLOW_START_FROM) * gone / (2.0 * SLOW_START)
end

local function effective(a)
  local g = 1.0
  if a.adaptive then g = slow_start_share(a.ss, a.ts) end
  return math.max(1.0, a.fr * g * a.rpm), math.max(1.0, a.ft * g * a.tpm)
end

local function ceilings(a)
  local cr, ct = 1.0, 1.0
  if a.hr > 0 then cr = math.min(1.0, a.hr / a.rpm) end
  if a.ht > 0 then ct = math.min(1.0, a.ht / a.tpm) end
  return cr, ct
end

-- An account as the scripts pass it: "name;rpm;tpm;slots;weight;health;burst_s;adaptive;daily;monthly;
-- max_cooldown_s" (slots, daily, monthly 0 = none; adaptive 1/0), with its three keys.
local function limits(packed, key, leases, window)
  local f = split(packed)
  return {
    name = f[1], rpm = tonumber(f[2]), tpm = tonumber(f[3]), slots = tonumber(f[4]), weight = tonumber(f[5]),
    health = tonumber(f[6]), burst = tonumber(f[7]), adaptive = f[8] == '1', daily = tonumber(f[9]),
    monthly = tonumber(f[10]), max_cooldown = tonumber(f[11]), key = key, leases = leases, window = window,
  }
end

-- Load the account's state; a missing hash (or field) is rule.new_state's.
local function load(a, now)
  local h = redis.call('HMGET', a.key, unpack(FIELDS))
  local function n(i, default) return tonumber(h[i]) or default end
  a.fr, a.ft, a.ss = n(6, 1.0), n(7, 1.0), n(5, 0.0)
  local er, et = math.max(1.0, a.fr * a.rpm), math.max(1.0, a.ft * a.tpm)
  a.r, a.t, a.ts, a.bt = n(1, capacity(er, a.burst)), n(2, capacity(et, a.burst)), n(3, now), n(4, 0.0)
  a.hr, a.ht, a.ra, a.cd = n(8, 0.0), n(9, 0.0), n(10, 0.0), n(11, 0.0)
  a.es, a.en, a.cn = n(12, NEVER), n(13, 0), n(14, 0)
  a.mr, a.mt = n(15, 1.0), n(16, 1.0)
  a.pn, a.pl, a.pu = n(17, 0), h[18] or '', n(19, 0.0)
  a.wn, a.wt = n(20, 0), n(21, 0.0)
  a.day, a.dc, a.month, a.mc = n(22, -1), n(23, 0), n(24, -1), n(25, 0)
end

-- rule.refresh, in memory: prune() writes what it dropped (aged-out window entries, expired leases).
local function refresh(a, now)
  if now > a.ts then
    local paced = now - a.ts
    if a.adaptive then paced = paced_s(a.ss, a.ts, now) end
    a.r = a.r + paced * math.max(1.0, a.fr * a.rpm) / MINUTE
    a.t = a.t + paced * math.max(1.0, a.ft * a.tpm) / MINUTE
    a.ts = now
  end
  local er, et = effective(a)
  a.r, a.t = math.min(a.r, capacity(er, a.burst)), math.min(a.t, capacity(et, a.burst))
  local old = redis.call('ZRANGEBYSCORE', a.window, '-inf', now - WINDOW)
  for _, member in ipairs(old) do
    a.wn = a.wn - 1
    a.wt = a.wt - tonumber(string.match(member, '^([^:]*)'))
  end
  a.skip = #old  -- entries at the window's start that aged out but are still stored
  if redis.call('ZCARD', a.window) - #old <= 0 then a.wn, a.wt = 0, 0.0 end
  a.inflight = redis.call('ZCOUNT', a.leases, '(' .. num(now), '+inf')
  local day, month = day_index(now), month_index(now)
  if day ~= a.day then a.day, a.dc = day, 0 end
  if month ~= a.month then a.month, a.mc = month, 0 end
end

-- Drop from Redis what refresh() left out: before save() writes the refreshed totals.
local function prune(a, now)
  if a.skip > 0 then
    redis.call('ZREMRANGEBYSCORE', a.window, '-inf', now - WINDOW)
    a.skip = 0
  end
  redis.call('ZREMRANGEBYSCORE', a.leases, '-inf', now)
end

-- The window entries, oldest first, from index ``first`` (0-based) for ``count``: {at, tokens}...
local function entries(a, first, count)
  local raw = redis.call('ZRANGE', a.window, first, first + count - 1, 'WITHSCORES')
  local out = {}
  for i = 1, #raw, 2 do
    out[#out + 1] = {tonumber(raw[i + 1]), tonumber(string.match(raw[i], '^([^:]*)'))}
  end
  return out
end

local function window_wait_requests(a, er, now)
  local excess = math.ceil(a.wn + 1 - er)
  if excess <= 0 then return 0.0 end
  local e = entries(a, a.skip + math.min(excess, a.wn) - 1, 1)
  return math.max(0.0, e[1][1] + WINDOW - now)
end

-- rule._burst_wait
local function burst_wait(a, er, now)
  local most = math.ceil(capacity(er, a.burst))
  if a.wn < most then return 0.0 end
  local e = entries(a, a.skip + a.wn - most, 1)
  return math.max(0.0, e[1][1] + a.burst - now)
end

local function window_wait_tokens(a, et, tokens, now)
  if a.wn == 0 then return 0.0 end
  local excess
  if tokens <= et then excess = a.wt + tokens - et else excess = a.wt end
  if excess <= 0 then return 0.0 end
  local at = now
  for _, e in ipairs(entries(a, a.skip, WALK_LIMIT)) do
    excess = excess - e[2]
    at = e[1]
    if excess <= 0 then break end
  end
  return math.max(0.0, at + WINDOW - now)
end

-- rule.check: nil (admissible) or the longest block and its wait.
local function check(a, tokens, now)
  local er, et = effective(a)
  local reason, wait = nil, -1
  local function block(w, why) if w > wait then wait, reason = w, why end end
  if a.cd > now then block(a.cd - now, 'cooldown') end
  if a.pl ~= '' and a.pu > now then block(a.pu - now, 'cooldown') end
  if a.daily > 0 and a.dc >= a.daily then block(next_day(now), 'quota') end
  if a.monthly > 0 and a.mc >= a.monthly then block(next_month(now), 'quota') end
  if a.slots > 0 and a.inflight >= a.slots then block(POLL, 'concurrency') end
  local need_t = math.min(tokens, capacity(et, a.burst))
  local pace = math.max((1.0 - a.r) * MINUTE / er, (need_t - a.t) * MINUTE / et, 0.0)
  local window = math.max(window_wait_requests(a, er, now), burst_wait(a, er, now),
    window_wait_tokens(a, et, tokens, now))
  if a.r < 1.0 or a.t < need_t or window > 0 then block(math.max(pace, window), 'capacity') end
  if reason == nil then return nil, 0.0 end
  return reason, wait
end

-- rule.free
local function free(a, now)
  if a.cd > now or (a.pl ~= '' and a.pu > now) then return 0.0, 0.0, 0.0 end
  local er, et = effective(a)
  local slots = math.huge
  if a.slots > 0 then slots = math.max(0, a.slots - a.inflight) end
  return math.max(0.0, math.min(a.r, er - a.wn)), math.max(0.0, math.min(a.t, et - a.wt)), slots
end

-- balancing.score over rule.headroom
local function score(a)
  local er, et = effective(a)
  return a.weight * (0.3 * (math.max(0.0, er - a.wn) / er) + 0.3 * (math.max(0.0, et - a.wt) / et)
    + 0.4 * a.health)
end

-- rule.admit
local function admit(a, tokens, lease, now, lease_ttl)
  local er, et = effective(a)
  a.r = math.max(-er, a.r - 1.0)
  a.t = math.max(-et, a.t - tokens)
  redis.call('ZADD', a.window, now, tokens .. ':' .. lease)
  a.wn = a.wn + 1
  a.wt = a.wt + tokens
  local full = burst_wait(a, er, now)
  if full > 0 then a.r = math.min(a.r, 1.0 - full * er / MINUTE) end
  redis.call('ZADD', a.leases, now + lease_ttl, lease)
  redis.call('PEXPIRE', a.leases, math.ceil(2 * lease_ttl * 1000))
  a.dc = a.dc + 1
  a.mc = a.mc + 1
  if a.bt <= 0 then
    a.bt = now
    if a.adaptive and a.ss == 0 and a.hr <= 0 and a.ht <= 0 then a.ss = now + SLOW_START end
  end
  if a.pn == 1 then a.pn, a.pl, a.pu = 0, lease, now + PROBE_HOLD end
end

-- rule._raised: quickly back to just below where the upstream last refused, slowly near it, steadily
-- past it.
local function raised(f, refused_at, elapsed, ceiling)
  local low, high = NEAR_LOW * refused_at, NEAR_HIGH * refused_at
  if low <= f and f < high then
    return math.min(ceiling, f + RAISE_NEAR_PER_MIN * elapsed / MINUTE * ceiling)
  end
  local new = f + RAISE_PER_MIN * elapsed / MINUTE * ceiling
  if f < low then new = math.min(low, math.max(new, low - (low - f) * math.exp(-elapsed / RECOVER))) end
  return math.min(ceiling, new)
end

-- Under pressure (requests waiting, or the window nearly full), successes raise the factors.
local function raise(a, now, waiting)
  local elapsed = 0.0
  if a.ra > 0 then elapsed = math.max(0.0, now - a.ra) end
  a.ra = now
  local er, et = effective(a)
  local cr, ct = ceilings(a)
  if a.fr < cr and (waiting or a.wn >= PRESSURE * er) then a.fr = raised(a.fr, a.mr, elapsed, cr) end
  if a.ft < ct and (waiting or a.wt >= PRESSURE * et) then a.ft = raised(a.ft, a.mt, elapsed, ct) end
end

-- rule._first_minute_over
local function first_minute_over(a, now)
  return a.bt > 0 and now - a.bt >= ESTIMATE_SPAN
end

local function cut_factor(f, factor, held, e, configured)
  local new, refused_at = f * factor, f
  if held >= ESTIMATE_MIN_SHARE * e then
    refused_at = math.min(f, held / configured)
    new = math.min(new, math.max(f * (1.0 - MAX_CUT), ESTIMATE_MARGIN * refused_at))
  end
  return math.max(MIN_FACTOR, new), refused_at
end

-- rule._cut_to_window: probes refused in a row within the pool's first minute on the account.
local function cut_to_window(a, requests, tokens)
  local er, et = effective(a)
  if requests and a.wn >= ESTIMATE_MIN_SHARE * er then a.fr, a.mr = cut_factor(a.fr, 1.0, a.wn, er, a.rpm) end
  if tokens and a.wt >= ESTIMATE_MIN_SHARE * et then a.ft, a.mt = cut_factor(a.ft, 1.0, a.wt, et, a.tpm) end
end

-- In a row: refused again soon after the last cooldown ended, so that cut was not enough. The window
-- estimates the upstream's limit only once the pool has used the account for nearly a minute.
local function cut(a, requests, tokens, now)
  local er, et = effective(a)
  if now - a.cd < IN_A_ROW_REQUESTS * MINUTE / er then a.cn = a.cn + 1 else a.cn = 1 end
  local factor = math.max(1.0 - MAX_CUT, 1.0 - FIRST_CUT * 2.0 ^ (a.cn - 1))
  local full = first_minute_over(a, now)
  local held_r, held_t = 0.0, 0.0
  if full then held_r, held_t = a.wn, a.wt end
  if requests then a.fr, a.mr = cut_factor(a.fr, factor, held_r, er, a.rpm) end
  if tokens then a.ft, a.mt = cut_factor(a.ft, factor, held_t, et, a.tpm) end
end

-- rule._end_slow_start: a 429 within the slow start; the limits stay at the share it had reached.
local function end_slow_start(a, now)
  if a.ss <= now then return false end
  local g = slow_start_share(a.ss, math.max(now - SLOW_START_LOOKBACK, a.ss - SLOW_START))
  a.fr, a.ft, a.ss = math.max(MIN_FACTOR, a.fr * g), math.max(MIN_FACTOR, a.ft * g), now
  return true
end

local function after_429(a, s, admitted_at, probe, now)
  local retry = 0.0
  if s.retry ~= nil and s.retry > 0 then retry = s.retry end
  if s.limit_type == 'concurrency' then
    a.cd = math.max(a.cd, now + math.min(a.max_cooldown, math.max(retry, BASE_BACKOFF)))
    return
  end
  if s.limit_type == 'quota' then
    a.cd = math.max(a.cd, now + a.max_cooldown)
    return
  end
  local requests, tokens = s.limit_type ~= 'tokens', s.limit_type ~= 'requests'
  if admitted_at < a.es then
    a.cd = math.max(a.cd, now + math.min(a.max_cooldown, retry))
  else
    a.en = a.en + 1
    a.es = now
    if a.ss - SLOW_START <= now and now < a.ss - SLOW_START + SLOW_START_GRACE then
      -- the pool's first calls bunch up at the upstream (connections being set up)
    elseif a.adaptive and (end_slow_start(a, now) or not probe) then
      cut(a, requests, tokens, now)
    elseif a.adaptive and a.en > PROBES_TO_ESTIMATE and not first_minute_over(a, now) then
      cut_to_window(a, requests, tokens)
    end
    local factor = 1.0
    if s.limit_type == 'tokens' then factor = TOKEN_LIMIT_FACTOR end
    local backoff = BASE_BACKOFF * factor * 2.0 ^ (a.en - 1)
    a.cd = math.max(a.cd, now + math.min(a.max_cooldown, math.max(retry, backoff)))
    a.pn, a.pl, a.pu = 1, '', 0.0
  end
  -- The refused limit's bucket is empty when the cooldown ends: the pool resumes at the paced rate.
  local er, et = effective(a)
  local rest = math.max(0.0, a.cd - now)
  if requests then a.r = math.min(a.r, math.max(-er, -rest * er / MINUTE)) end
  if tokens then a.t = math.min(a.t, math.max(-et, -rest * et / MINUTE)) end
end

-- rule.upstream_ceiling: the upstream's limit in our units, given what it says it has counted.
local function upstream_ceiling(limit, remaining, reset, held, e)
  if remaining == nil or reset == nil or held < CALIBRATE_MIN_SHARE * e then return limit end
  local used = limit - remaining
  local per_minute = reset >= PER_MINUTE_RESET * used * MINUTE / limit
  if not per_minute or used <= CALIBRATE_SLACK * held then return limit end
  return limit * held / used
end

-- rule.settle; ``s``: lease, outcome, extra, rem_r, rem_t, lim_r, lim_t, elapsed, retry, limit_type,
-- reset_r, reset_t, charged
-- (numbers nil when unknown); ``waiting``: whether requests are queued for the model.
local function settle(a, s, now, waiting)
  redis.call('ZREM', a.leases, s.lease)
  local probe = s.lease == a.pl
  if probe then a.pl, a.pu = '', 0.0 end
  local er0, et0 = effective(a)
  if s.lim_r ~= nil and s.lim_r >= 1 then a.hr = upstream_ceiling(s.lim_r, s.rem_r, s.reset_r, a.wn, er0) end
  if s.lim_t ~= nil and s.lim_t >= 1 then a.ht = upstream_ceiling(s.lim_t, s.rem_t, s.reset_t, a.wt, et0) end
  if (a.hr > 0 or a.ht > 0) and a.ss > now then a.ss = now end
  local cr, ct = ceilings(a)
  a.fr, a.ft = math.min(a.fr, cr), math.min(a.ft, ct)
  local er, et = effective(a)
  if s.extra > 0 then
    a.t = math.max(-et, a.t - s.extra)
    local entry = (s.charged or 0) .. ':' .. s.lease
    local at = redis.call('ZSCORE', a.window, entry)
    if at then
      redis.call('ZREM', a.window, entry)
      redis.call('ZADD', a.window, at, (s.charged + s.extra) .. ':' .. s.lease)
      a.wt = a.wt + s.extra
    end
  end
  local elapsed = math.max(0.0, s.elapsed)
  if s.rem_r ~= nil then
    a.r = math.min(a.r, math.max(-er, math.min(capacity(er, a.burst), s.rem_r + elapsed * er / MINUTE)))
  end
  if s.rem_t ~= nil then
    a.t = math.min(a.t, math.max(-et, math.min(capacity(et, a.burst), s.rem_t + elapsed * et / MINUTE)))
  end
  local admitted_at = now - elapsed
  if s.outcome == 'rate_limited' then
    after_429(a, s, admitted_at, probe, now)
  elseif s.outcome == 'ok' then
    if admitted_at >= a.es then a.en = 0 end
    if a.adaptive then raise(a, now, waiting) end
  end
end

local function save(a, now)
  local values = {}
  for _, f in ipairs(FIELDS) do
    values[#values + 1] = f
    values[#values + 1] = a[f]
  end
  redis.call('HSET', a.key, unpack(values))
  local ttl = math.max(STATE_TTL, a.cd - now)
  if a.monthly > 0 then ttl = math.max(ttl, next_month(now) + DAY)
  elseif a.daily > 0 then ttl = math.max(ttl, next_day(now) + 3600) end
  redis.call('PEXPIRE', a.key, math.ceil(ttl * 1000))
  redis.call('PEXPIRE', a.window, math.ceil(2 * WINDOW * 1000))
end
