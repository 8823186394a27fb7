-- A key the upstream refused (401/403), for every sidecar of the pool (quarantine.py).
-- KEYS[1] the pool's HASH of refused keys: label -> "fingerprint;refusals;since;until" (Redis time, s)
-- ARGV[1] 'refuse' or 'accept'  ARGV[2] label ("account/key")  ARGV[3] the value's fingerprint
-- ARGV[4] first rest (s)  ARGV[5] longest rest (s)
-- refuse: the key rests first * 2^(refusals in a row - 1), at most the longest rest. A refusal while
--   the key already rests is an echo (a call sent before the key was known refused): it counts nothing.
--   An entry about another value of the key (before a rotation) starts over.
--   Returns {refusals, rest_s, until_s from now} (the last two as strings).
-- accept: the key works: drops its entry if it is about this value. Returns 1 if it dropped one.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local op, label, fp = ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('HGET', KEYS[1], label)
local o_fp, o_n, o_since, o_until
if old then
  local parts = {}
  for part in string.gmatch(old, '[^;]+') do parts[#parts + 1] = part end
  o_fp, o_n, o_since, o_until = parts[1], tonumber(parts[2]), tonumber(parts[3]), tonumber(parts[4])
end
local same = old ~= nil and o_fp == fp and o_n ~= nil and o_since ~= nil and o_until ~= nil

if op == 'accept' then
  if same then
    redis.call('HDEL', KEYS[1], label)
    return 1
  end
  return 0
end

local first, longest = tonumber(ARGV[4]), tonumber(ARGV[5])
if same and o_until > now then
  return {o_n, tostring(math.min(first * 2 ^ (o_n - 1), longest)), tostring(o_until - now)}
end
local n, since = 1, now
if same then n, since = o_n + 1, o_since end
local rest = math.min(first * 2 ^ (n - 1), longest)
redis.call('HSET', KEYS[1], label, fp .. ';' .. n .. ';' .. string.format('%.3f', since) .. ';' ..
  string.format('%.3f', now + rest))
redis.call('PEXPIRE', KEYS[1], math.ceil(2 * longest * 1000))
return {n, tostring(rest), tostring(rest)}
