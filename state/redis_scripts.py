"""The Lua scripts of the Redis store. Each touches the keys of one contact only (one
hash tag, so one Cluster slot), runs atomically, and is called by EVALSHA in pipelines.

Times come in as decimal strings computed in Python: Lua 5.1 formats numbers with 14
significant digits, too few to print a millisecond timestamp back reliably.
"""

from __future__ import annotations

#: Look up (and, given a contact, make) the link of one anonymous id. A link is made at the
#: start of a batch, before that batch commits; the id of the event that made it is kept
#: beside it until the merge lands (the commit deletes it). Should the process die in
#: between, the replay of that event finds its own id there and merges again, as the first
#: time: the anonymous history before it is never silently resolved straight to the contact.
#: KEYS: alias key, the anonymous profile's blob key, the pending-merge key.
#: ARGV: contact or '', ttl ms, the id of the batch's first event linking the two or ''.
#: Returns {target or '', 1 if linked now (or the linking event is replayed), 1 if the
#: anonymous profile still exists}.
LINK = """
local target = redis.call('GET', KEYS[1])
local linked = 0
if not target and ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2])
  target = ARGV[1]
  linked = 1
elseif target and target == ARGV[1] and ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
  linked = 1
end
if target then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {target or '', linked, redis.call('EXISTS', KEYS[2])}
"""

#: Remove an anonymous id's link only if it points to the contact being erased, with
#: whatever is left of that anonymous profile.
#: KEYS: alias key, anonymous blob, log and sends keys, pending-merge key. ARGV: contact.
UNLINK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  return 1
end
return 0
"""

#: Claim due timers of one shard: move them from the due set to the in-flight set, where
#: they stay until the commit of the batch that fired them (a crash in between puts
#: them back at the next start, see RESTORE_CLAIMED). KEYS: due, in-flight (one shard).
#: ARGV: now ms, limit. Returns member, due, ...
CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('ZADD', KEYS[2], due[i + 1], due[i])
end
return due
"""

#: Put claimed timers back (claimed beyond the limit, or claimed by a process that died
#: before committing). A timer set again since (a member already due) keeps its new time.
#: KEYS: due, in-flight. ARGV: members to put back ('*' for all). Returns how many.
RESTORE_CLAIMED = """
local rows
if ARGV[1] == '*' then
  rows = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
else
  rows = {}
  for i = 1, #ARGV do
    local score = redis.call('ZSCORE', KEYS[2], ARGV[i])
    if score then rows[#rows + 1] = ARGV[i]; rows[#rows + 1] = score end
  end
end
for i = 1, #rows, 2 do
  redis.call('ZADD', KEYS[1], 'NX', rows[i + 1], rows[i])
  redis.call('ZREM', KEYS[2], rows[i])
end
return #rows / 2
"""

#: One output is done with an outbox entry (``d`` the decisions topic, ``c`` the channel
#: delivery); the record goes once no output still needs it. KEYS: outbox. ARGV: marker
#: field, record field, the other marker field.
OUTBOX_ACK = """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then redis.call('HDEL', KEYS[1], ARGV[2]) end
return redis.call('HLEN', KEYS[1])
"""

#: Read one profile. KEYS: blob hash, log, sends. ARGV: the version the caller holds
#: in its cache ('-1': none). Returns {version} when that is still current (nothing else
#: to send), else {version, blob, log, sends}.
LOAD = """
local h = redis.call('HMGET', KEYS[1], 'blob', 'ver')
local ver = h[2] or '0'
if ver == ARGV[1] then return {ver} end
return {ver, h[1] or '',
        redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'),
        redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')}
"""

#: Write one profile's changes: compare-and-set on its version, log entries added and
#: removed, sends, eviction of everything older than the longest window, TTL.
#: The decisions made for the profile in the same batch go into its outbox in the same
#: atomic step, so a decision exists exactly when the state that made it does.
#: KEYS: blob hash, log, sends, outbox.
#: ARGV: expected version (-1: replace the log whatever is there), blob, horizon ms,
#:       ttl ms, n adds, (score, member) * n, n removes, member * n, n sends, (score, member) * n,
#:       n outbox fields, (field, value) * n, the commit's name (unique per commit, the same
#:       across its retries: RedisStore's CommitNames), kept in the field 'dig'.
#: A retried commit that already landed (version one ahead, same name) is a no-op; another
#: writer's commit from the same version is a CONFLICT even if it left the same blob.
COMMIT = """
local ver = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
local expected = tonumber(ARGV[1])
local name = ARGV[#ARGV]
if expected >= 0 and ver ~= expected then
  if ver == expected + 1 and redis.call('HGET', KEYS[1], 'dig') == name then return ver end
  return redis.error_reply('CONFLICT ' .. KEYS[1] .. ' is at version ' .. ver .. ', expected ' .. expected)
end
if expected < 0 then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'blob', ARGV[2], 'ver', ver + 1, 'dig', name)
local i = 5
local function pairs_into(key)
  local n = tonumber(ARGV[i]); i = i + 1
  local last = i + 2 * n - 1
  while i <= last do
    local stop = math.min(i + 399, last)
    redis.call('ZADD', key, unpack(ARGV, i, stop))
    i = stop + 1
  end
end
pairs_into(KEYS[2])
local n = tonumber(ARGV[i]); i = i + 1
local last = i + n - 1
while i <= last do
  local stop = math.min(i + 399, last)
  redis.call('ZREM', KEYS[2], unpack(ARGV, i, stop))
  i = stop + 1
end
pairs_into(KEYS[3])
local nout = tonumber(ARGV[i] or '0'); i = i + 1
if nout > 0 then
  redis.call('HSET', KEYS[4], unpack(ARGV, i, i + 2 * nout - 1))
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[4]) end
return ver + 1
"""

#: Start a re-admitted profile afresh, unless something wrote it since the erasure.
#: KEYS: blob hash. ARGV: blob ('' for none), version (above any its erased self had), ttl ms.
SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'blob', ARGV[1]) end
redis.call('HSET', KEYS[1], 'ver', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

#: Mark tombstones re-admitted, each only if it is still the one the caller read (an erasure
#: since then wins). KEYS: tombstone hash. ARGV: (field, value read, new value) * n.
READMIT = """
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
return n
"""

#: Claim event ids for identities, in order (see StateStore.claim_ids). KEYS: the ids' claim
#: keys (one per call on Redis Cluster, where each is its own slot; a whole batch otherwise).
#: ARGV: window ms, ttl ms, then (identity digest, event time ms) per key. A claim is the
#: string "<identity> <event time>". Returns per key 1 (claimed now, or already this
#: identity's) or 0 (another identity's, within the window of its event time).
CLAIM_IDS = """
local window = tonumber(ARGV[1])
local out = {}
for k = 1, #KEYS do
  local who, ts = ARGV[2 * k + 1], ARGV[2 * k + 2]
  local ok = 1
  local held = redis.call('GET', KEYS[k])
  local cut = held and string.find(held, ' ', 1, true)
  if cut and string.sub(held, 1, cut - 1) == who then
    ok = 2
  elseif cut and math.abs(tonumber(ts) - tonumber(string.sub(held, cut + 1))) < window then
    ok = 0
  end
  if ok == 1 then redis.call('SET', KEYS[k], who .. ' ' .. ts, 'PX', ARGV[2]) end
  out[k] = math.min(ok, 1)
end
return out
"""

#: Add engagement counts by local hour to the population's (best send time), halving every
#: counter (rounding down) once their sum passes the cap. KEYS: the send-hours hash.
#: ARGV: cap, then the 24 hours' counts to add (zeros only read). Returns the 24 totals.
ADD_SEND_HOURS = """
local totals, sum = {}, 0
for h = 0, 23 do
  local add = tonumber(ARGV[h + 2])
  if add > 0 then
    totals[h + 1] = redis.call('HINCRBY', KEYS[1], h, add)
  else
    totals[h + 1] = tonumber(redis.call('HGET', KEYS[1], h) or '0')
  end
  sum = sum + totals[h + 1]
end
if sum > tonumber(ARGV[1]) then
  for h = 0, 23 do
    totals[h + 1] = math.floor(totals[h + 1] / 2)
    redis.call('HSET', KEYS[1], h, totals[h + 1])
  end
end
return totals
"""

SCRIPTS: dict[str, str] = {
    "link": LINK,
    "unlink": UNLINK,
    "claim_due": CLAIM_DUE,
    "restore_claimed": RESTORE_CLAIMED,
    "outbox_ack": OUTBOX_ACK,
    "load": LOAD,
    "commit": COMMIT,
    "seed": SEED,
    "readmit": READMIT,
    "claim_ids": CLAIM_IDS,
    "add_send_hours": ADD_SEND_HOURS,
}
