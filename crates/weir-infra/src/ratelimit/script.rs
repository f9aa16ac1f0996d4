//! The Lua scripts the Redis store runs: GCRA over every key of one decision, and the give-back
//! for a cross-slot decision that another slot refused.
//!
//! Lua numbers in Redis are doubles, exact for integers below 2^53. Nanoseconds since the Unix
//! epoch (~1.8e18) are not, so a TAT is stored as a decimal string of nanoseconds and read as
//! two numbers, seconds and nanoseconds; every quantity the arithmetic needs is a distance from
//! now (at most `interval + tolerance`, checked to stay below 2^52 ns by the caller), which is
//! exact. `now` comes from `TIME` (microsecond resolution); everything else is nanoseconds,
//! exactly as in `weir_domain::ratelimit::Rate::decide`.

/// Shared by both scripts: the clock, and the distance from now to a stored TAT.
macro_rules! prelude {
    () => {
        r"
if redis.replicate_commands then redis.replicate_commands() end
local E9 = 1000000000
local clock = redis.call('TIME')
local now_s, now_ns = tonumber(clock[1]), tonumber(clock[2]) * 1000

-- Nanoseconds from now until the TAT stored at key: 0 when absent, past or unreadable.
local function ahead_of(key)
  local v = redis.call('GET', key)
  if not v then return 0 end
  local n = #v
  local s, ns
  if n > 9 then
    s, ns = tonumber(string.sub(v, 1, n - 9)), tonumber(string.sub(v, n - 8))
  else
    s, ns = 0, tonumber(v)
  end
  if not s or not ns then return 0 end
  local d = (s - now_s) * E9 + (ns - now_ns)
  if d < 0 then return 0 end
  return d
end

-- Stores the TAT `ahead` nanoseconds from now; the key expires once it has passed.
local function store(key, ahead)
  local ns = now_ns + ahead
  local carry = math.floor(ns / E9)
  redis.call('SET', key, string.format('%d%09d', now_s + carry, ns - carry * E9),
    'PX', math.floor(ahead / 1000000) + 2)
end
"
    };
}

/// KEYS: one per check. ARGV: `interval, tolerance` (nanoseconds) per check.
/// Returns `{1, remaining_1, reset_after_1, ...}` when every key admits (and stores every new
/// TAT), or `{0, index (1-based), retry_after, reset_after}` for the first key that refuses
/// (and stores nothing).
pub(super) const DECIDE: &str = concat!(
    prelude!(),
    r"
local out = {1}
local pending = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local interval, tolerance = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local ahead_now = pending[key]
  if ahead_now == nil then ahead_now = ahead_of(key) end
  local ahead = ahead_now + interval
  if ahead > tolerance then
    return {0, i, ahead - tolerance, ahead_now}
  end
  pending[key] = ahead
  out[2 * i] = math.floor((tolerance - ahead) / interval)
  out[2 * i + 1] = ahead
end
for key, ahead in pairs(pending) do
  store(key, ahead)
end
return out
"
);

/// KEYS: the keys a decision took from. ARGV: each key's interval (nanoseconds).
/// Moves each TAT back by one interval (deleting a key whose TAT falls to now or before).
pub(super) const GIVE_BACK: &str = concat!(
    prelude!(),
    r"
for i = 1, #KEYS do
  local ahead = ahead_of(KEYS[i]) - tonumber(ARGV[i])
  if ahead > 0 then
    store(KEYS[i], ahead)
  else
    redis.call('DEL', KEYS[i])
  end
end
return 0
"
);

/// The line that reads the clock, which tests replace with a fixed `now`.
#[cfg(test)]
pub(super) const CLOCK_LINE: &str =
    "local now_s, now_ns = tonumber(clock[1]), tonumber(clock[2]) * 1000";
