-- One admission attempt for one request: admit it on the best account, or queue its ticket.
-- Atomic: checks the pool's queue for this model and every candidate account by the rule (rule.lua),
-- then charges the chosen one, all in one step on Redis server time.
--
-- KEYS[1] queue ZSET (ticket -> rank)      KEYS[2] ticket expiry ZSET (ticket -> expires at)
-- KEYS[3] ticket cost HASH (ticket -> tokens)
-- KEYS[1+3i], KEYS[2+3i], KEYS[3+3i]: account i's HASH, lease ZSET and window ZSET
-- KEYS[4+3n] the model's fair-share HASH (f:<client> -> finish, w:<client> -> weight; fairness.py)
-- KEYS[5+3n] the model's HASH of waiting tickets' places (ticket -> "client;worth")
-- KEYS[6+3n], KEYS[7+3n] the client's window ZSET and the client-tokens HASH (caps.lua; only when the
--         client has limits of its own)
-- ARGV[1] now ('' = TIME)  ARGV[2] ticket
-- ARGV[3] "priority;aging_s;tokens;lease_ttl_s;ticket_ttl_s;rank;queue;lease id;client;weight;deadline;
--         client rpm;client tpm;age_s;successor;its priority;its tokens;its age_s;its deadline;
--         accounts tag"
--         (rank '' = rank it now, as of age_s ago; queue 0 = a denied attempt leaves no ticket;
--         client '' = none; deadline, client rpm, client tpm '' = none; successor '' = none: a waiter
--         of the same client its sidecar held back, queued in the same step if this one is admitted;
--         accounts tag: keys.accounts_tag of the accounts below, '' none: the namings this step makes
--         are exact for a head of the same accounts, queue.lua name_head)
-- ARGV[4] wake channel  ARGV[5] model  ARGV[5+i] account i (see limits() in rule.lua)
-- (Fields are packed into few arguments: encoding arguments is most of a call's client-side cost.)
-- Returns {1, account, successor's rank ('' none)} or {0, reason, wait_ms, rank, eta_ms} (eta_ms:
-- queue_eta, when it could be admitted; none for 'client').
--
-- Tickets expire at their request's deadline, or sooner if their sidecar stops refreshing them: a
-- waiter that times out needs no call to leave. Whenever the queue's head changes here, the new head is
-- named on the wake channel with its wait (queue.lua), so only its sidecar tries, and a head this one
-- displaced is told to wait QUEUE_WAIT_MS instead (exactly: it does not try at the time it was named
-- with, when this one goes first); a waiter behind others is told to wait QUEUE_WAIT_MS too, a safety net
-- for a lost message.

local AHEAD_LIMIT = 64
local QUEUE_WAIT_MS = 5000
local now = clock(ARGV[1])
local ticket = ARGV[2]
local params = split(ARGV[3])
local priority, aging, tokens = tonumber(params[1]), tonumber(params[2]), tonumber(params[3])
local lease_ttl, ticket_ttl = tonumber(params[4]), tonumber(params[5])
local enqueue = params[7] ~= '0'
local lease = params[8]
local client, weight = params[9] or '', tonumber(params[10] or '1')
local deadline = tonumber(params[11] or '') or math.huge
local cap_rpm, cap_tpm = tonumber(params[12] or '') or 0, tonumber(params[13] or '') or 0
local joined = now - (tonumber(params[14] or '') or 0)  -- when a request ranked now joined
local successor = params[15] or ''
local tag = params[20]
if tag == '' then tag = nil end
local n = #ARGV - 5
local fair_key, places_key = KEYS[4 + 3 * n], KEYS[5 + 3 * n]
local cap_win, cap_totals = KEYS[6 + 3 * n], KEYS[7 + 3 * n]
local head0 = queue_head(KEYS[1])

-- Tickets of sidecars that stopped refreshing them are dead.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[3], unpack(dead))
  for _, id in ipairs(dead) do fair_give_back(fair_key, places_key, id) end
end

-- A client at its own limit waits outside the queue (holding no one up), its rank kept for its return.
local capped = client ~= '' and (cap_rpm > 0 or cap_tpm > 0)
local cap_n, cap_t = 0, 0
if capped then
  cap_n, cap_t = cap_refresh(cap_win, cap_totals, client, now)
  local wait = cap_wait(cap_win, cap_n, cap_t, cap_rpm, cap_tpm, tokens, now)
  if wait > 0 then
    local kept = tonumber(redis.call('ZSCORE', KEYS[1], ticket))
    if kept ~= nil then
      redis.call('ZREM', KEYS[1], ticket)
      redis.call('ZREM', KEYS[2], ticket)
      redis.call('HDEL', KEYS[3], ticket)
      fair_give_back(fair_key, places_key, ticket)
      if ticket == head0 then name_queue_head(KEYS[1], KEYS[3], ARGV[4], ARGV[5], nil, now, nil) end
    else
      kept = tonumber(params[6]) or (joined - priority * aging)
    end
    return {0, 'client', math.ceil(wait * 1000), num(kept)}
  end
end

-- Every account as it stands now.
local accounts = {}
local free_r, free_t, free_s, rate = 0, 0, 0, 0
for i = 1, n do
  local a = limits(ARGV[5 + i], KEYS[1 + 3 * i], KEYS[2 + 3 * i], KEYS[3 + 3 * i])
  load(a, now)
  refresh(a, now)
  rate = rate + effective(a) / MINUTE
  a.block, a.wait = check(a, tokens, now)
  local fr, ft, fs = free(a, now)
  free_r, free_t, free_s = free_r + fr, free_t + ft, free_s + fs
  accounts[i] = a
end

local rank = tonumber(redis.call('ZSCORE', KEYS[1], ticket))
local queued = rank ~= nil
local start, worth = nil, nil  -- the client's place this request takes (ranked now)
if rank == nil then
  if params[6] ~= '' then
    rank = tonumber(params[6])
  elseif client ~= '' then
    start, worth = fair_place(fair_key, client, weight, rate, joined)
    rank = start - priority * aging
  else
    rank = joined - priority * aging
  end
end

-- Take ``id`` out of the queue, giving its client's place back (a waiter dropped: queue.lua).
local function drop(id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  fair_give_back(fair_key, places_key, id)
end

-- Put ``id`` in the queue at ``rank_``, costing ``cost``, until ``last`` at the latest; with the client's
-- place (start_, worth_) taken, if it has one and it is not past ``last``.
local function join_queue(id, rank_, cost, last, start_, worth_)
  redis.call('ZADD', KEYS[1], rank_, id)
  redis.call('ZADD', KEYS[2], math.min(now + ticket_ttl, last), id)
  redis.call('HSET', KEYS[3], id, cost)
  for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], math.ceil(2 * ticket_ttl * 1000)) end
  if start_ ~= nil and start_ <= last then  -- (a place past its deadline is not taken)
    fair_take(fair_key, client, weight, start_, worth_)
    redis.call('HSET', places_key, id, client .. ';' .. num(worth_))
    redis.call('PEXPIRE', places_key, math.ceil(2 * ticket_ttl * 1000))
  end
end

-- Better-ranked live tickets (ties: the smaller ticket id first).
local ahead_ids = {}
local near = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', rank, 'WITHSCORES', 'LIMIT', 0, AHEAD_LIMIT + 1)
local all_ahead = #near < 2 * (AHEAD_LIMIT + 1)  -- (every ticket ahead is in ``near``...)
for i = 1, #near, 2 do
  local id, score_ = near[i], tonumber(near[i + 1])
  if id == ticket then all_ahead = true end  -- (...also when it reaches this ticket)
  if id ~= ticket and (score_ < rank or id < ticket) then ahead_ids[#ahead_ids + 1] = id end
end
local ahead_tokens = 0
if #ahead_ids > 0 then
  local costs = redis.call('HMGET', KEYS[3], unpack(ahead_ids))
  for i = 1, #costs do ahead_tokens = ahead_tokens + (tonumber(costs[i]) or 0) end
end

local blocked = false
if #ahead_ids > AHEAD_LIMIT then
  blocked = true
elseif #ahead_ids > 0 then
  local need = #ahead_ids + 1
  blocked = free_r < need or free_s < need or free_t < ahead_tokens + tokens
end

-- The best admissible account: 0.3 RPM left + 0.3 TPM left + 0.4 health, times weight.
local best, best_score = nil, -math.huge
if not blocked then
  for _, a in ipairs(accounts) do
    if a.block == nil then
      local s = score(a)
      if s > best_score then best, best_score = a, s end
    end
  end
end

if best ~= nil then
  prune(best, now)
  admit(best, tokens, lease, now, lease_ttl)
  save(best, now)
  best.inflight = best.inflight + 1
  if capped then cap_admit(cap_win, cap_totals, client, cap_t, tokens, lease, now) end
  if start == nil and client ~= '' and redis.call('HEXISTS', places_key, ticket) == 0 then
    start, worth = fair_place(fair_key, client, weight, rate, joined)  -- (admitted holding no place)
  end
  if start ~= nil then fair_take(fair_key, client, weight, start, worth) end
  if queued then
    redis.call('ZREM', KEYS[1], ticket)
    redis.call('ZREM', KEYS[2], ticket)
    redis.call('HDEL', KEYS[3], ticket)
    redis.call('HDEL', places_key, ticket)  -- (served: the place stays taken)
  end
  local successor_rank = ''
  if successor ~= '' then
    local kept = redis.call('ZSCORE', KEYS[1], successor)
    if kept then
      successor_rank = kept
    else
      local s_priority, s_tokens = tonumber(params[16]), tonumber(params[17])
      local s_joined, s_deadline = now - tonumber(params[18]), tonumber(params[19] or '') or math.huge
      local s_start, s_worth = nil, nil
      if client ~= '' then s_start, s_worth = fair_place(fair_key, client, weight, rate, s_joined) end
      local s_rank = (s_start or s_joined) - s_priority * aging
      join_queue(successor, s_rank, s_tokens, s_deadline, s_start, s_worth)
      successor_rank = num(s_rank)
    end
  end
  name_queue_head(KEYS[1], KEYS[3], ARGV[4], ARGV[5], accounts, now, nil, tag, drop)
  return {1, best.name, successor_rank}
end

if enqueue then join_queue(ticket, rank, tokens, deadline, start, worth) end

local head1 = queue_head(KEYS[1])
if head1 ~= head0 then
  name_queue_head(KEYS[1], KEYS[3], ARGV[4], ARGV[5], accounts, now, ticket, tag, drop)
  if head0 ~= nil and head0 ~= ticket and redis.call('ZSCORE', KEYS[1], head0) then
    -- The head it was now waits behind this one: it is named again when its turn comes back (this one
    -- admitted or gone); until then it waits the safety net, not the time it was named with.
    name_behind(ARGV[4], ARGV[5], head0, QUEUE_WAIT_MS / 1000)
  end
end
-- (what is ahead was read above, unless there was more of it than AHEAD_LIMIT)
local ahead, ahead_cost = #ahead_ids, ahead_tokens
if not all_ahead then ahead, ahead_cost = queue_ahead(KEYS[1], KEYS[3], ticket, rank) end
local eta = eta_behind(accounts, tokens, now, ahead, ahead_cost)
if eta == math.huge then eta = 3600 end
local eta_ms = math.ceil(math.min(eta, 86400 * 31) * 1000)
if blocked then return {0, 'queue', QUEUE_WAIT_MS, num(rank), eta_ms} end
local wait, reason = math.huge, 'capacity'
for _, a in ipairs(accounts) do
  if a.wait < wait then wait, reason = a.wait, a.block end
end
if wait == math.huge then wait = 3600 end
return {0, reason, math.ceil(wait * 1000), num(rank), eta_ms}
