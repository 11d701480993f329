-- Move due jobs of one queue from the scheduled or failed set to pending.
-- KEYS: jobs, source set (scheduled or failed), seq, dead, queue, notify
-- ARGV: job ids
-- Returns: the number of jobs moved.

local jobs_key, source_key, seq_key, dead_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue_key, notify_key = KEYS[5], KEYS[6]
local now = now_ms()
local moved = 0

for _, id in ipairs(ARGV) do
  local due = tonumber(redis.call('ZSCORE', source_key, id))
  if due and due <= now then
    redis.call('ZREM', source_key, id)
    local job, raw = load_job(jobs_key, id)
    if job then
      push_pending(seq_key, queue_key, id, job, false)
      save_job(jobs_key, id, job)
      moved = moved + 1
    elseif raw then
      bury_unreadable(jobs_key, dead_key, id, raw, now)
    end
  end
end

notify(notify_key, moved)
return moved
