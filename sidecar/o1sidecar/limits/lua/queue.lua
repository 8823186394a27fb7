-- The queue of one model, as the scripts share it: its head, naming the head on the wake channel, and
-- when a waiter could be admitted (queueing.py). rule.lua is loaded before this file.

local QUEUE_AHEAD_LIMIT = 64  -- the cost of this many waiters ahead is read exactly, the rest averaged
local NAME_MAX_WAIT = 60.0

-- The best-ranked ticket of the queue, or nil.
local function queue_head(queue)
  return redis.call('ZRANGE', queue, 0, 0)[1]
end

-- The soonest any of ``accounts`` (loaded and refreshed) admits ``tokens`` by the rule (check).
local function soonest(accounts, tokens, now)
  local best = math.huge
  for _, a in ipairs(accounts) do
    local block, wait = check(a, tokens, now)
    if block == nil then return 0.0 end
    if wait < best then best = wait end
  end
  return best
end

-- Tell the sidecar holding ``head`` that it may be admitted in ``wait`` seconds: only that sidecar
-- tries, at that time ("<model>;<ticket>;<wait ms>"). The waiters behind it are named in turn. An
-- ``exact`` wait ("+<wait ms>") is the soonest on every account the head may use: the sidecar then
-- waits that long even if it was told sooner before (capacity taken since); another wait is the soonest
-- on some of them only, an upper bound, and the sidecar keeps the sooner of the two.
-- A ticket "<sidecar>.<id>" is named on that sidecar's own channel, "<channel>:<sidecar>" (keys.py
-- wake_channel_of): one subscriber, where the pool's channel reaches every sidecar of the pool (with
-- 1,000 sidecars, 1,000 messages a naming, all but one discarded: docs/scale.md). A ticket without a
-- sidecar (of an older sidecar) is named on the pool's channel, which every sidecar also hears.
local function name_head(channel, model, head, wait, exact)
  wait = math.min(math.max(0.0, wait), NAME_MAX_WAIT)  -- (a shorter wait is still a lower bound)
  local dot = string.find(head, '.', 1, true)
  if dot ~= nil then channel = channel .. ':' .. string.sub(head, 1, dot - 1) end
  local ms = tostring(math.ceil(wait * 1000))
  if exact then ms = '+' .. ms end
  redis.call('PUBLISH', channel, model .. ';' .. head .. ';' .. ms)
end

-- Tell the sidecar holding ``ticket``, the head until now, that it waits behind another again: it is
-- named when its turn comes back, and waits ``wait`` seconds at most meanwhile (a safety net), not the
-- time it was named with ("<model>;<ticket>;+<wait ms>;behind"; a sidecar of an older release reads
-- the wait as 0, asks, and is told the same).
local function name_behind(channel, model, ticket, wait)
  local dot = string.find(ticket, '.', 1, true)
  if dot ~= nil then channel = channel .. ':' .. string.sub(ticket, 1, dot - 1) end
  redis.call('PUBLISH', channel, model .. ';' .. ticket .. ';+' .. math.ceil(wait * 1000) .. ';behind')
end

-- The accounts a ticket's request may use, as the tag in its id ("<sidecar>.<accounts tag>:<deadline
-- ms>:<id>"; keys.accounts_tag), or nil (a ticket of an older sidecar).
local function ticket_accounts(ticket)
  return string.match(ticket, '^[^.]*%.(%x+):')
end

-- The deadline of a ticket's request, from its id (seconds, server time), or nil (none, or a ticket of
-- an older sidecar).
local function ticket_deadline(ticket)
  local ms = string.match(ticket, '^[^.]*%.%x+:(%d+):')
  if ms == nil then return nil end
  return tonumber(ms) / 1000
end

local DOOMED_LIMIT = 16  -- heads past their deadline dropped in one naming, at most

-- Name the queue's head, if it has one other than ``unless``, with its wait on ``accounts`` (nil: now),
-- exact if ``accounts`` (tagged ``tag``) are the head's. A head whose exact wait ends past its request's
-- deadline cannot be served: with ``drop`` (which takes a ticket out of the queue) it is dropped and
-- told it is behind until its deadline (so its sidecar neither asks nor drops it), and the next named:
-- one call less than its sidecar dropping it when the deadline comes.
local function name_queue_head(queue, costs, channel, model, accounts, now, unless, tag, drop)
  for _ = 1, DOOMED_LIMIT do
    local head = queue_head(queue)
    if head == nil or head == unless then return end
    local wait = 0.0
    if accounts ~= nil then wait = soonest(accounts, tonumber(redis.call('HGET', costs, head)) or 0, now) end
    local exact = accounts ~= nil and tag ~= nil and ticket_accounts(head) == tag
    local deadline = ticket_deadline(head)
    if not exact or drop == nil or deadline == nil or deadline >= now + wait then
      name_head(channel, model, head, wait, exact)
      return
    end
    drop(head)
    name_behind(channel, model, head, deadline - now + 1.0)
  end
end

-- The waiters ranked ahead of ``ticket`` of rank ``rank`` (better rank, or the same and a smaller ticket
-- id): how many, and what they cost (the first QUEUE_AHEAD_LIMIT exactly, the rest at their average).
-- Reads only.
local function queue_ahead(queue, costs, ticket, rank)
  local ahead = redis.call('ZCOUNT', queue, '-inf', '(' .. num(rank))
  local ids = {}
  local near = redis.call('ZRANGEBYSCORE', queue, '-inf', rank, 'WITHSCORES', 'LIMIT', 0, QUEUE_AHEAD_LIMIT)
  for i = 1, #near, 2 do
    local id, score_ = near[i], tonumber(near[i + 1])
    if id ~= ticket and (score_ < rank or id < ticket) then ids[#ids + 1] = id end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', queue, rank, rank)) do
    if id < ticket then ahead = ahead + 1 end
  end
  local ahead_tokens = 0
  if #ids > 0 then
    for _, cost in ipairs(redis.call('HMGET', costs, unpack(ids))) do
      ahead_tokens = ahead_tokens + (tonumber(cost) or 0)
    end
    ahead_tokens = ahead_tokens * ahead / #ids
  end
  return ahead, ahead_tokens
end

-- When could a request of ``tokens`` be admitted behind ``ahead`` waiters costing ``ahead_tokens``? Its
-- best account's wait (check), plus those waiters at the accounts' effective rate.
local function eta_behind(accounts, tokens, now, ahead, ahead_tokens)
  local base, rate_r, rate_t = math.huge, 0.0, 0.0
  for _, a in ipairs(accounts) do
    local _, wait = check(a, tokens, now)
    if wait < base then base = wait end
    local er, et = effective(a)
    rate_r = rate_r + er / MINUTE
    rate_t = rate_t + et / MINUTE
  end
  if #accounts == 0 then return math.huge end
  return base + math.max(ahead / rate_r, ahead_tokens / rate_t)
end

-- When could the waiter ``ticket`` of rank ``rank`` be admitted? (queue_ahead, eta_behind) Reads only.
local function queue_eta(queue, costs, ticket, rank, accounts, tokens, now)
  local ahead, ahead_tokens = queue_ahead(queue, costs, ticket, rank)
  return eta_behind(accounts, tokens, now, ahead, ahead_tokens)
end
