-- Publishes a batch of one user's events, atomically and in order: numbers them, appends
-- them to the user's history stream, keeps the user's live runs, PUBLISHes them as one
-- message on the user's channel, and refreshes the TTLs. See script.rs for the contract.
--
-- KEYS: 1 meta (hash: e = epoch, s = last seq), 2 history (stream), 3 runs (hash: live
--       runs), 4 lost (hash: runs ended with node_lost), 5 batch (this node's last batch)
-- ARGV: 1 node id, 2 batch number, 3 epoch to start if there is none, 4 history max
--       events, 5 history TTL (ms), 6 state TTL (ms: meta, runs, lost), 7 batch record
--       TTL (ms), 8 channel,
--       9 lost node ('' unless a sweeper ends that node's runs),
--       then 7 per event: step, wire type, run id, thread id, emission time (us),
--       length of the run fields at the start of the tail, tail.
-- Steps: s = first event of a run, c = a later one, e = the run's last event,
--        x = node_lost for a run of the lost node: published only while the run is live
--            and owned by that node (so several sweepers end a run once).
-- Returns {status, epoch, seqs}: status 'ok', 'new' (a new epoch began) or 'stale' (a later
-- batch of this sender was applied); seqs is the comma-separated seq of each event, 0 for
-- a skipped one. A batch applied before returns what it returned then.

local meta, history, runs, lost, batch = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

local done = redis.call('HMGET', batch, 'n', 't', 'e', 's')
if done[1] then
  local last = tonumber(done[1])
  local this = tonumber(ARGV[2])
  if last == this then
    return {done[2], done[3], done[4]}
  elseif last > this then
    return {'stale', '', ''}
  end
end

local function lp(s)
  return #s .. ':' .. s
end

local status = 'ok'
local position = redis.call('HMGET', meta, 'e', 's')
local epoch, seq = position[1], tonumber(position[2])
if not epoch or not seq then
  -- Nothing known of this user (first event, expired, or Redis lost its data): a new
  -- numbering, and no history from an older one.
  epoch, seq, status = ARGV[3], 0, 'new'
  redis.call('DEL', history)
  redis.call('HSET', meta, 'e', epoch, 's', 0)
end

local max_len = ARGV[4]
local owner = lp(ARGV[1])
local lost_owner = ARGV[9] ~= '' and lp(ARGV[9]) or nil
local epoch_field = lp(epoch)
local records, seqs = {}, {}
-- Per run of the batch: its live-runs entry (false: none) and whether it was lost, read
-- from Redis once per batch, not once per event.
local live_of, lost_of = {}, {}

for i = 10, #ARGV, 7 do
  local step, kind, run, thread = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local micros, fields_len, tail = ARGV[i + 4], tonumber(ARGV[i + 5]), ARGV[i + 6]
  if live_of[run] == nil then
    live_of[run] = redis.call('HGET', runs, run)
  end
  local live = live_of[run]
  local publish = true
  if step == 'x' then
    publish = live and lost_owner and string.sub(live, 1, #lost_owner) == lost_owner
    if publish then
      redis.call('HDEL', runs, run)
      redis.call('HSET', lost, run, ARGV[1])
      redis.call('PEXPIRE', lost, ARGV[6])
      live_of[run], lost_of[run] = false, true
    end
  else
    if not live and lost_of[run] == nil then
      lost_of[run] = redis.call('HEXISTS', lost, run) == 1
    end
    if not live and lost_of[run] then
      -- The run was ended with node_lost: its owner came back too late.
      publish = false
    elseif step == 'e' then
      if live then
        redis.call('HDEL', runs, run)
        live_of[run] = false
      end
    elseif not live then
      -- A run's first event, or a later one after the runs hash was lost or expired.
      live = owner .. lp(thread) .. string.sub(tail, 1, fields_len)
      redis.call('HSET', runs, run, live)
      live_of[run] = live
    end
  end
  if publish then
    seq = seq + 1
    local n = string.format('%d', seq)
    local frame = '{"type":"' .. kind .. '","seq":' .. n .. ',"epoch":"' .. epoch .. '",' .. tail
    local record = epoch_field .. lp(n) .. lp(kind) .. lp(run) .. lp(thread) .. lp(micros) .. lp(frame)
    redis.call('XADD', history, 'MAXLEN', '~', max_len, n .. '-0', 'r', record)
    records[#records + 1] = record
    seqs[#seqs + 1] = n
  else
    seqs[#seqs + 1] = '0'
  end
end

if #records > 0 then
  redis.call('HSET', meta, 's', string.format('%d', seq))
  redis.call('PUBLISH', ARGV[8], 'aw1' .. table.concat(records))
end
redis.call('PEXPIRE', history, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[6])
redis.call('PEXPIRE', runs, ARGV[6])

local result = table.concat(seqs, ',')
redis.call('HSET', batch, 'n', ARGV[2], 't', status, 'e', epoch, 's', result)
redis.call('PEXPIRE', batch, ARGV[7])
return {status, epoch, result}
