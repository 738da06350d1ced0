//! The fleet's counters in Redis: what one sync sends and gets back, and the scripts that do it
//! (see [`crate::limit::fleet`] for how the counts are used).
//!
//! Per key id, one small script adds what this gateway admitted since its last sync to the
//! key's shared counters and returns their new totals: `{prefix}fleet:{<id>}:rate` (expires
//! once nobody has used the key for a while) and, for a key with a quota,
//! `{prefix}fleet:{<id>}:quota:<period>` (expires after its period). Both names hash on the key
//! id alone, so a cluster keeps them in one slot and can run the script. The members of the
//! fleet (the `N` of the bound) are a sorted set, `{prefix}fleet:members`, scored by Redis's
//! own clock so that gateways' clocks need not agree.

use crate::key::KeyId;
use std::sync::OnceLock;
use std::time::Duration;

/// One sync's request.
pub struct Exchange<'a> {
    /// This gateway, in the members set (a random id, nothing secret).
    pub instance: &'a str,
    /// How long a gateway counts as a member after its last sync.
    pub member_window: Duration,
    /// How long a rate counter outlives its last use.
    pub rate_ttl: Duration,
    pub keys: Vec<KeyDelta>,
}

/// One key's part of a sync.
pub struct KeyDelta {
    pub id: KeyId,
    /// Requests admitted here and not yet counted in Redis.
    pub delta: u64,
    pub quota: Option<QuotaCounter>,
}

/// Which quota counter a key's delta also goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaCounter {
    /// The period's number ([`crate::store::record::QuotaPeriod::at`]).
    pub stamp: u32,
    /// Unix second at which the counter is deleted: after its period, with a margin.
    pub expire_at: u64,
}

/// One sync's answer: the fleet's size and, in the order sent, each key's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanged {
    pub members: u32,
    pub totals: Vec<KeyTotals>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTotals {
    /// The key's rate counter after this sync's delta.
    pub rate: u64,
    /// Its quota counter for the period sent, when one was.
    pub quota: Option<u64>,
}

/// KEYS: the rate counter, the quota counter (optional). ARGV: delta, the rate counter's TTL in
/// ms, the quota counter's expiry (unix s). Returns the totals.
const KEY_SCRIPT: &str = r"
local rate = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if #KEYS < 2 then return {rate} end
local quota = redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('EXPIREAT', KEYS[2], ARGV[3])
return {rate, quota}
";

/// The same for many keys in one call, on one server (not a cluster: the keys span slots).
/// KEYS: each key's rate counter, followed by its quota counter when it has one. ARGV: the rate
/// counters' TTL in ms, then per key: delta, 1 or 0 (a quota counter follows), its expiry.
/// Returns per key: rate total, quota total (-1 for none).
const BATCH_SCRIPT: &str = r"
local out, k = {}, 1
for i = 2, #ARGV, 3 do
  local rate = redis.call('INCRBY', KEYS[k], ARGV[i])
  redis.call('PEXPIRE', KEYS[k], ARGV[1])
  k = k + 1
  local quota = -1
  if ARGV[i + 1] == '1' then
    quota = redis.call('INCRBY', KEYS[k], ARGV[i])
    redis.call('EXPIREAT', KEYS[k], ARGV[i + 2])
    k = k + 1
  end
  out[#out + 1] = rate
  out[#out + 1] = quota
end
return out
";

/// Keys per batch call: big enough that a sync is a handful of calls, small enough that one
/// call holds Redis for well under a millisecond.
const BATCH: usize = 200;

/// KEYS: the members set. ARGV: this instance, the window in ms. Returns the member count.
const MEMBERS_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
";

/// The scripts' SHA-1 names, as Redis gave them when first loaded (a function of the text
/// alone, so good for every server).
static HASHES: OnceLock<[String; 3]> = OnceLock::new();

/// The scripts' names, loading the scripts to learn them the first time (on every master of a
/// cluster: `SCRIPT LOAD` goes to all of them).
pub(super) async fn hashes(
    connection: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<&'static [String; 3]> {
    if let Some(hashes) = HASHES.get() {
        return Ok(hashes);
    }
    let mut loaded = Vec::new();
    for script in SCRIPTS {
        loaded.push(redis::cmd("SCRIPT").arg("LOAD").arg(script).query_async::<String>(connection).await?);
    }
    let [key, members, batch] = <[String; 3]>::try_from(loaded).expect("three scripts");
    Ok(HASHES.get_or_init(|| [key, members, batch]))
}

const SCRIPTS: [&str; 3] = [KEY_SCRIPT, MEMBERS_SCRIPT, BATCH_SCRIPT];

/// `SCRIPT LOAD` of the scripts: nothing when they are there, and they are again after a
/// restart or a failover flushed them.
pub(super) fn load_scripts(pipe: &mut redis::Pipeline) {
    for script in SCRIPTS {
        pipe.cmd("SCRIPT").arg("LOAD").arg(script).ignore();
    }
}

/// The batch script's call for `keys`.
fn batch_call(hash: &str, prefix: &str, keys: &[KeyDelta], rate_ttl: Duration) -> redis::Cmd {
    let mut names = Vec::with_capacity(keys.len() * 2);
    let mut args = vec![rate_ttl.as_millis() as u64];
    for key in keys {
        names.push(format!("{prefix}fleet:{{{}}}:rate", key.id));
        if let Some(quota) = key.quota {
            names.push(format!("{prefix}fleet:{{{}}}:quota:{}", key.id, quota.stamp));
        }
        args.extend([key.delta, u64::from(key.quota.is_some()), key.quota.map_or(0, |q| q.expire_at)]);
    }
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(hash).arg(names.len()).arg(names).arg(args);
    cmd
}

/// One key's script call.
pub(super) fn key_call(hash: &str, prefix: &str, key: &KeyDelta, rate_ttl: Duration) -> redis::Cmd {
    let mut names = vec![format!("{prefix}fleet:{{{}}}:rate", key.id)];
    if let Some(quota) = key.quota {
        names.push(format!("{prefix}fleet:{{{}}}:quota:{}", key.id, quota.stamp));
    }
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(hash).arg(names.len()).arg(names);
    cmd.arg(key.delta).arg(rate_ttl.as_millis() as u64).arg(key.quota.map_or(0, |q| q.expire_at));
    cmd
}

/// The members script's call.
pub(super) fn members_call(hash: &str, prefix: &str, exchange: &Exchange<'_>) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(hash).arg(1).arg(format!("{prefix}fleet:members"));
    cmd.arg(exchange.instance).arg(exchange.member_window.as_millis() as u64);
    cmd
}

/// A key script's reply as totals.
pub(super) fn totals_of(reply: Vec<u64>) -> Result<KeyTotals, &'static str> {
    match reply[..] {
        [rate] => Ok(KeyTotals { rate, quota: None }),
        [rate, quota] => Ok(KeyTotals { rate, quota: Some(quota) }),
        _ => Err("a fleet counter script answered an unexpected shape"),
    }
}

/// One pipeline on one server: the scripts loaded (a no-op when they are), the membership, then
/// the keys, `BATCH` to a script call, all in one round trip.
pub(super) async fn exchange_on(
    connection: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    exchange: &Exchange<'_>,
) -> redis::RedisResult<Exchanged> {
    let [_, members_hash, batch_hash] = hashes(connection).await?;
    let mut pipe = redis::pipe();
    load_scripts(&mut pipe);
    pipe.add_command(members_call(members_hash, prefix, exchange));
    for keys in exchange.keys.chunks(BATCH) {
        pipe.add_command(batch_call(batch_hash, prefix, keys, exchange.rate_ttl));
    }
    let mut values: Vec<redis::Value> = pipe.query_async(connection).await?;
    let batches = values.split_off(1.min(values.len()));
    let members = values.pop().ok_or_else(|| bad_reply("a fleet sync answered nothing"))?;
    let members: u32 = redis::from_redis_value(members)?;
    let mut totals = Vec::with_capacity(exchange.keys.len());
    for batch in batches {
        let pairs: Vec<i64> = redis::from_redis_value(batch)?;
        totals.extend(pairs.chunks_exact(2).map(|pair| KeyTotals {
            rate: pair[0].max(0) as u64,
            quota: (pair[1] >= 0).then_some(pair[1] as u64),
        }));
    }
    Ok(Exchanged { members, totals })
}

pub(super) fn bad_reply(why: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, why))
}
