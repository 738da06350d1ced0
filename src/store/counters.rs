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
static HASHES: OnceLock<[String; 2]> = OnceLock::new();

/// The scripts' names, loading the scripts to learn them the first time (on every master of a
/// cluster: `SCRIPT LOAD` goes to all of them).
pub(super) async fn hashes(
    connection: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<&'static [String; 2]> {
    if let Some(hashes) = HASHES.get() {
        return Ok(hashes);
    }
    let key: String = redis::cmd("SCRIPT").arg("LOAD").arg(KEY_SCRIPT).query_async(connection).await?;
    let members: String =
        redis::cmd("SCRIPT").arg("LOAD").arg(MEMBERS_SCRIPT).query_async(connection).await?;
    Ok(HASHES.get_or_init(|| [key, members]))
}

/// `SCRIPT LOAD` of both scripts: nothing when they are there, and they are again after a
/// restart or a failover flushed them.
pub(super) fn load_scripts(pipe: &mut redis::Pipeline) {
    pipe.cmd("SCRIPT").arg("LOAD").arg(KEY_SCRIPT).ignore();
    pipe.cmd("SCRIPT").arg("LOAD").arg(MEMBERS_SCRIPT).ignore();
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
/// every key's script, all in one round trip.
pub(super) async fn exchange_on(
    connection: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    exchange: &Exchange<'_>,
) -> redis::RedisResult<Exchanged> {
    let [key_hash, members_hash] = hashes(connection).await?;
    let mut pipe = redis::pipe();
    load_scripts(&mut pipe);
    pipe.add_command(members_call(members_hash, prefix, exchange));
    for key in &exchange.keys {
        pipe.add_command(key_call(key_hash, prefix, key, exchange.rate_ttl));
    }
    let mut values: Vec<redis::Value> = pipe.query_async(connection).await?;
    let keys = values.split_off(1.min(values.len()));
    let members = values.pop().ok_or_else(|| bad_reply("a fleet sync answered nothing"))?;
    let members: u32 = redis::from_redis_value(members)?;
    let replies: Vec<Vec<u64>> = keys.into_iter().map(redis::from_redis_value).collect::<Result<_, _>>()?;
    let totals = replies.into_iter().map(totals_of).collect::<Result<_, _>>().map_err(bad_reply)?;
    Ok(Exchanged { members, totals })
}

pub(super) fn bad_reply(why: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, why))
}
