-- Renew a running job's lease while the caller's token still matches.
-- KEYS: jobs, processing
-- ARGV: id, lease token, lease duration ms
-- Returns: 1 renewed, 2 renewed and a cancel was requested, 0 lease lost.

local id, lease, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local job = load_job(KEYS[1], id)
if not job or job.state ~= 'processing' or int(job.lease) ~= lease then
  return 0
end
redis.call('ZADD', KEYS[2], int(now_ms() + lease_ms), id)
if job.cancel_requested then
  return 2
end
return 1
