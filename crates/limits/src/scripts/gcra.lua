-- GCRA for one (tenant, kind) bucket: the arithmetic of src/rate.rs, in
-- microseconds of the Redis server's clock (one clock for every replica).
--
-- KEYS[1]  the bucket, a string "<at_us> <debt> <per_minute>": the debt
--          (how far the theoretical arrival time lay ahead of at_us) is in
--          units of 1/per_minute us, so one unit of cost is exactly 6e7 of
--          them and a full minute is exactly per_minute * 6e7.
-- ARGV[1]  per_minute (L), 1..1e9
-- ARGV[2]  cost (mode "check", 0..L) or delta (mode "adjust", may be < 0)
-- ARGV[3]  "check" or "adjust"
-- returns  {1, remaining, 0}       admitted (check) or done (adjust)
--          {0, 0, retry_after_us}  refused; nothing charged
--
-- Lua numbers are doubles: integers up to 2^53 are exact, which covers
-- timestamps in us and a minute's debt for L up to 1.5e8. Numbers going into
-- Redis are formatted with %.0f, never with Lua's 14-digit tostring.
local INTERVAL = 60000000
local MAX_DEBT_MINUTES = 60

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local mode = ARGV[3]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local debt = 0
local stored = redis.call('GET', key)
if stored then
  local at, d, l = string.match(stored, '^(%d+) (%d+) (%d+)$')
  if at then
    at, d, l = tonumber(at), tonumber(d), tonumber(l)
    if l ~= limit then
      -- The limit changed: same debt in time, new units; round up.
      d = math.ceil(d * limit / l)
    end
    local elapsed = now - at
    if elapsed < 0 then
      -- The clock stepped back (e.g. a failover): no refill, no penalty.
      elapsed = 0
    end
    debt = d - elapsed * limit
    if debt < 0 then
      debt = 0
    end
  end
end

local capacity = limit * INTERVAL

local function store(d)
  if d <= 0 then
    redis.call('DEL', key)
  else
    -- Useless once the debt has drained (d / limit us); keep 1 s more.
    local ttl_ms = math.ceil(d / limit / 1000) + 1000
    redis.call('SET', key, string.format('%.0f %.0f %.0f', now, d, limit),
      'PX', string.format('%.0f', ttl_ms))
  end
end

if mode == 'adjust' then
  debt = debt + amount * INTERVAL
  if debt < 0 then
    debt = 0
  end
  if debt > MAX_DEBT_MINUTES * capacity then
    debt = MAX_DEBT_MINUTES * capacity
  end
  store(debt)
  local remaining = 0
  if debt < capacity then
    remaining = math.floor((capacity - debt) / INTERVAL)
  end
  return {1, remaining, 0}
end

local new_debt = debt + amount * INTERVAL
if new_debt > capacity then
  -- The excess, from units of 1/L us to us, rounded up.
  return {0, 0, math.ceil((new_debt - capacity) / limit)}
end
store(new_debt)
return {1, math.floor((capacity - new_debt) / INTERVAL), 0}
