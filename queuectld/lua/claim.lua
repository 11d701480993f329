-- Claim up to `count` of the best pending jobs for a worker, each with a lease.
-- KEYS: jobs, processing, seq, held, dead, then pairs of (queue, notify)
-- ARGV: worker name, lease duration in ms, count
-- Returns: see claim_next in common.lua.

local k = {jobs = KEYS[1], processing = KEYS[2], seq = KEYS[3], held = KEYS[4], dead = KEYS[5]}
local queue_keys, notify_keys = {}, {}
for i = 6, #KEYS, 2 do
  queue_keys[#queue_keys + 1] = KEYS[i]
  notify_keys[#notify_keys + 1] = KEYS[i + 1]
end

return claim_next(
  k, queue_keys, notify_keys, ARGV[1], tonumber(ARGV[2]), now_ms(), tonumber(ARGV[3] or '1')
)
