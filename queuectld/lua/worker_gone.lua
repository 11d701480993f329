-- Forget workers: those named in ARGV, or with no heartbeat for `age` ms.
-- KEYS: workers, worker_info
-- ARGV: age ms (or '' to use only the names), limit, worker names...
-- Returns: the number of workers forgotten.

local workers_key, info_key = KEYS[1], KEYS[2]
local names = {}
for i = 3, #ARGV do
  names[#names + 1] = ARGV[i]
end
if ARGV[1] ~= '' then
  local cutoff = now_ms() - tonumber(ARGV[1])
  local stale = redis.call('ZRANGEBYSCORE', workers_key, '-inf', int(cutoff), 'LIMIT', 0, tonumber(ARGV[2]))
  for _, name in ipairs(stale) do
    names[#names + 1] = name
  end
end
if #names == 0 then
  return 0
end
redis.call('ZREM', workers_key, unpack(names))
redis.call('HDEL', info_key, unpack(names))
return #names
