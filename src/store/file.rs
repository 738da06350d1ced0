//! The file store, the embedded default for a single node or a demo: key records in a YAML file.
//!
//! ```yaml
//! keys:
//!   - key: demo-key-0001     # or `id: <sha256 hex>` to keep the key itself out of the file
//!     app: demo
//!     rate: 50               # optional: rate, burst, status, expires as in Redis
//! ```
//!
//! The file is read whole at start (and on reload); lookups never touch the disk.

use super::{KeyRecord, KeyStore, StoreError};
use crate::key::{ApiKey, KeyId};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    /// Any YAML value, so that one that is not a string is refused by us, naming the entry:
    /// serde's own error would print the value, which is a key.
    key: Option<serde_yaml::Value>,
    id: Option<String>,
    app: String,
    status: Option<String>,
    rate: Option<f64>,
    burst: Option<u32>,
    expires: Option<u64>,
}

pub struct FileStore {
    path: PathBuf,
    records: RwLock<Arc<HashMap<KeyId, KeyRecord>>>,
}

impl FileStore {
    pub fn open(path: &Path) -> Result<Self, String> {
        let records = read_keys(path)?;
        Ok(FileStore { path: path.to_path_buf(), records: RwLock::new(Arc::new(records)) })
    }

    /// Re-reads the file; on error the keys already loaded stay.
    pub fn reload(&self) -> Result<usize, String> {
        let records = read_keys(&self.path)?;
        let count = records.len();
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(records);
        Ok(count)
    }

    pub fn len(&self) -> usize {
        self.records.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads and checks a key file, naming the entry of every problem.
pub fn read_keys(path: &Path) -> Result<HashMap<KeyId, KeyRecord>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let file: KeyFile = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut records = HashMap::with_capacity(file.keys.len());
    let mut problems = Vec::new();
    for (i, entry) in file.keys.into_iter().enumerate() {
        let id = match (&entry.key, &entry.id) {
            (Some(serde_yaml::Value::String(key)), None) => Some(ApiKey::from_cli(key).id()),
            (Some(_), None) => {
                problems.push(format!("keys[{i}].key: must be a string (quote it)"));
                continue;
            }
            (None, Some(hex_id)) => KeyId::from_hex(hex_id),
            _ => None,
        };
        let Some(id) = id else {
            problems.push(format!("keys[{i}]: exactly one of `key` or `id` (64 hex digits) is required"));
            continue;
        };
        let record = KeyRecord {
            app: entry.app.as_str().into(),
            status: entry.status.as_deref().unwrap_or("active").into(),
            rate: entry.rate,
            burst: entry.burst,
            expires: entry.expires,
        };
        match record.checked() {
            Ok(record) => {
                records.insert(id, record);
            }
            Err(e) => problems.push(format!("keys[{i}]: {e}")),
        }
    }
    match problems.is_empty() {
        true => Ok(records),
        false => Err(format!("{}: {}", path.display(), problems.join("; "))),
    }
}

#[async_trait]
impl KeyStore for FileStore {
    async fn fetch(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.records.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn count_hint(&self) -> Result<usize, StoreError> {
        Ok(self.len())
    }

    async fn scan_ids(
        &self,
        _batch: usize,
        _pause: Duration,
        each: &mut (dyn FnMut(KeyId) + Send),
    ) -> Result<usize, StoreError> {
        let records = Arc::clone(&self.records.read().unwrap_or_else(|e| e.into_inner()));
        records.keys().for_each(|id| each(*id));
        Ok(records.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_keys_by_key_or_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let id = ApiKey::from_cli("second").id();
        std::fs::write(
            &path,
            format!("keys:\n  - key: first\n    app: a\n    rate: 5\n  - id: {id}\n    app: b\n"),
        )
        .unwrap();
        let store = FileStore::open(&path).unwrap();
        let first = store.fetch(&ApiKey::from_cli("first").id()).await.unwrap().unwrap();
        assert_eq!((&*first.app, first.rate), ("a", Some(5.0)));
        assert_eq!(&*store.fetch(&id).await.unwrap().unwrap().app, "b");
        assert_eq!(store.fetch(&ApiKey::from_cli("third").id()).await.unwrap(), None);
    }

    #[test]
    fn a_key_that_is_not_a_string_is_refused_without_being_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, "keys:\n  - key: 987654321\n    app: a\n  - key: '987654321'\n    app: b\n")
            .unwrap();
        let err = read_keys(&path).unwrap_err();
        assert!(err.contains("keys[0].key: must be a string"), "{err}");
        assert!(!err.contains("987654321") && !err.contains("keys[1]"), "{err}");
    }

    #[test]
    fn a_bad_file_names_each_entry_and_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, "keys:\n  - key: k\n    app: a\n").unwrap();
        let store = FileStore::open(&path).unwrap();
        std::fs::write(&path, "keys:\n  - app: a\n  - key: k\n    app: ''\n").unwrap();
        let err = store.reload().unwrap_err();
        assert!(err.contains("keys[0]") && err.contains("keys[1]"), "{err}");
        assert_eq!(store.len(), 1);
    }
}
