-- Record the outcomes of attempts, then optionally claim the next jobs in
-- the same call.  An outcome applies only while the caller's lease token
-- still matches the job's: a worker whose lease was taken away cannot
-- overwrite a newer attempt.
-- KEYS: jobs, output, processing, completed, failed, dead, cancelled, held,
--       seq, then pairs of (queue, notify): first the queues to claim from,
--       then any other queue an outcome's job belongs to
-- ARGV: worker name, history limit, jobs to claim (0 for none), lease
--       duration ms, number of pairs to claim from, then for each outcome:
--       id, lease token, outcome (completed|failed|dead|cancelled|requeue),
--       exit code or '', signal or '', duration ms, error, output JSON or ''
--       when the attempt printed nothing, retry delay ms, number of the
--       job's (queue, notify) pair, ms from the claim to the start
-- Returns: {status, final state} per outcome, where status is 'ok' or
--          'lost', then the claim reply of claim_next if jobs were claimed.

local FIELDS = 11
local k = {
  jobs = KEYS[1], output = KEYS[2], processing = KEYS[3], completed = KEYS[4],
  failed = KEYS[5], dead = KEYS[6], cancelled = KEYS[7], held = KEYS[8], seq = KEYS[9],
}
local worker, history_limit = ARGV[1], tonumber(ARGV[2])
local claim_count, lease_ms, claim_pairs = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local valid = {completed = true, failed = true, dead = true, cancelled = true, requeue = true}

local function record(a)
  local id, lease, outcome = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local exit_code, signal = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local duration_ms, error_line, output = tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7]
  local retry_delay_ms, pair = tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9])
  local queue_key, notify_key = KEYS[8 + 2 * pair], KEYS[9 + 2 * pair]
  local job = load_job(k.jobs, id)
  if not job or job.state ~= 'processing' or int(job.lease) ~= lease then
    return 'lost', false
  end

  redis.call('ZREM', k.processing, id)
  job.started_ms = job.started_ms + tonumber(ARGV[a + 10])
  add_history(job, {
    attempt = job.attempts, worker = job.worker, started_ms = job.started_ms,
    finished_ms = now, outcome = outcome, exit_code = exit_code, signal = signal,
    error = error_line ~= '' and error_line or nil,
  }, history_limit)
  job.exit_code = exit_code
  job.signal = signal
  job.duration_ms = duration_ms
  job.error = error_line ~= '' and error_line or nil
  job.lease = nil
  job.batch = nil

  if outcome == 'failed' and job.attempts > job.max_retries then
    outcome = 'dead'
    job.error = (job.error or 'failed') .. ' (no retries left)'
  end

  if outcome == 'requeue' then
    -- The worker stopped before the job could finish; the attempt does not count.
    job.attempts = job.attempts - 1
    push_pending(k.seq, queue_key, id, job, true)
    notify(notify_key, 1)
  elseif outcome == 'failed' then
    job.state = 'failed'
    job.next_run_ms = now + retry_delay_ms
    redis.call('ZADD', k.failed, int(job.next_run_ms), id)
  else
    job.state = outcome
    job.finished_ms = now
    redis.call('ZADD', k[outcome], int(now), id)
  end
  if output ~= '' then
    redis.call('HSET', k.output, id, output)
  elseif #job.history > 1 then
    -- An earlier attempt may have left output that this one did not replace.
    redis.call('HDEL', k.output, id)
  end
  save_job(k.jobs, id, job)
  return 'ok', job.state
end

for a = 6, #ARGV, FIELDS do
  if not valid[ARGV[a + 2]] then
    return redis.error_reply('unknown outcome ' .. ARGV[a + 2])
  end
end

local reply, leases = {}, {}
for a = 6, #ARGV, FIELDS do
  local status, state = record(a)
  reply[#reply + 1] = status
  reply[#reply + 1] = state
  leases[ARGV[a]] = ARGV[a + 1]
end
held_remove(k.held, worker, leases)

if claim_count > 0 then
  local queue_keys, notify_keys = {}, {}
  for i = 1, claim_pairs do
    queue_keys[i] = KEYS[8 + 2 * i]
    notify_keys[i] = KEYS[9 + 2 * i]
  end
  for _, item in ipairs(claim_next(k, queue_keys, notify_keys, worker, lease_ms, now, claim_count)) do
    reply[#reply + 1] = item
  end
end
return reply
