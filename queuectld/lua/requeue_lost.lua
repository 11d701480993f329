-- Take jobs away from workers that died.  Each attempt counts as lost,
-- unless the job was claimed in a batch (see claim_next).  The job goes
-- back to the front of its queue, or to cancelled if a cancel was
-- requested, or to the dead-letter queue once its retries are spent.  A job
-- is taken only while it still holds the lease the caller names, so several
-- reapers at once are safe.
-- KEYS: jobs, processing, dead, held, seq, queue, notify, cancelled
-- ARGV: mode, history limit, then pairs of (id, lease token), all of jobs
--       in that queue.  Modes: 'expired' (reaper: only past the deadline),
--       'reclaim' (a restarted worker takes back its predecessor's job),
--       'release' (a worker hands back jobs it never started: the claim's
--       reply was lost, or it claimed more than it got to.  The attempt is
--       not counted).
-- Returns: a flat list of (id, new state) for every job taken.

local k = {
  jobs = KEYS[1], processing = KEYS[2], dead = KEYS[3], held = KEYS[4], seq = KEYS[5],
  cancelled = KEYS[8],
}
local queue_key, notify_key = KEYS[6], KEYS[7]
local mode, history_limit = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local taken, requeued = {}, 0

for i = 3, #ARGV, 2 do
  local id, lease = ARGV[i], ARGV[i + 1]
  local job = load_job(k.jobs, id)
  local deadline = tonumber(redis.call('ZSCORE', k.processing, id))
  local holds = job and job.state == 'processing' and int(job.lease) == lease and deadline
  if holds and mode == 'release' then
    redis.call('ZREM', k.processing, id)
    held_remove(k.held, job.worker, {[id] = lease})
    job.attempts = job.attempts - 1
    job.lease = nil
    job.batch = nil
    push_pending(k.seq, queue_key, id, job, true)
    requeued = requeued + 1
    save_job(k.jobs, id, job)
    taken[#taken + 1] = id
    taken[#taken + 1] = job.state
  elseif holds and (mode == 'reclaim' or deadline <= now) then
    local reason
    if mode == 'reclaim' then
      reason = 'worker lost: ' .. job.worker .. ' restarted while running the job'
    else
      local silent_s = math.floor((now - (deadline - (job.lease_ms or 0))) / 1000)
      reason = 'worker lost: no heartbeat for ' .. silent_s .. ' s'
    end

    redis.call('ZREM', k.processing, id)
    held_remove(k.held, job.worker, {[id] = lease})
    add_history(job, {
      attempt = job.attempts, worker = job.worker, started_ms = job.started_ms,
      finished_ms = now, outcome = 'lost', error = reason,
    }, history_limit)
    job.error = reason
    job.lease = nil
    if job.batch then
      -- Claimed with other jobs: the worker may never have started this one.
      job.attempts = job.attempts - 1
      job.error = reason .. ' (claimed in a batch; the attempt is not counted)'
      job.batch = nil
    end

    if job.cancel_requested then
      -- Its worker died before it could act on the cancel; do not run it again.
      job.state = 'cancelled'
      job.finished_ms = now
      job.error = reason .. ' (cancel requested)'
      redis.call('ZADD', k.cancelled, int(now), id)
    elseif job.attempts > job.max_retries then
      job.state = 'dead'
      job.finished_ms = now
      job.error = reason .. ' (no retries left)'
      redis.call('ZADD', k.dead, int(now), id)
    else
      push_pending(k.seq, queue_key, id, job, true)
      requeued = requeued + 1
    end
    save_job(k.jobs, id, job)
    taken[#taken + 1] = id
    taken[#taken + 1] = job.state
  end
end

notify(notify_key, requeued)
return taken
