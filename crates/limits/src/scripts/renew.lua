-- Extends a held lease to ARGV[2] ms from now.
--
-- KEYS[1]  the cap (see acquire.lua)
-- ARGV[1]  the lease id
-- ARGV[2]  lease in ms
-- returns  1 renewed, 0 the lease had expired or was released
local key = KEYS[1]
local lease = tonumber(ARGV[2])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local score = redis.call('ZSCORE', key, ARGV[1])
if not score then
  return 0
end
if tonumber(score) <= now then
  -- Expired: the slot is no longer this holder's.
  redis.call('ZREM', key, ARGV[1])
  return 0
end
redis.call('ZADD', key, 'XX', string.format('%.0f', now + lease), ARGV[1])
if redis.call('PTTL', key) < lease then
  redis.call('PEXPIRE', key, string.format('%.0f', lease + 1000))
end
return 1
