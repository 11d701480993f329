-- Record the outcome of an attempt, then optionally claim the next job in
-- the same call.  The outcome applies only while the caller's lease token
-- still matches the job's: a worker whose lease was taken away cannot
-- overwrite a newer attempt.
-- KEYS: jobs, output, processing, completed, failed, dead, cancelled, held,
--       seq, the job's queue, the job's notify list, then pairs of
--       (queue, notify) to claim from
-- ARGV: id, lease token, outcome (completed|failed|dead|cancelled|requeue),
--       exit code or '', signal or '', duration ms, error, output JSON or '',
--       retry delay ms, history limit, worker name, claim next (0|1),
--       lease duration ms
-- Returns: {status, final state, claim reply...} where status is 'ok' or
--          'lost' and the claim reply is that of claim_next.

local k = {
  jobs = KEYS[1], output = KEYS[2], processing = KEYS[3], completed = KEYS[4],
  failed = KEYS[5], dead = KEYS[6], cancelled = KEYS[7], held = KEYS[8], seq = KEYS[9],
}
local queue_key, notify_key = KEYS[10], KEYS[11]
local id, lease, outcome = ARGV[1], ARGV[2], ARGV[3]
local exit_code, signal = tonumber(ARGV[4]), tonumber(ARGV[5])
local duration_ms, error_line, output = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local retry_delay_ms, history_limit = tonumber(ARGV[9]), tonumber(ARGV[10])
local worker, claim_more, lease_ms = ARGV[11], ARGV[12] == '1', tonumber(ARGV[13])
local now = now_ms()

local function held_by_caller()
  if redis.call('HGET', k.held, worker) == id .. ' ' .. lease then
    redis.call('HDEL', k.held, worker)
  end
end

local function record(job)
  local status, state = 'lost', nil
  if not job or job.state ~= 'processing' or int(job.lease) ~= lease then
    return status, state
  end

  redis.call('ZREM', k.processing, id)
  held_by_caller()
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
  end
  save_job(k.jobs, id, job)
  return 'ok', job.state
end

local valid = {completed = true, failed = true, dead = true, cancelled = true, requeue = true}
if not valid[outcome] then
  return redis.error_reply('unknown outcome ' .. outcome)
end

local job = load_job(k.jobs, id)
local status, state = record(job)
if status == 'lost' then
  held_by_caller()
end
local reply = {status, state or false}
if claim_more then
  local queue_keys, notify_keys = {}, {}
  for i = 12, #KEYS, 2 do
    queue_keys[#queue_keys + 1] = KEYS[i]
    notify_keys[#notify_keys + 1] = KEYS[i + 1]
  end
  for _, item in ipairs(claim_next(k, queue_keys, notify_keys, worker, lease_ms, now)) do
    reply[#reply + 1] = item
  end
end
return reply
