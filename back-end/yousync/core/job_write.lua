-- Every change to a job, atomically: hash, event Stream, token Stream, indexes, pub/sub.
-- Loaded by yousync/core/jobs.py, which fills in the TERMINAL table from models.TERMINAL_STATUSES
-- (one definition of "terminal"). KEYS: hash, stream, token jobs, token stream, active set,
-- outcome counters, the job's callback deliveries, the due callbacks, and last, for the `create`
-- of a deduplicated job, the original's hash and dedups set. ARGV: mode, TTLs, maxlen,
-- channel, the snapshot field list (JSON), the callback settings (JSON), then field/value pairs.
local hash, stream, token_jobs, token_stream, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local mode, active_ttl, terminal_ttl, maxlen, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local TERMINAL = {--[[TERMINAL]]}
local SNAP = cjson.decode(ARGV[6])
local CALLBACK = cjson.decode(ARGV[7])

local exists = redis.call('EXISTS', hash) == 1
if mode == 'create' and exists then return {0, 'exists'} end
if mode ~= 'create' and not exists then return {0, 'missing'} end
-- DELETE claimed the job (job_delete.lua): to every writer it is gone already, so a running
-- worker stops and cleans up now, and no `failed` (input deleted under it) ends its streams
-- before the `deleted` event does.
if mode ~= 'create' and redis.call('HGET', hash, 'deleting') == '1' then return {0, 'missing'} end
-- A deduplicated job (a `create` with a `deduplicated_from` field; the original's hash and
-- dedups set are then the last two KEYS) joins the holders of the original's stored object in
-- this same script, only while the original is completed and not claimed by a DELETE: that
-- claim (job_delete.lua) either counts it or came first and makes this create refused, never a
-- job answering with a deleted object.
local original, original_dedups
if mode == 'create' then
  for i = 8, #ARGV, 2 do
    if ARGV[i] == 'deduplicated_from' then
      original, original_dedups = KEYS[#KEYS - 1], KEYS[#KEYS]
    end
  end
end
if original_dedups then
  if redis.call('HGET', original, 'status') ~= 'completed'
    or redis.call('HGET', original, 'deleting') == '1' then
    return {0, 'original_gone'}
  end
end
local cur_status = redis.call('HGET', hash, 'status')
if mode == 'reopen' then
  if cur_status ~= 'failed' and cur_status ~= 'cancelled' then return {0, 'not_reopenable'} end
elseif cur_status and TERMINAL[cur_status] then
  return {0, 'terminal'}
end
if mode == 'stall' then
  -- Only a running job that is not already marked can stall; the next real write clears it.
  if cur_status ~= 'processing' then return {0, 'not_running'} end
  if redis.call('HGET', hash, 'stalled') == '1' then return {0, 'already_stalled'} end
end
local cur_progress = tonumber(redis.call('HGET', hash, 'progress') or '0')

-- Transient markers are cleared by any real write that does not set them again
-- (HSET applies pairs in order, so a value given below wins).
local pairs_ = {}
if mode ~= 'stall' then
  pairs_ = {'stalled', '', 'next_retry_in', ''}
end
local new_status = cur_status
for i = 8, #ARGV, 2 do
  local k, v = ARGV[i], ARGV[i + 1]
  if k == 'progress' and tonumber(v) < cur_progress then return {0, 'progress_decrease'} end
  if k == 'status' then new_status = v end
  pairs_[#pairs_ + 1] = k
  pairs_[#pairs_ + 1] = v
end
redis.call('HSET', hash, unpack(pairs_))
if original_dedups then
  redis.call('SADD', original_dedups, redis.call('HGET', hash, 'job_id'))
  if redis.call('TTL', original_dedups) < tonumber(terminal_ttl) then
    redis.call('EXPIRE', original_dedups, terminal_ttl)
  end
end

-- Completion callbacks (issue 17), part 1 of 2 ------------------------------------------------
-- A write that ends the job (from a non-terminal status, or a `create` that is already
-- `completed`: a deduplicated upload) owes one delivery to the job's callback target: the
-- upload's own `callback_url` marker, else the operator's CALLBACK_URL, else none. Its id,
-- `<job_id>.<n>` for the job's n-th end, is the `webhook-id` of every attempt. The snapshot
-- says `pending` in this very event.
local delivery, delivery_url, operator_set
if TERMINAL[new_status] and not TERMINAL[cur_status] then
  delivery_url = redis.call('HGET', hash, 'callback_url')
  operator_set = '0'
  if not delivery_url or delivery_url == '' then
    delivery_url, operator_set = CALLBACK.url, '1'
  end
  if delivery_url ~= '' then
    local ends = redis.call('HINCRBY', hash, 'callback_ends', 1)
    delivery = redis.call('HGET', hash, 'job_id') .. '.' .. ends
    redis.call('HSET', hash, 'callback', '{"status":"pending","attempts":0}',
      'callback_delivery', delivery)
  end
end
-- ---------------------------------------------------------------------------------------------

local values = redis.call('HMGET', hash, unpack(SNAP))
local entry, snapshot = {}, {}
for i, name in ipairs(SNAP) do
  local v = values[i]
  if v and v ~= '' then
    entry[#entry + 1] = name
    entry[#entry + 1] = v
    snapshot[name] = v
  end
end
local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(entry))
local token_id = redis.call('XADD', token_stream, 'MAXLEN', '~', maxlen * 5, '*', unpack(entry))
redis.call('HSET', hash, 'last_event_id', id)
local ttl = TERMINAL[new_status] and terminal_ttl or active_ttl
if redis.call('TTL', KEYS[7]) == -1 then
  -- Callbacks: the job's set of deliveries has no expiry only while it names a dead letter
  -- (core/callbacks.py), whose job keeps its record and events until none is left, a rerun
  -- and its new end included.
  redis.call('PERSIST', hash)
  redis.call('PERSIST', stream)
else
  redis.call('EXPIRE', hash, ttl)
  redis.call('EXPIRE', stream, ttl)
end
redis.call('EXPIRE', token_stream, active_ttl)
if mode == 'create' then
  redis.call('ZADD', token_jobs, redis.call('TIME')[1], snapshot['job_id'])
  redis.call('EXPIRE', token_jobs, active_ttl)
end
if TERMINAL[new_status] then
  redis.call('ZREM', active, snapshot['job_id'])
  if not TERMINAL[cur_status] then redis.call('HINCRBY', KEYS[6], new_status, 1) end
else
  local now = redis.call('TIME')
  redis.call('ZADD', active, tonumber(now[1]) + tonumber(now[2]) / 1e6, snapshot['job_id'])
end
-- Completion callbacks, part 2 of 2: the delivery record holds the end's snapshot itself (the
-- body), because the job's record may expire or be deleted long before the last attempt.
if delivery then
  local now = redis.call('TIME')
  local ended = string.format('%d.%06d', now[1], now[2])
  local record = CALLBACK.prefix .. delivery
  redis.call('HSET', record, 'job_id', snapshot['job_id'], 'url', delivery_url,
    'operator', operator_set, 'ended', ended, 'since', ended, 'attempts', 0,
    'snapshot', cjson.encode(snapshot))
  redis.call('EXPIRE', record, CALLBACK.ttl)
  -- The job's set of deliveries lives as long as they do; one that holds a dead letter
  -- (made persistent by it) stays persistent.
  local persistent = redis.call('TTL', KEYS[7]) == -1
  redis.call('SADD', KEYS[7], delivery)
  if not persistent then
    redis.call('EXPIRE', KEYS[7], math.max(CALLBACK.ttl, tonumber(terminal_ttl)))
  end
  redis.call('ZADD', KEYS[8], ended, delivery)
end
redis.call('PUBLISH', channel, cjson.encode({job_id = snapshot['job_id'],
  token_id = snapshot['token_id'], id = id, token_event_id = token_id, snapshot = snapshot}))
return {1, id}
