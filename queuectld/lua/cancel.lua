-- Cancel a job.  A waiting job is cancelled at once; a running job is
-- flagged, and its worker kills it at its next heartbeat.
-- KEYS: jobs, scheduled, failed, processing, cancelled, the job's queue
-- ARGV: id
-- Returns: {result, state} with result 'cancelled', 'requested',
--          'not_found' or 'final' (the job had already finished).

local jobs_key, cancelled_key, queue_key = KEYS[1], KEYS[5], KEYS[6]
local waiting = {scheduled = KEYS[2], failed = KEYS[3], pending = queue_key}
local id = ARGV[1]

local job = load_job(jobs_key, id)
if not job then
  return {'not_found', false}
end
if job.state == 'processing' then
  job.cancel_requested = true
  save_job(jobs_key, id, job)
  return {'requested', job.state}
end
local set_key = waiting[job.state]
if not set_key then
  return {'final', job.state}
end

local now = now_ms()
redis.call('ZREM', set_key, id)
job.state = 'cancelled'
job.finished_ms = now
job.next_run_ms = nil
job.error = 'cancelled before it ran'
save_job(jobs_key, id, job)
redis.call('ZADD', cancelled_key, int(now), id)
return {'cancelled', 'cancelled'}
