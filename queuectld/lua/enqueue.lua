-- Add new jobs to one queue, all or none: if any id is in use, nothing is
-- written, unless the caller passed if-absent, in which case the jobs that
-- exist are left as they are and reported.
-- KEYS: jobs, seq, queues, scheduled, queue, notify
-- ARGV: queue name, if-absent (0|1), wake channel, then triples of
--       (id, record JSON, due: 'at:<ms>', 'in:<ms>' or '')
-- Returns: {'ok', created count, ids that existed...} or {'conflict', id}

local jobs_key, seq_key, queues_key, scheduled_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue_key, notify_key = KEYS[5], KEYS[6]
local queue_name, if_absent, wake_channel = ARGV[1], ARGV[2] == '1', ARGV[3]
local FIRST = 4
local now = now_ms()

local reply = {'ok', 0}
local skip = {}
for i = FIRST, #ARGV, 3 do
  if redis.call('HEXISTS', jobs_key, ARGV[i]) == 1 then
    if not if_absent then
      return {'conflict', ARGV[i]}
    end
    skip[ARGV[i]] = true
    reply[#reply + 1] = ARGV[i]
  end
end

local created, pending, earliest_due = 0, 0, nil
for i = FIRST, #ARGV, 3 do
  local id, due_spec = ARGV[i], ARGV[i + 2]
  if not skip[id] then
    local job = cjson.decode(ARGV[i + 1])
    job.created_ms = now
    job.attempts = 0

    local due = now
    local kind, amount = string.sub(due_spec, 1, 3), tonumber(string.sub(due_spec, 4))
    if kind == 'at:' then
      due = amount
    elseif kind == 'in:' then
      due = now + amount
    end
    job.run_at_ms = due

    if due > now then
      job.state = 'scheduled'
      redis.call('ZADD', scheduled_key, int(due), id)
      if earliest_due == nil or due < earliest_due then
        earliest_due = due
      end
    else
      push_pending(seq_key, queue_key, id, job, false)
      pending = pending + 1
    end
    save_job(jobs_key, id, job)
    skip[id] = true
    created = created + 1
  end
end

if created > 0 then
  redis.call('SADD', queues_key, queue_name)
end
notify(notify_key, pending)
if earliest_due then
  redis.call('PUBLISH', wake_channel, int(earliest_due))
end
reply[2] = created
return reply
