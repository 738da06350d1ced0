//! The file store, the embedded default for a single node or a demo: key records in a YAML file.
//!
//! ```yaml
//! keys:
//!   - key: demo-key-0001     # or `id: <sha256 hex>` to keep the key itself out of the file
//!     app: demo
//!     rate: 50               # optional: rate, burst, status, expires as in Redis
//! ```
//!
//! The file is read whole when the store is opened (at start, and on every reload, which opens
//! a new store); lookups never touch the disk.

use super::{KeyRecord, KeyStore, RecordError, StoreError};
use crate::key::{ApiKey, KeyId};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// Why a key file was refused. Each message names the file; none prints a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: cannot read", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not the shape of a key file. serde's message may quote a value, but never a
    /// `key:`'s: that field takes any value, and one that is not a string is an entry problem.
    #[error("{}: cannot parse", path.display())]
    Unparsable {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    /// Every entry that is wrong, not only the first.
    #[error("{}: {}", path.display(), list(problems))]
    Entries { path: PathBuf, problems: Vec<EntryProblem> },
}

/// What is wrong with one entry, `keys[entry]`.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error("keys[{entry}].key: must be a string (quote it)")]
    KeyNotAString { entry: usize },
    #[error("keys[{entry}]: exactly one of `key` or `id` (64 hex digits) is required")]
    NoKeyOrId { entry: usize },
    #[error("keys[{entry}]: {error}")]
    Record { entry: usize, error: RecordError },
}

fn list(problems: &[EntryProblem]) -> String {
    problems.iter().map(EntryProblem::to_string).collect::<Vec<_>>().join("; ")
}

pub struct FileStore {
    records: HashMap<KeyId, KeyRecord>,
}

impl FileStore {
    pub fn open(path: &Path) -> Result<Self, KeyFileError> {
        Ok(FileStore { records: read_keys(path)? })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
}

/// Reads and checks a key file, naming the entry of every problem.
pub fn read_keys(path: &Path) -> Result<HashMap<KeyId, KeyRecord>, KeyFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| KeyFileError::Unreadable { path: path.to_path_buf(), source })?;
    let file: KeyFile = serde_yaml::from_str(&text)
        .map_err(|source| KeyFileError::Unparsable { path: path.to_path_buf(), source })?;
    let mut records = HashMap::with_capacity(file.keys.len());
    let mut problems = Vec::new();
    for (i, entry) in file.keys.into_iter().enumerate() {
        let id = match (&entry.key, &entry.id) {
            (Some(serde_yaml::Value::String(key)), None) => Some(ApiKey::from_cli(key).id()),
            (Some(_), None) => {
                problems.push(EntryProblem::KeyNotAString { entry: i });
                continue;
            }
            (None, Some(hex_id)) => KeyId::from_hex(hex_id),
            _ => None,
        };
        let Some(id) = id else {
            problems.push(EntryProblem::NoKeyOrId { entry: i });
            continue;
        };
        let record = KeyRecord {
            app: entry.app.as_str().into(),
            status: entry.status.as_deref().unwrap_or("active").into(),
            rate: entry.rate,
            burst: entry.burst,
            expires: entry.expires,
            quota: None,
        };
        match record.checked() {
            Ok(record) => {
                records.insert(id, record);
            }
            Err(error) => problems.push(EntryProblem::Record { entry: i, error }),
        }
    }
    match problems.is_empty() {
        true => Ok(records),
        false => Err(KeyFileError::Entries { path: path.to_path_buf(), problems }),
    }
}

#[async_trait]
impl KeyStore for FileStore {
    async fn fetch(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.records.get(id).cloned())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn count_hint(&self) -> Result<usize, StoreError> {
        Ok(self.len())
    }

    async fn scan_ids(&self, each: &mut (dyn FnMut(KeyId) + Send)) -> Result<usize, StoreError> {
        self.records.keys().for_each(|id| each(*id));
        Ok(self.len())
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
        let err = read_keys(&path).unwrap_err().to_string();
        assert!(err.contains("keys[0].key: must be a string"), "{err}");
        assert!(!err.contains("987654321") && !err.contains("keys[1]"), "{err}");
    }

    #[test]
    fn a_bad_file_names_each_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, "keys:\n  - app: a\n  - key: k\n    app: ''\n  - key: fine\n    app: b\n")
            .unwrap();
        let err = read_keys(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
        assert!(err.contains("keys[0]: exactly one of `key` or `id`"), "{err}");
        assert!(err.contains("keys[1]: field `app` is empty"), "{err}");
        assert!(!err.contains("keys[2]") && !err.contains("fine"), "{err}");
    }

    #[test]
    fn an_unreadable_or_unparsable_file_says_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let err = read_keys(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Unreadable { .. }), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        std::fs::write(&path, "keys: [").unwrap();
        let err = read_keys(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Unparsable { .. }), "{err}");
        assert_eq!(err.to_string(), format!("{}: cannot parse", path.display()));
        assert!(std::error::Error::source(&err).is_some());
    }
}
