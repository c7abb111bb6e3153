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
-- when in flight, expiry when completed), or nil when there is none.
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

// ARGV: fingerprint, owner, lease ms, retention ms. Returns {owned, record}.
// A live record by another owner is returned as is; a live in-flight record
// of this same owner counts as owned, so a Begin the client retried after a
// lost reply does not lock its own request out.
var redisBegin = redis.NewScript(redisPrelude + `
local now = now_ms()
local v, state, t = load(KEYS[1])
if v and now < t then
  if state == 1 and string.sub(v, 51, 66) == ARGV[2] then return {1, v} end
  return {0, v}
end
local lease = tonumber(ARGV[3])
local rec = '\1\1' .. ARGV[1] .. struct.pack('>i8>i8', now, now + lease) .. ARGV[2]
redis.call('SET', KEYS[1], rec, 'PX', lease + tonumber(ARGV[4]))
return {1, rec}
`)

// ARGV: owner, lease ms, retention ms. Returns 1, or 0 when not owner.
var redisRenew = redis.NewScript(redisPrelude + `
local now = now_ms()
local v = owned(KEYS[1], ARGV[1], now, tonumber(ARGV[3]))
if not v then return 0 end
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.sub(v, 1, 42) .. struct.pack('>i8', now + lease) .. ARGV[1],
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

// ARGV: owner, retention ms. Returns 1, or 0 when not owner.
var redisRelease = redis.NewScript(redisPrelude + `
local v = owned(KEYS[1], ARGV[1], now_ms(), tonumber(ARGV[2]))
if not v then return 0 end
redis.call('DEL', KEYS[1])
return 1
`)

// Returns {record} when it is live (in flight before its lease ends,
// completed before it expires), else {}.
var redisGet = redis.NewScript(redisPrelude + `
local v, _, t = load(KEYS[1])
if v and now_ms() < t then return {v} end
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
