-- DELETE of a job, in two scripts loaded by yousync/core/jobs.py (kept apart from job_write.lua:
-- a removal is no state change of the job's lifecycle). Mode 'claim' runs before the S3 objects
-- are deleted, mode 'delete' after them.
--
-- 'claim': marks the hash `deleting` (no new upload deduplicates onto it any more) and counts the
-- other live jobs holding the stored object: the root job (the original upload) and every member
-- of the root's dedups set, unless gone or being deleted themselves.
--   KEYS: hash, root's dedups set. ARGV: mode, job id, root job id, job hash key prefix.
--   Returns {1, holders} or {0, 'missing'}.
--
-- 'delete': one last event with status `deleted` (XADD to the job's and the token's Stream,
-- PUBLISH, so open streams end with it), then everything of the job goes: hash, events Stream,
-- token index entry, its entries in the token Stream (the tombstone stays), active entry, the
-- dedupe entry when it points at this job, its callback deliveries, its membership in the root's
-- dedups set, and a dedups set (its own; the root's once the root is gone) no live job is in.
-- Keys built from the prefixes are not declared in KEYS: one Redis, never a cluster.
--   KEYS: hash, stream, token jobs, token stream, active set, dedupe key (or the hash again),
--         job callbacks set, callbacks due, callbacks dead, own dedups set, root's dedups set.
--   ARGV: mode, job id, token id, updated_at, channel, maxlen, token stream ttl,
--         callback key prefix, job hash key prefix, root job id.
--   Returns {1, event id}; {1, ''} when the record expired since the claim (no event; every
--   other key still goes). Never refused: the claim was the check.
local mode = ARGV[1]
local exists = redis.call('EXISTS', KEYS[1]) == 1
if mode == 'claim' and not exists then return {0, 'missing'} end

local function live(prefix, id)
  local hash = prefix .. id
  return redis.call('EXISTS', hash) == 1 and redis.call('HGET', hash, 'deleting') ~= '1'
end

if mode == 'claim' then
  local job_id, root, prefix = ARGV[2], ARGV[3], ARGV[4]
  redis.call('HSET', KEYS[1], 'deleting', '1')
  local holders = 0
  local ids = redis.call('SMEMBERS', KEYS[2])
  ids[#ids + 1] = root
  for _, id in ipairs(ids) do
    if id ~= job_id and live(prefix, id) then holders = holders + 1 end
  end
  return {1, holders}
end

local hash, stream, token_jobs, token_stream, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local dedupe, callbacks, due, dead, own_dedups, root_dedups =
  KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local job_id, token_id, updated_at, channel = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local maxlen, token_ttl, callback_prefix, job_prefix, root =
  tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9], ARGV[10]

-- The job's earlier entries in the token Stream carry its result: they go; the tombstone below
-- tells a token stream's client (and one resuming later) that the job is gone (when the record
-- still exists to make one).
-- A tombstone already there (a second removal) stays.
for _, found in ipairs(redis.call('XRANGE', token_stream, '-', '+')) do
  local fields, of_job, tombstone = found[2], false, false
  for i = 1, #fields, 2 do
    if fields[i] == 'job_id' then of_job = fields[i + 1] == job_id end
    if fields[i] == 'status' then tombstone = fields[i + 1] == 'deleted' end
  end
  if of_job and not tombstone then redis.call('XDEL', token_stream, found[1]) end
end

local id, token_event_id = '', ''
local snapshot = {}
-- The record expired between the claim and now (its TTL ran out while S3 was cleared): no event
-- to send (its Stream expired with it), but the keys that outlive it go all the same.
if exists then
  -- The last event keeps where the job was (progress, stage) and nothing of its content.
  local kept = {'job_id', 'token_id', 'progress', 'stage', 'created_at'}
  local values = redis.call('HMGET', hash, unpack(kept))
  local entry = {}
  for i, name in ipairs(kept) do
    if values[i] and values[i] ~= '' then
      entry[#entry + 1] = name
      entry[#entry + 1] = values[i]
    end
  end
  entry[#entry + 1] = 'status'
  entry[#entry + 1] = 'deleted'
  entry[#entry + 1] = 'message'
  entry[#entry + 1] = 'Deleted on request'
  entry[#entry + 1] = 'updated_at'
  entry[#entry + 1] = updated_at
  for i = 1, #entry, 2 do snapshot[entry[i]] = entry[i + 1] end

  id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(entry))
  token_event_id = redis.call('XADD', token_stream, 'MAXLEN', '~', maxlen * 5, '*', unpack(entry))
  redis.call('EXPIRE', token_stream, token_ttl)
end

if dedupe ~= hash and redis.call('GET', dedupe) == job_id then redis.call('DEL', dedupe) end
for _, delivery in ipairs(redis.call('SMEMBERS', callbacks)) do
  redis.call('ZREM', due, delivery)
  redis.call('ZREM', dead, delivery)
  redis.call('DEL', callback_prefix .. delivery)
end
redis.call('DEL', callbacks, hash, stream)
redis.call('ZREM', token_jobs, job_id)
redis.call('ZREM', active, job_id)
redis.call('SREM', root_dedups, job_id)
local function drop_if_unheld(set)
  for _, other in ipairs(redis.call('SMEMBERS', set)) do
    if live(job_prefix, other) then return end
  end
  redis.call('DEL', set)
end
drop_if_unheld(own_dedups)
if root_dedups ~= own_dedups and redis.call('EXISTS', job_prefix .. root) == 0 then
  drop_if_unheld(root_dedups)
end

if exists then
  redis.call('PUBLISH', channel, cjson.encode({job_id = job_id, token_id = token_id, id = id,
    token_event_id = token_event_id, snapshot = snapshot}))
end
return {1, id}
