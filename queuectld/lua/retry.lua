-- Send a failed, dead or cancelled job back to its queue now.  A job taken
-- from the dead-letter queue or cancelled starts over with a full set of
-- retries; a failed job skips the rest of its backoff.
-- KEYS: jobs, failed, dead, cancelled, seq, the job's queue, its notify list
-- ARGV: id, allowed states separated by commas
-- Returns: {result, state} with result 'ok', 'not_found', 'conflict' or
--          'unreadable' (a record buried as unreadable has nothing to run).

local jobs_key, seq_key, queue_key, notify_key = KEYS[1], KEYS[5], KEYS[6], KEYS[7]
local sets = {failed = KEYS[2], dead = KEYS[3], cancelled = KEYS[4]}
local id, allowed = ARGV[1], ',' .. ARGV[2] .. ','

local job = load_job(jobs_key, id)
if not job then
  return {'not_found', false}
end
if not sets[job.state] or not string.find(allowed, ',' .. job.state .. ',', 1, true) then
  return {'conflict', job.state}
end
if not runnable(job) then
  return {'unreadable', job.state}
end

redis.call('ZREM', sets[job.state], id)
if job.state ~= 'failed' then
  job.attempts = 0
end
job.finished_ms = nil
job.cancel_requested = nil
push_pending(seq_key, queue_key, id, job, false)
save_job(jobs_key, id, job)
notify(notify_key, 1)
return {'ok', 'pending'}
