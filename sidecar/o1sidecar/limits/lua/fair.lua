-- Fair share between a pool's clients: fairness.py's rule (a virtual clock per model), for admit.lua
-- (places taken) and forget.lua (places given back). The model's fair-share HASH holds f:<client> (the
-- client's finish) and w:<client> (its weight); the places HASH, ticket -> "client;worth".

local FAIR_ACTIVE_S = 10.0  -- fairness.ACTIVE_S
local FAIR_MAX_LEAD_S = 3600.0  -- fairness.MAX_LEAD_S

-- fairness.place: the client's next place (start, worth) at `now`, not yet taken.
local function fair_place(key, client, weight, rate, now)
  local all = redis.call('HGETALL', key)
  local fields = {}
  for i = 1, #all, 2 do fields[all[i]] = all[i + 1] end
  local active, finish = weight, nil
  for name, value in pairs(fields) do
    if string.sub(name, 1, 2) == 'f:' then
      local other = string.sub(name, 3)
      local f = tonumber(value)
      if other == client then
        finish = f
      elseif f ~= nil and f > now - FAIR_ACTIVE_S then
        active = active + (tonumber(fields['w:' .. other]) or 1)
      end
    end
  end
  local start = now
  if finish ~= nil then start = math.min(math.max(finish, now), now + FAIR_MAX_LEAD_S) end
  return start, active / (weight * math.max(rate, 1e-9))
end

-- fairness.taken: the client's finish once a request takes the place.
local function fair_take(key, client, weight, start, worth)
  redis.call('HSET', key, 'f:' .. client, num(start + worth), 'w:' .. client, num(weight))
  redis.call('PEXPIRE', key, 3600000)
end

-- fairness.given_back: a ticket that leaves unserved gives its client's place back.
local function fair_give_back(key, places, ticket)
  local value = redis.call('HGET', places, ticket)
  if not value then return end
  redis.call('HDEL', places, ticket)
  local client, worth = string.match(value, '^(.*);([^;]+)$')
  if client == nil or redis.call('HEXISTS', key, 'f:' .. client) == 0 then return end
  local f = tonumber(redis.call('HGET', key, 'f:' .. client))
  redis.call('HSET', key, 'f:' .. client, num(f - tonumber(worth)))
end
