//! `keygate keys add|revoke|show`: key management against the configured store.
//!
//! Redis: the record is written (replaced whole by `add`) in one transaction, then its id is
//! announced on `{prefix}invalidate`, so every gateway applies it within a second. Under
//! Sentinel the master is asked of the sentinels, and asked again (for up to ten seconds) when
//! it answers as a replica or goes away mid-command, or when no replica acknowledged the write
//! (see [`replicated`]: a write the old master took after its replica's promotion is lost when
//! it is demoted, so it is done again on whichever master the sentinels name); in a cluster redis-rs's cluster client
//! routes the record to its slot's master (classic PUBLISH reaches every node). File store:
//! the entry is written by id (never the key itself) and the gateways pick it up on SIGHUP.
//! Nothing here ever prints a key: output names the key's id.

use crate::config::{Config, NodeAddress, RedisAuth, RedisNodes, StoreBackend};
use crate::key::{ApiKey, KeyId};
use crate::store::nodes;
use crate::store::record::{unix_now, KeyRecord};
use crate::store::redis::RedisStore;
use crate::store::sentinel::SentinelGroup;
use anyhow::Context;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use serde_yaml::{Mapping, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// What to do to a key.
pub enum KeyCommand {
    Add(KeyRecord),
    Revoke,
    Show,
}

impl KeyCommand {
    /// Whether it changes the store (and must survive a failover).
    fn writes(&self) -> bool {
        !matches!(self, KeyCommand::Show)
    }
}

/// Runs `command` for `key` against the store `config` names; what to print on success.
pub fn run(config: &Config, key: &str, command: KeyCommand) -> anyhow::Result<String> {
    let key = ApiKey::from_cli(key);
    if let KeyCommand::Add(record) = &command {
        record.clone().checked().context("invalid record")?;
    }
    let id = key.id();
    match &config.store.backend {
        StoreBackend::Redis { nodes, auth, prefix } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(in_redis(nodes, auth, prefix, id, command))
        }
        StoreBackend::File(path) => in_file(path, id, command),
    }
}

/// How long `keys` goes on trying through a failover (Sentinel, cluster) before giving up.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(10);
/// How long one connection may take to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replica may take to acknowledge a write (`WAIT`): a connected replica does in a
/// round trip; one that does not within this is taken as gone (or promoted), and the write is
/// done again.
const REPLICA_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a command against Redis did not succeed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("cannot reach Redis: {0}")]
    Unreachable(String),
    /// Redis answered, and the answer is the end of it (no such record).
    #[error("{0}")]
    Refused(String),
    /// The master took the write but no replica acknowledged it, while the sentinels hold a
    /// replica able to take over: a failover may lose it.
    #[error("no replica acknowledged the write; it may be lost if the master is replaced")]
    NotReplicated,
}

async fn in_redis(
    nodes: &RedisNodes,
    auth: &RedisAuth,
    prefix: &str,
    id: KeyId,
    command: KeyCommand,
) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let attempt = match nodes {
            RedisNodes::Url(url) => {
                // One server: one attempt, as it always was.
                let mut con = connect(nodes::url_info(url, auth)?).await?;
                return Ok(apply(&mut con, prefix, id, &command).await?);
            }
            RedisNodes::Sentinel { master, nodes } => {
                let group =
                    SentinelGroup { master: master.clone(), sentinels: nodes.clone(), auth: auth.clone() };
                match group.resolve().await {
                    Ok(address) => match connect(nodes::node_info(&address, auth)?).await {
                        Ok(mut con) => match apply(&mut con, prefix, id, &command).await {
                            Ok(message) if command.writes() => {
                                replicated(&mut con, &group, &address).await.map(|()| message)
                            }
                            other => other,
                        },
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(Failure::Unreachable(e.to_string())),
                }
            }
            RedisNodes::Cluster { nodes } => {
                let infos = nodes.iter().map(|n| nodes::node_info(n, auth)).collect::<Result<Vec<_>, _>>()?;
                let client = redis::cluster::ClusterClient::new(infos)?;
                match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection()).await {
                    Ok(Ok(mut con)) => apply(&mut con, prefix, id, &command).await,
                    Ok(Err(e)) => Err(Failure::Unreachable(e.to_string())),
                    Err(_) => Err(Failure::Unreachable("timed out".into())),
                }
            }
        };
        match attempt {
            Ok(message) => return Ok(message),
            // A master being replaced: ask again where it is, for a while.
            Err(Failure::Redis(e)) if nodes::may_have_moved(&e) && started.elapsed() < FAILOVER_PATIENCE => {}
            Err(Failure::Unreachable(_) | Failure::NotReplicated)
                if started.elapsed() < FAILOVER_PATIENCE => {}
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether the write just made over `con` (the master the sentinels named) will survive a
/// failover. Sentinel promotes a replica without stopping writes on the master: during a
/// failover the old master goes on answering as a master, and taking writes, until the
/// sentinels demote it, and whatever it took after its replica's promotion is then thrown away.
/// A replica that acknowledges the write (`WAIT 1`) has it; a promoted replica no longer
/// acknowledges the old master, so a write the failover would lose is never acknowledged. When
/// none acknowledges (a master with no replica, or one whose replica was promoted, or whose old
/// master is not yet reconfigured as its replica), the write stands only if every sentinel that
/// answers names this master and none is failing it over; else it is done again wherever they
/// name the master, until it stands. (The sentinel leading a failover names the old master
/// until it ends, a second or more after the promotion, but says meanwhile that a failover is
/// in progress. Its word alone would not do: a write made just before a failover began may not
/// have reached the replica promoted; an acknowledgement says it has.) (Replication stays asynchronous: a write no
/// replica acknowledged within the timeout, on a master no one was failing over, can still be
/// lost if a lagging replica is promoted later, as with any Redis writer.)
async fn replicated(
    con: &mut MultiplexedConnection,
    group: &SentinelGroup,
    master: &NodeAddress,
) -> Result<(), Failure> {
    // With no replica connected none can acknowledge: the sentinels' word is all there is, and
    // waiting out the timeout (a master alone, or just after a failover) would only slow `keys`.
    let info: String = redis::cmd("INFO").arg("replication").query_async(con).await?;
    let connected = info
        .lines()
        .find_map(|line| line.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let acknowledged: usize = if connected > 0 {
        redis::cmd("WAIT").arg(1).arg(REPLICA_ACK_TIMEOUT.as_millis() as u64).query_async(con).await?
    } else {
        0
    };
    if acknowledged >= 1 || group.settled_on(master).await {
        return Ok(());
    }
    Err(Failure::NotReplicated)
}

async fn connect(info: redis::ConnectionInfo) -> Result<MultiplexedConnection, Failure> {
    match tokio::time::timeout(CONNECT_TIMEOUT, nodes::connect(info, CONNECT_TIMEOUT)).await {
        Ok(Ok(con)) => Ok(con),
        Ok(Err(e)) => Err(Failure::Unreachable(e.to_string())),
        Err(_) => Err(Failure::Unreachable("timed out".into())),
    }
}

/// Runs `command` over `con`: the master's connection, or the cluster's.
async fn apply<C: ConnectionLike + Send>(
    con: &mut C,
    prefix: &str,
    id: KeyId,
    command: &KeyCommand,
) -> Result<String, Failure> {
    let name = RedisStore::record_key(prefix, &id);
    let channel = format!("{prefix}invalidate");
    let announce = redis::cmd("PUBLISH").arg(&channel).arg(id.to_hex()).clone();
    match command {
        KeyCommand::Add(record) => {
            let mut hset = redis::cmd("HSET");
            hset.arg(&name);
            for (field, value) in record.to_fields() {
                hset.arg(field).arg(value);
            }
            redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(&name)
                .ignore()
                .add_command(hset)
                .ignore()
                .query_async::<()>(con)
                .await?;
            announce.query_async::<()>(con).await?;
            Ok(format!("added key id {id} for app {}; announced on {channel}", record.app))
        }
        KeyCommand::Revoke => {
            if !redis::cmd("EXISTS").arg(&name).query_async::<bool>(con).await? {
                return Err(Failure::Refused(format!("no record for key id {id}")));
            }
            redis::cmd("HSET").arg(&name).arg("status").arg("revoked").query_async::<()>(con).await?;
            announce.query_async::<()>(con).await?;
            Ok(format!("revoked key id {id}; announced on {channel}"))
        }
        KeyCommand::Show => {
            let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(&name).query_async(con).await?;
            if fields.is_empty() {
                return Err(Failure::Refused(format!("no record for key id {id}")));
            }
            Ok(describe(id, &KeyRecord::from_fields(&fields).unwrap_or_else(|_| KeyRecord::invalid())))
        }
    }
}

fn in_file(path: &Path, id: KeyId, command: KeyCommand) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut document: Value = serde_yaml::from_str(&text)?;
    let entries = document
        .get_mut("keys")
        .and_then(Value::as_sequence_mut)
        .with_context(|| format!("{}: no `keys` list", path.display()))?;
    let position = entries.iter().position(|entry| entry_id(entry) == Some(id));
    let reload = "send the gateway SIGHUP (systemctl reload keygate) to apply it";
    let message = match command {
        KeyCommand::Add(record) => {
            let entry = file_entry(id, &record);
            match position {
                Some(at) => entries[at] = entry,
                None => entries.push(entry),
            }
            format!("added key id {id} for app {} to {}; {reload}", record.app, path.display())
        }
        KeyCommand::Revoke => {
            let at = position.with_context(|| format!("no record for key id {id}"))?;
            let mut record = crate::store::file::read_keys(path)?
                .remove(&id)
                .with_context(|| format!("no record for key id {id}"))?;
            record.status = "revoked".into();
            entries[at] = file_entry(id, &record);
            format!("revoked key id {id} in {}; {reload}", path.display())
        }
        KeyCommand::Show => {
            let records = crate::store::file::read_keys(path)?;
            let record = records.get(&id).with_context(|| format!("no record for key id {id}"))?;
            return Ok(describe(id, record));
        }
    };
    std::fs::write(path, serde_yaml::to_string(&document)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(message)
}

/// The id an entry of the key file stands for, by `key` or by `id`.
fn entry_id(entry: &Value) -> Option<KeyId> {
    match (entry.get("key").and_then(Value::as_str), entry.get("id").and_then(Value::as_str)) {
        (Some(key), _) => Some(ApiKey::from_cli(key).id()),
        (None, Some(id)) => KeyId::from_hex(id),
        _ => None,
    }
}

/// A key file entry, by id: the key itself is never written.
fn file_entry(id: KeyId, record: &KeyRecord) -> Value {
    let mut entry = Mapping::new();
    entry.insert("id".into(), id.to_hex().into());
    entry.insert("app".into(), record.app.as_ref().into());
    entry.insert("status".into(), record.status.as_str().into());
    if let Some(rate) = record.rate {
        entry.insert("rate".into(), rate.into());
    }
    if let Some(burst) = record.burst {
        entry.insert("burst".into(), u64::from(burst).into());
    }
    if let Some(expires) = record.expires {
        entry.insert("expires".into(), expires.into());
    }
    Value::Mapping(entry)
}

/// The record as `keys show` prints it: the id, never the key.
fn describe(id: KeyId, record: &KeyRecord) -> String {
    let mut out = format!("id: {id}\napp: {}\nstatus: {}\n", record.app, record.status);
    if let Some(rate) = record.rate {
        out.push_str(&format!("rate: {rate}\n"));
    }
    if let Some(burst) = record.burst {
        out.push_str(&format!("burst: {burst}\n"));
    }
    if let Some(expires) = record.expires {
        out.push_str(&format!("expires: {expires}\n"));
    }
    out.push_str(&format!("enabled: {}", record.is_enabled_at(unix_now())));
    out
}
