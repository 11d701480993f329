-- Helpers shared by the transition scripts.  The loader puts this file in
-- front of every script, so each script is one self-contained EVAL body.
--
-- Job records are JSON objects stored in the jobs hash.  Times are integer
-- milliseconds since the epoch taken from Redis TIME, so hosts with skewed
-- clocks agree on due times and lease deadlines.

if redis.replicate_commands then
  redis.replicate_commands()
end

-- Pending scores order by priority (higher first), then by enqueue sequence.
-- Priorities stay within +-1000 and sequences below 2^42, so every score is
-- an integer below 2^53 and exact as a double.
local PRIORITY_STEP = 4398046511104
-- Idle workers block on a notify list; more tokens than that are never needed.
local NOTIFY_CAP = 256

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers go to Redis as "%d": Lua's own conversion keeps only 14 digits.
local function int(n)
  return string.format('%d', n)
end

local function load_job(jobs_key, id)
  local raw = redis.call('HGET', jobs_key, id)
  if not raw then
    return nil, nil
  end
  local ok, job = pcall(cjson.decode, raw)
  if not ok or type(job) ~= 'table' or type(job.priority) ~= 'number' then
    return nil, raw
  end
  return job, raw
end

local function save_job(jobs_key, id, job)
  local encoded = cjson.encode(job)
  redis.call('HSET', jobs_key, id, encoded)
  return encoded
end

-- Append one attempt to the job's history, keeping the newest `limit`.
local function add_history(job, entry, limit)
  local history = job.history
  if type(history) ~= 'table' then
    history = {}
  end
  history[#history + 1] = entry
  while #history > limit do
    table.remove(history, 1)
  end
  job.history = history
end

-- Put a job in its pending queue.  A job that keeps its place reuses its
-- sequence number, so it goes ahead of jobs enqueued after it.
local function push_pending(seq_key, queue_key, id, job, keep_place)
  if not keep_place or type(job.seq) ~= 'number' then
    job.seq = redis.call('INCR', seq_key)
  end
  job.state = 'pending'
  job.next_run_ms = nil
  redis.call('ZADD', queue_key, int(-job.priority * PRIORITY_STEP + job.seq), id)
end

local function notify(notify_key, count)
  if count <= 0 then
    return
  end
  local tokens = {}
  for i = 1, math.min(count, NOTIFY_CAP) do
    tokens[i] = '1'
  end
  redis.call('RPUSH', notify_key, unpack(tokens))
  redis.call('LTRIM', notify_key, -NOTIFY_CAP, -1)
end

-- A record that no longer parses goes to the dead-letter queue as it is,
-- wrapped in a readable record that states why.
local function bury_unreadable(jobs_key, dead_key, id, raw, now)
  local record = {
    id = id, state = 'dead', priority = 0, attempts = 0, queue = 'unknown',
    error = 'unreadable job record; the original is kept in the raw field',
    raw = raw, finished_ms = now, created_ms = now,
  }
  save_job(jobs_key, id, record)
  redis.call('ZADD', dead_key, int(now), id)
end

-- A record the worker can run has the fields it reads; others are buried
-- as unreadable rather than crash the worker that claims them.
local function runnable(job)
  return type(job.command) == 'table' and type(job.command[1]) == 'string'
    and type(job.queue) == 'string' and type(job.timeout) == 'number'
    and type(job.max_retries) == 'number'
end

-- The held hash maps a worker to the jobs it holds: "<id> <lease> <id> <lease> ...".
local function held_pairs(held_key, worker)
  local pairs_, id = {}, nil
  for word in string.gmatch(redis.call('HGET', held_key, worker) or '', '%S+') do
    if id == nil then
      id = word
    else
      pairs_[#pairs_ + 1] = {id, word}
      id = nil
    end
  end
  return pairs_
end

local function save_held(held_key, worker, pairs_)
  if #pairs_ == 0 then
    redis.call('HDEL', held_key, worker)
    return
  end
  local words = {}
  for _, pair in ipairs(pairs_) do
    words[#words + 1] = pair[1] .. ' ' .. pair[2]
  end
  redis.call('HSET', held_key, worker, table.concat(words, ' '))
end

-- Drop the pairs of `leases` (id -> lease token) from the worker's entry.
local function held_remove(held_key, worker, leases)
  local kept = {}
  local pairs_ = held_pairs(held_key, worker)
  for _, pair in ipairs(pairs_) do
    if leases[pair[1]] ~= pair[2] then
      kept[#kept + 1] = pair
    end
  end
  if #kept < #pairs_ then
    save_held(held_key, worker, kept)
  end
end

-- Take the best pending job across the given queues: the highest priority,
-- then the oldest.  Returns its id, or nil when every queue is empty.
local function pop_best(queue_keys)
  local best_key, best_id, best_score = nil, nil, nil
  for _, queue_key in ipairs(queue_keys) do
    local head = redis.call('ZRANGE', queue_key, 0, 0, 'WITHSCORES')
    if head[1] then
      local score = tonumber(head[2])
      if best_score == nil or score < best_score then
        best_key, best_id, best_score = queue_key, head[1], score
      end
    end
  end
  if best_id ~= nil then
    redis.call('ZREM', best_key, best_id)
  end
  return best_id
end

-- Claim up to `count` of the best pending jobs across the given queues and
-- give each a lease.  Jobs claimed together are marked `batch`: a worker
-- that dies holding them may not have started them all, so their lost
-- attempt is not counted.  Returns {n, id, record JSON, lease token, ...
-- (n triples), skipped ids...}; skipped ids are records that no longer
-- parse, moved to the dead-letter queue.
local function claim_next(k, queue_keys, notify_keys, worker, lease_ms, now, count)
  local claimed, skipped = {}, {}
  while #claimed < count do
    local id = pop_best(queue_keys)
    if id == nil then
      -- Nothing is pending, so every wake-up token left is stale.
      for _, notify_key in ipairs(notify_keys) do
        redis.call('DEL', notify_key)
      end
      break
    end
    local job, raw = load_job(k.jobs, id)
    if job and runnable(job) then
      claimed[#claimed + 1] = {id, job}
    else
      if raw then
        bury_unreadable(k.jobs, k.dead, id, raw, now)
      end
      skipped[#skipped + 1] = id
    end
  end

  local reply = {#claimed}
  local pairs_ = held_pairs(k.held, worker)
  for _, item in ipairs(claimed) do
    local id, job = item[1], item[2]
    job.attempts = (job.attempts or 0) + 1
    job.state = 'processing'
    job.started_ms = now
    job.worker = worker
    job.lease_ms = lease_ms
    job.lease = redis.call('INCR', k.seq)
    job.batch = #claimed > 1 or nil
    job.cancel_requested = nil
    job.finished_ms = nil
    job.exit_code = nil
    job.signal = nil
    job.duration_ms = nil
    job.error = nil
    reply[#reply + 1] = id
    reply[#reply + 1] = save_job(k.jobs, id, job)
    reply[#reply + 1] = job.lease
    redis.call('ZADD', k.processing, int(now + lease_ms), id)
    pairs_[#pairs_ + 1] = {id, int(job.lease)}
  end
  if #claimed > 0 then
    save_held(k.held, worker, pairs_)
  end
  for _, id in ipairs(skipped) do
    reply[#reply + 1] = id
  end
  return reply
end
