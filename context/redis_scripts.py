"""The Lua scripts of the Redis HistoryStore (key layout: context/redis_layout.py).

A write that touches a message and its index entries is one script, so that no reader
ever sees a message stored but unindexed, or indexed twice.
"""

# The index entries of one message (append and rewrite share them).
# KEYS: messages, live, build, done, stats1, stats2, vocab1, vocab2, docs1, docs2, then
# the n postings keys of slot 1 and the n of slot 2.
# ARGV: seq, json, packed seq, length, n, encoded terms, the n terms.
_INDEX_FN = """
local n = tonumber(ARGV[5])
local function index(slot)
  local s = (slot == '2') and 1 or 0
  for i = 1, n do redis.call('APPEND', KEYS[10 + s * n + i], ARGV[3]) end
  for i = 7, 6 + n, 500 do
    redis.call('SADD', KEYS[7 + s], unpack(ARGV, i, math.min(i + 499, 6 + n)))
  end
  redis.call('HINCRBY', KEYS[5 + s], 'docs', 1)
  redis.call('HINCRBY', KEYS[5 + s], 'words', ARGV[4])
  redis.call('HSET', KEYS[9 + s], ARGV[1], ARGV[6])
end
local live = redis.call('GET', KEYS[2]) or '1'
local build = redis.call('GET', KEYS[3])
if build == live then build = false end
"""

APPEND_LUA = _INDEX_FN + """
if redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1]) > 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
index(live)
if build then
  index(build)
  redis.call('SADD', KEYS[4], ARGV[1])
end
return 1
"""

# Replace (json non-empty) or remove (json '', n 0) the message at a seq, with its index
# entries in each slot written to and its vector.  KEYS and ARGV as for append, then
# KEYS: vectors; ARGV: the postings key prefix of slot 1, of slot 2.  The old text's terms
# are read from the slot's docs hash, not sent: with `pipe` the caller cannot read first,
# and each slot holds the terms of the analyser that built it.  Postings keys are the
# prefix .. term (StoreKeys.postings_prefix checks that the layout allows it).
REWRITE_LUA = _INDEX_FN + """
local seq, packed = ARGV[1], ARGV[3]
if redis.call('ZCOUNT', KEYS[1], seq, seq) == 0 then return 0 end
local prefixes = {ARGV[7 + n], ARGV[8 + n]}
local function without(raw)
  local parts, from, init = {}, 1, 1
  while true do
    local at = string.find(raw, packed, init, true)
    if not at then break end
    if (at - 1) % 8 == 0 then
      parts[#parts + 1] = string.sub(raw, from, at - 1)
      from = at + 8
      init = at + 8
    else
      init = at + 1
    end
  end
  if from == 1 then return nil end
  parts[#parts + 1] = string.sub(raw, from)
  return table.concat(parts)
end
local function unindex(slot)
  local s = (slot == '2') and 1 or 0
  local doc = redis.call('HGET', KEYS[9 + s], seq)
  if not doc then return end
  local length, seen = nil, {}
  for part in string.gmatch(doc, '[^\t]+') do
    if not length then
      length = tonumber(part)
    elseif not seen[part] then
      seen[part] = true
      local key = prefixes[s + 1] .. part
      local rest = without(redis.call('GET', key) or '')
      if rest == '' then
        redis.call('DEL', key)
        redis.call('SREM', KEYS[7 + s], part)
      elseif rest then
        redis.call('SET', key, rest)
      end
    end
  end
  redis.call('HINCRBY', KEYS[5 + s], 'docs', -1)
  -- 0 - x, not -x: -0 reaches Redis as "-0", which HINCRBY refuses.
  redis.call('HINCRBY', KEYS[5 + s], 'words', 0 - (length or 0))
  redis.call('HDEL', KEYS[9 + s], seq)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], seq, seq)
redis.call('ZREMRANGEBYSCORE', KEYS[#KEYS], seq, seq)
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[1], seq, ARGV[2]) end
for _, slot in ipairs({live, build}) do
  if slot then
    unindex(slot)
    if ARGV[2] ~= '' then index(slot) end
  end
end
-- A re-index batch read before this write must not index the old text after it.
if build then redis.call('SADD', KEYS[4], seq) end
return 1
"""

# One stored message into the slot being built.  KEYS: build, done, stats, vocab, docs, then
# the postings keys.  ARGV: slot, seq, packed seq, length, encoded terms, the terms.
INDEX_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 0 end
for i = 6, #KEYS do redis.call('APPEND', KEYS[i], ARGV[3]) end
for i = 6, #ARGV, 500 do
  redis.call('SADD', KEYS[4], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
redis.call('HINCRBY', KEYS[3], 'docs', 1)
redis.call('HINCRBY', KEYS[3], 'words', ARGV[4])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: live, build, done.  ARGV: the slot that was built.
SWITCH_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

# The messages with the seqs in ARGV and their indexed terms (KEYS: messages, docs), in one
# reply: message, terms, message, terms ... (false for what is missing).
FETCH_LUA = """
local out = {}
for i = 1, #ARGV do
  local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i], 'LIMIT', 0, 1)
  out[2 * i - 1] = found[1] or false
  out[2 * i] = redis.call('HGET', KEYS[2], ARGV[i]) or false
end
return out
"""

# Summaries are written by workers that may finish out of order: never go backwards. A
# conversation deleted (or reset) while its summary was being written gets none.
SET_SUMMARY_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'covers_up_to_seq')
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'text', ARGV[1], 'covers_up_to_seq', ARGV[2], 'tokens', ARGV[3])
return 1
"""


# Drop exact copies of a member (ARGV[1], kept) that sit at its score, only while it is
# still stored: a copy is never removed unless its twin stays.  KEYS: messages.
DROP_COPIES_LUA = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not at then return 0 end
local dropped = 0
for i = 2, #ARGV do
  if ARGV[i] ~= ARGV[1] and redis.call('ZSCORE', KEYS[1], ARGV[i]) == at then
    dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return dropped
"""
