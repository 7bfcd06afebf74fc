"""The Lua scripts of the Redis room registry (rooms.py): each is one room's change,
read, decided and written in one round trip without a lock.

A peer is stored as the JSON of :class:`teleconsult.signaling.rooms.Peer`; the
scripts mirror :class:`teleconsult.signaling.rooms.LocalRooms` rule for rule
(tests/test_signaling_rooms.py runs the same cases against both).
"""

# Shared by the room scripts below: KEYS[1] is the room's hash, KEYS[2] the deadlines,
# ARGV[1] the room id, ARGV[2] now, ARGV[3] silence, ARGV[4] the room's TTL.
PRELUDE = """
local room_key, due_key = KEYS[1], KEYS[2]
local prefix = ARGV[1] .. ' '
local now, silence, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function load()
  local raw = redis.call('HGETALL', room_key)
  local peers, order = {}, {}
  for i = 1, #raw, 2 do
    peers[raw[i]] = cjson.decode(raw[i + 1])
    order[#order + 1] = raw[i]
  end
  return peers, order
end
local function in_grace(p)
  return p.connected == false and type(p.grace_until) == 'number'
end
local function expired(p)
  if in_grace(p) and p.grace_until <= now then return true end
  return p.seen + silence < now
end
local function deadline(p)
  if in_grace(p) then return p.grace_until end
  return p.seen + silence
end
local function save(p)
  redis.call('HSET', room_key, p.peer_id, cjson.encode(p))
  redis.call('EXPIRE', room_key, ttl)
  redis.call('ZADD', due_key, deadline(p), prefix .. p.peer_id)
end
local function forget(p)
  redis.call('HDEL', room_key, p.peer_id)
  redis.call('ZREM', due_key, prefix .. p.peer_id)
end
local function rest(peers, order, skip)
  local out = {}
  for _, id in ipairs(order) do
    if peers[id] ~= nil and id ~= skip then out[#out + 1] = cjson.encode(peers[id]) end
  end
  return out
end
"""

# ARGV[5] the candidate peer (JSON), ARGV[6] the peer id to rejoin or '', ARGV[7] max peers.
ENTER = (
    PRELUDE
    + """
local peers, order = load()
local gone = {}
for _, id in ipairs(order) do
  if expired(peers[id]) then
    gone[#gone + 1] = cjson.encode(peers[id])
    forget(peers[id])
    peers[id] = nil
  end
end
local me = cjson.decode(ARGV[5])
local mine = nil
if ARGV[6] ~= '' then mine = peers[ARGV[6]] end
if mine ~= nil and mine.user_id == me.user_id then
  mine.connected = true
  mine.grace_until = cjson.null
  mine.seen = now
  mine.link = me.link
  save(mine)
  return {'rejoined', cjson.encode(mine), rest(peers, order, mine.peer_id), gone}
end
local count = 0
for _, id in ipairs(order) do
  local p = peers[id]
  if p ~= nil and p.user_id == me.user_id then
    gone[#gone + 1] = cjson.encode(p)
    forget(p)
    peers[id] = nil
  elseif p ~= nil then
    count = count + 1
  end
end
if me.role ~= 'doctor' and count >= tonumber(ARGV[7]) then
  return {'full', ARGV[5], rest(peers, order, nil), gone}
end
save(me)
return {'joined', cjson.encode(me), rest(peers, order, nil), gone}
"""
)

# ARGV[5] the peer to admit, ARGV[6] max admitted peers.
ADMIT = (
    PRELUDE
    + """
local peers, order = load()
local p = peers[ARGV[5]]
if p == nil then return {'absent'} end
if p.status == 'admitted' then
  return {'unchanged', cjson.encode(p), rest(peers, order, p.peer_id)}
end
local admitted = 0
for _, id in ipairs(order) do
  if peers[id].status == 'admitted' then admitted = admitted + 1 end
end
if admitted >= tonumber(ARGV[6]) then return {'full'} end
p.status = 'admitted'
save(p)
return {'admitted', cjson.encode(p), rest(peers, order, p.peer_id)}
"""
)

# ARGV[5] the peer, ARGV[6] the link that must hold it or '', ARGV[7] '1': only if expired.
DROP = (
    PRELUDE
    + """
local peers, order = load()
local p = peers[ARGV[5]]
if p == nil then return false end
if ARGV[6] ~= '' and p.link ~= ARGV[6] then return false end
if ARGV[7] == '1' and not expired(p) then
  redis.call('ZADD', due_key, deadline(p), prefix .. p.peer_id)
  return false
end
forget(p)
return {cjson.encode(p), rest(peers, order, p.peer_id)}
"""
)

# ARGV[5] the peer, ARGV[6] the link holding it, ARGV[7] the end of its grace period.
DISCONNECT = (
    PRELUDE
    + """
local peers, order = load()
local p = peers[ARGV[5]]
if p == nil or p.link ~= ARGV[6] or p.connected == false then return false end
p.connected = false
p.grace_until = tonumber(ARGV[7])
save(p)
return {cjson.encode(p), rest(peers, order, p.peer_id)}
"""
)

# KEYS[1] the deadlines, KEYS[2..] the rooms; ARGV: now, silence, ttl, then per room
# key its room id, peer id and link. Returns the (1-based) entries not held any more.
TOUCH = """
local now, silence, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lost = {}
for i = 2, #KEYS do
  local at = 3 + (i - 2) * 3
  local room_id, peer_id, link = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local raw = redis.call('HGET', KEYS[i], peer_id)
  local p = nil
  if raw then p = cjson.decode(raw) end
  if p == nil or p.link ~= link then
    lost[#lost + 1] = i - 1
  else
    p.seen = now
    redis.call('HSET', KEYS[i], peer_id, cjson.encode(p))
    redis.call('EXPIRE', KEYS[i], ttl)
    if not (p.connected == false and type(p.grace_until) == 'number') then
      redis.call('ZADD', KEYS[1], now + silence, room_id .. ' ' .. peer_id)
    end
  end
end
return lost
"""

# KEYS[1] the deadlines; ARGV: now, limit.
DUE = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #members > 0 then redis.call('ZREM', KEYS[1], unpack(members)) end
return members
"""
