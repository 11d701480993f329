-- Add new jobs to one queue, all or none: if any id is in use, nothing is
-- written, unless the caller passed if-absent, in which case the jobs that
-- exist are left as they are and reported.
-- KEYS: jobs, seq, queues, scheduled, queue, notify
-- ARGV: queue name, if-absent (0|1), wake channel, then per job
--       (id, priority, due: 'at:<ms>', 'in:<ms>' or '', record JSON)
-- Returns: {'ok', created count, ids that existed...} or {'conflict', id}
--
-- The record JSON is an object without the fields set here, and this script
-- appends them as text in place of its closing brace.  Decoding and
-- re-encoding each record with cjson instead made the script about 50 %
-- slower per job (Redis 7.0.15, 1,000 jobs per call, INFO commandstats).

local jobs_key, seq_key, queues_key, scheduled_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue_key, notify_key = KEYS[5], KEYS[6]
local queue_name, if_absent, wake_channel = ARGV[1], ARGV[2] == '1', ARGV[3]
local FIRST, STRIDE = 4, 4
-- Items per variadic command.  unpack() fails at 8000 values (LUAI_MAXCSTACK
-- of the Lua 5.1 in Redis 7.0), and HSET and ZADD take items in pairs, so
-- the chunk size is even.
local CHUNK = 2000
local now = now_ms()
local now_text = int(now)

-- Run `command key items...` in chunks and return the replies joined in order.
local function call_chunked(command, key, items)
  local replies = {}
  for first = 1, #items, CHUNK do
    local reply = redis.call(command, key, unpack(items, first, math.min(first + CHUNK - 1, #items)))
    if type(reply) == 'table' then
      for _, item in ipairs(reply) do
        replies[#replies + 1] = item
      end
    end
  end
  return replies
end

local ids = {}
for i = FIRST, #ARGV, STRIDE do
  ids[#ids + 1] = ARGV[i]
end

local reply = {'ok', 0}
local skip = {}
local stored = call_chunked('HMGET', jobs_key, ids)
for n, id in ipairs(ids) do
  if stored[n] then
    if not if_absent then
      return {'conflict', id}
    end
    skip[id] = true
    reply[#reply + 1] = id
  end
end

-- Pending jobs take consecutive sequence numbers in argument order, as
-- push_pending in common.lua would give them one INCR at a time.  The
-- INCRBY below adds their count once the records are built.
local seq = tonumber(redis.call('GET', seq_key)) or 0
local now_fields = ',"attempts":0,"created_ms":' .. now_text .. ',"run_at_ms":' .. now_text .. '}'
local records, queued, scheduled = {}, {}, {}
local created, pending, earliest_due = 0, 0, nil
for i = FIRST, #ARGV, STRIDE do
  local id, due_spec = ARGV[i], ARGV[i + 2]
  -- An id given twice in one call is stored once, from its first arguments.
  if not skip[id] then
    skip[id] = true
    local due = now
    local kind = string.sub(due_spec, 1, 3)
    if kind == 'at:' then
      due = tonumber(string.sub(due_spec, 4))
    elseif kind == 'in:' then
      due = now + tonumber(string.sub(due_spec, 4))
    end
    local time_fields = now_fields
    if due ~= now then
      time_fields = ',"attempts":0,"created_ms":' .. now_text .. ',"run_at_ms":' .. int(due) .. '}'
    end

    local state_fields
    if due <= now then
      seq = seq + 1
      pending = pending + 1
      -- The score formula of push_pending in common.lua.
      queued[2 * pending - 1] = int(-tonumber(ARGV[i + 1]) * PRIORITY_STEP + seq)
      queued[2 * pending] = id
      state_fields = ',"state":"pending","seq":' .. int(seq)
    else
      scheduled[#scheduled + 1] = int(due)
      scheduled[#scheduled + 1] = id
      if earliest_due == nil or due < earliest_due then
        earliest_due = due
      end
      state_fields = ',"state":"scheduled"'
    end

    created = created + 1
    records[2 * created - 1] = id
    records[2 * created] = string.sub(ARGV[i + 3], 1, -2) .. state_fields .. time_fields
  end
end

if pending > 0 then
  redis.call('INCRBY', seq_key, pending)
end
call_chunked('HSET', jobs_key, records)
call_chunked('ZADD', queue_key, queued)
call_chunked('ZADD', scheduled_key, scheduled)
if created > 0 then
  redis.call('SADD', queues_key, queue_name)
end
notify(notify_key, pending)
if earliest_due then
  redis.call('PUBLISH', wake_channel, int(earliest_due))
end
reply[2] = created
return reply
