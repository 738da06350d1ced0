//! `keygate keys add|revoke|show`: key management against the configured store.
//!
//! Redis: the record is written (replaced whole by `add`) in one transaction, then its id is
//! announced on `{prefix}invalidate`, so every gateway applies it within a second. File store:
//! the entry is written by id (never the key itself) and the gateways pick it up on SIGHUP.
//! Nothing here ever prints a key: output names the key's id.

use crate::config::{Config, StoreBackend};
use crate::key::{ApiKey, KeyId};
use crate::store::record::{unix_now, KeyRecord};
use crate::store::redis::RedisStore;
use anyhow::{bail, Context};
use serde_yaml::{Mapping, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// What to do to a key.
pub enum KeyCommand {
    Add(KeyRecord),
    Revoke,
    Show,
}

/// Runs `command` for `key` against the store `config` names; what to print on success.
pub fn run(config: &Config, key: &str, command: KeyCommand) -> anyhow::Result<String> {
    let key = ApiKey::from_cli(key);
    if let KeyCommand::Add(record) = &command {
        record.clone().checked().context("invalid record")?;
    }
    let id = key.id();
    match &config.store.backend {
        StoreBackend::Redis { url, prefix } => in_redis(url, prefix, id, command),
        StoreBackend::File(path) => in_file(path, id, command),
    }
}

fn in_redis(url: &str, prefix: &str, id: KeyId, command: KeyCommand) -> anyhow::Result<String> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).context("cannot reach Redis")?;
    let name = RedisStore::record_key(prefix, &id);
    let channel = format!("{prefix}invalidate");
    let announce = |con: &mut redis::Connection| -> anyhow::Result<()> {
        redis::cmd("PUBLISH").arg(&channel).arg(id.to_hex()).query::<()>(con)?;
        Ok(())
    };
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
                .query::<()>(&mut con)?;
            announce(&mut con)?;
            Ok(format!("added key id {id} for app {}; announced on {channel}", record.app))
        }
        KeyCommand::Revoke => {
            if !redis::cmd("EXISTS").arg(&name).query::<bool>(&mut con)? {
                bail!("no record for key id {id}");
            }
            redis::cmd("HSET").arg(&name).arg("status").arg("revoked").query::<()>(&mut con)?;
            announce(&mut con)?;
            Ok(format!("revoked key id {id}; announced on {channel}"))
        }
        KeyCommand::Show => {
            let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(&name).query(&mut con)?;
            if fields.is_empty() {
                bail!("no record for key id {id}");
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
