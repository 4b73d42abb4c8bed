-- Takes one slot of a concurrency cap, if one is free.
--
-- KEYS[1]  the cap: a sorted set of lease ids scored by expiry (ms, Redis clock)
-- ARGV[1]  max slots
-- ARGV[2]  lease in ms
-- ARGV[3]  the new lease id
-- returns  {1, held}  acquired; held counts the new lease
--          {0, held}  all max slots are held
--
-- Expired leases (score <= now) are purged first: a replica that died
-- without releasing frees its slots within one lease.
local key = KEYS[1]
local max = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now))
local held = redis.call('ZCARD', key)
if held >= max then
  return {0, held}
end
redis.call('ZADD', key, string.format('%.0f', now + lease), ARGV[3])
-- The key outlives its longest lease (PTTL is -1 on a new key).
if redis.call('PTTL', key) < lease then
  redis.call('PEXPIRE', key, string.format('%.0f', lease + 1000))
end
return {1, held + 1}
