"""The Lua scripts of the Redis store. Each touches the keys of one contact only (one
hash tag, so one Cluster slot), runs atomically, and is called by EVALSHA in pipelines.

Times come in as decimal strings computed in Python: Lua 5.1 formats numbers with 14
significant digits, too few to print a millisecond timestamp back reliably.
"""

from __future__ import annotations

#: Look up (and, given a contact, make) the link of one anonymous id.
#: KEYS: alias key, the anonymous profile's blob key. ARGV: contact or '', ttl ms.
#: Returns {target or '', 1 if linked now, 1 if the anonymous profile still exists}.
LINK = """
local target = redis.call('GET', KEYS[1])
local linked = 0
if not target and ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1])
  target = ARGV[1]
  linked = 1
end
if target then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {target or '', linked, redis.call('EXISTS', KEYS[2])}
"""

#: Remove an anonymous id's link only if it points to the contact being erased, with
#: whatever is left of that anonymous profile.
#: KEYS: alias key, anonymous blob, log and sends keys. ARGV: contact.
UNLINK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  return 1
end
return 0
"""

#: Claim due timers. KEYS: timer set. ARGV: now ms, limit. Returns member, due, ...
POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do redis.call('ZREM', KEYS[1], due[i]) end
return due
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
#: KEYS: blob hash, log, sends.
#: ARGV: expected version (-1: replace the log whatever is there), blob, horizon ms,
#:       ttl ms, n adds, (score, member) * n, n removes, member * n, n sends, (score, member) * n.
#: A retried commit that already landed (version one ahead, same blob) is a no-op.
COMMIT = """
local ver = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
local expected = tonumber(ARGV[1])
if expected >= 0 and ver ~= expected then
  if ver == expected + 1 and redis.call('HGET', KEYS[1], 'blob') == ARGV[2] then return ver end
  return redis.error_reply('CONFLICT ' .. KEYS[1] .. ' is at version ' .. ver .. ', expected ' .. expected)
end
if expected < 0 then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'blob', ARGV[2], 'ver', ver + 1)
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
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[4]) end
return ver + 1
"""

#: Check the caps and record a send in one atomic step.
#: KEYS: sends. ARGV: member, send ms, channel, counts toward global caps (1/0), ttl ms,
#:       lowest 'since' of all caps, n channel caps, (since ms, limit) * n,
#:       n global caps, (since ms, limit) * n, n message channels, channel * n.
#: Returns 1 (recorded now or already recorded: a replay) or 0 (a cap is full).
RESERVE = """
local sends = KEYS[1]
if redis.call('ZSCORE', sends, ARGV[1]) then return 1 end
local channel = ARGV[3]
local rows = redis.call('ZRANGEBYSCORE', sends, '(' .. ARGV[6], '+inf', 'WITHSCORES')
local chans, times = {}, {}
for r = 1, #rows, 2 do
  local cut = string.find(rows[r], '\\31', 1, true)
  chans[#chans + 1] = string.sub(rows[r], 1, cut - 1)
  times[#times + 1] = tonumber(rows[r + 1])
end
local i = 7
local n = tonumber(ARGV[i]); i = i + 1
for c = 1, n do
  local since, limit, count = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), 0
  i = i + 2
  for r = 1, #chans do
    if chans[r] == channel and times[r] > since then count = count + 1 end
  end
  if count >= limit then return 0 end
end
local ng = tonumber(ARGV[i]); i = i + 1
local gstart = i
i = i + 2 * ng
local nm = tonumber(ARGV[i]); i = i + 1
local messages = {}
for m = 1, nm do messages[ARGV[i]] = true; i = i + 1 end
if ARGV[4] == '1' then
  for g = 0, ng - 1 do
    local since, limit, count = tonumber(ARGV[gstart + 2 * g]), tonumber(ARGV[gstart + 2 * g + 1]), 0
    for r = 1, #chans do
      if messages[chans[r]] and times[r] > since then count = count + 1 end
    end
    if count >= limit then return 0 end
  end
end
redis.call('ZADD', sends, ARGV[2], ARGV[1])
redis.call('PEXPIRE', sends, ARGV[5])
return 1
"""

SCRIPTS: dict[str, str] = {
    "link": LINK,
    "unlink": UNLINK,
    "pop_due": POP_DUE,
    "load": LOAD,
    "commit": COMMIT,
    "reserve": RESERVE,
}
