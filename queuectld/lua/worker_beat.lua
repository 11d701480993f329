-- Record that a worker is alive, with what it is doing.
-- KEYS: workers, worker_info
-- ARGV: worker name, info JSON
-- Returns: Redis time in ms.

local now = now_ms()
redis.call('ZADD', KEYS[1], int(now), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return now
