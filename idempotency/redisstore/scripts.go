package redisstore

import "github.com/redis/go-redis/v9"

// The Store's operations, each one Lua script on one key (KEYS[1]), so
// Redis runs it atomically and a cluster routes it by that key. Times are
// Unix milliseconds on the Redis server's clock (TIME), so processes
// whose clocks disagree still agree on leases and expiry. The record layout
// is documented at redisRecordLayout in store.go.
//
// Scripts return arrays and integers only: a Lua false would come back as
// nil over RESP2 but as a boolean over RESP3.

// redisPrelude is shared by every script.
const redisPrelude = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- load returns the record, its state and its time at offset 42 (lease end
-- when in flight, expiry when completed or in doubt), or nil when there is
-- none.
local function load(key)
  local v = redis.call('GET', key)
  if not v then return nil end
  if string.len(v) < 50 or string.byte(v, 1) ~= 1 then
    error({err = 'ERR idempotency: record ' .. key .. ' is not in format 1'})
  end
  return v, string.byte(v, 2), struct.unpack('>i8', v, 43)
end
-- owned returns owner's in-flight record if still retained (its lease may
-- have passed, by less than the retention), else nil.
local function owned(key, owner, now, retention)
  local v, state, leaseUntil = load(key)
  if v and state == 1 and string.sub(v, 51, 66) == owner and now < leaseUntil + retention then
    return v
  end
  return nil
end
`

// ARGV: fingerprint, owner, lease ms, retention ms. Returns {owned,
// record, prior}, by idempotency.BeginRecord's rule. None retained: a new
// in-flight record, owned, prior 0. A live in-flight record by another
// owner, a completed one, or one in doubt or in flight past its lease with
// another fingerprint: returned as is, not owned, prior 0. One in doubt or
// in flight past its lease with this fingerprint: taken over, owned, keeping
// createdAt and doubts, with prior its state (1 or 3), which the new record
// keeps too. A live in-flight record of this same owner counts as owned
// (with the prior it keeps), so a Begin the client retried after a lost
// reply does not lock its own request out.
var redisBegin = redis.NewScript(redisPrelude + `
local v, state, t = load(KEYS[1])
-- A completed record's key expires at its expiresAt (Complete sets both
-- from one TIME), so one that is found is live: a replay needs no TIME.
-- (Redis drops a key once its clock is past the expiry, so it is live at
-- expiresAt itself, a millisecond longer than the other stores keep it.)
if v and state == 2 then return {0, v, 0} end
local now = now_ms()
local fp, owner, retention = ARGV[1], ARGV[2], tonumber(ARGV[4])
local created, doubts, prior = now, 0, 0
if v then
  local retained = now < t
  if state == 1 then retained = now < t + retention end
  if retained then
    if state == 1 and now < t then
      if string.sub(v, 51, 66) == owner then return {1, v, string.byte(v, 68) or 0} end
      return {0, v, 0}
    end
    if (state ~= 1 and state ~= 3) or string.sub(v, 3, 34) ~= fp then return {0, v, 0} end
    created = struct.unpack('>i8', v, 35)
    if state == 1 then doubts = string.byte(v, 67) or 0 else doubts = string.byte(v, 51) or 0 end
    prior = state
  end
end
local lease = tonumber(ARGV[3])
local rec = '\1\1' .. fp .. struct.pack('>i8>i8', created, now + lease) .. owner
if doubts > 0 or prior > 0 then rec = rec .. string.char(doubts, prior) end
redis.call('SET', KEYS[1], rec, 'PX', lease + retention)
return {1, rec, prior}
`)

// ARGV: owner, lease ms, retention ms. Keeps the owner token and what
// follows it (doubts, prior). Returns 1, or 0 when not owner.
var redisRenew = redis.NewScript(redisPrelude + `
local now = now_ms()
local v = owned(KEYS[1], ARGV[1], now, tonumber(ARGV[3]))
if not v then return 0 end
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.sub(v, 1, 42) .. struct.pack('>i8', now + lease) .. string.sub(v, 51),
  'PX', lease + tonumber(ARGV[3]))
return 1
`)

// ARGV: owner, ttl ms, retention ms, encoded response. Keeps the in-flight
// record's fingerprint and creation time. Returns 1, or 0 when not owner.
var redisComplete = redis.NewScript(redisPrelude + `
local now = now_ms()
local v = owned(KEYS[1], ARGV[1], now, tonumber(ARGV[3]))
if not v then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], '\1\2' .. string.sub(v, 3, 42) .. struct.pack('>i8', now + ttl) .. ARGV[4], 'PX', ttl)
return 1
`)

// ARGV: owner, hold ms, retention ms. Turns owner's in-flight record into
// one in doubt until now + hold (PX hold), keeping its fingerprint and
// creation time, with one more doubt (at most 255). Returns 1, or 0 when
// not owner.
var redisHold = redis.NewScript(redisPrelude + `
local now = now_ms()
local v = owned(KEYS[1], ARGV[1], now, tonumber(ARGV[3]))
if not v then return 0 end
local hold = tonumber(ARGV[2])
local doubts = math.min((string.byte(v, 67) or 0) + 1, 255)
redis.call('SET', KEYS[1], '\1\3' .. string.sub(v, 3, 42) .. struct.pack('>i8', now + hold) .. string.char(doubts),
  'PX', hold)
return 1
`)

// ARGV: owner, retention ms. Returns 1, or 0 when not owner.
var redisRelease = redis.NewScript(redisPrelude + `
local v = owned(KEYS[1], ARGV[1], now_ms(), tonumber(ARGV[2]))
if not v then return 0 end
redis.call('DEL', KEYS[1])
return 1
`)

// Returns {record} when it is live (in flight before its lease ends,
// completed or in doubt before it expires), else {}. A completed record is
// live while its key is, as in Begin, so that the two agree to the
// millisecond.
var redisGet = redis.NewScript(redisPrelude + `
local v, state, t = load(KEYS[1])
if v and (state == 2 or now_ms() < t) then return {v} end
return {}
`)

// Deletes the record whatever its state. Returns 1 when it was live (or is
// not in a format this version reads), else 0.
var redisPurge = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
redis.call('DEL', KEYS[1])
if string.len(v) >= 50 and string.byte(v, 1) == 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now >= struct.unpack('>i8', v, 43) then return 0 end
end
return 1
`)
