-- Delete finished jobs (completed, dead or cancelled) that finished at least
-- `age` ms ago, oldest first, at most `limit` per call.
-- KEYS: the finished set, jobs, output
-- ARGV: age ms, limit
-- Returns: the number of jobs deleted.

local set_key, jobs_key, output_key = KEYS[1], KEYS[2], KEYS[3]
local cutoff = now_ms() - tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', set_key, '-inf', int(cutoff), 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then
  return 0
end
redis.call('ZREM', set_key, unpack(ids))
redis.call('HDEL', jobs_key, unpack(ids))
redis.call('HDEL', output_key, unpack(ids))
return #ids
