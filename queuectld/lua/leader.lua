-- Take or renew the scheduler's leader lock.  Only the owner of the token
-- can renew or release it.
-- KEYS: scheduler lock
-- ARGV: token, lock duration ms, action ('hold' or 'release')
-- Returns: 1 if the caller holds the lock after the call, else 0.

local lock_key, token, ttl_ms, action = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local owner = redis.call('GET', lock_key)
if action == 'release' then
  if owner == token then
    redis.call('DEL', lock_key)
  end
  return 0
end
if owner == token then
  redis.call('PEXPIRE', lock_key, ttl_ms)
  return 1
end
if redis.call('SET', lock_key, token, 'NX', 'PX', ttl_ms) then
  return 1
end
return 0
