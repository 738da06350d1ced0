//! An in-memory store for unit tests and benchmarks: records in a map, with a switch that makes
//! it fail and a count of the lookups it served.

use super::{KeyRecord, KeyStore, StoreError};
use crate::key::KeyId;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<KeyId, KeyRecord>>,
    failing: AtomicBool,
    /// How long each lookup takes (to hold requests in flight in tests).
    delay: Mutex<Duration>,
    /// Lookups served, failed ones included.
    pub fetches: AtomicUsize,
}

impl MemoryStore {
    pub fn insert(&self, id: KeyId, record: KeyRecord) {
        self.records.lock().unwrap().insert(id, record);
    }

    /// While set, every lookup fails as if the store were unreachable.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn fetch(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        // The answer is taken when the query arrives and delivered after the delay, like a reply
        // still on the wire.
        let answer = match self.failing.load(Ordering::SeqCst) {
            true => Err(set_to_fail()),
            false => Ok(self.records.lock().unwrap().get(id).cloned()),
        };
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        answer
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self.failing.load(Ordering::SeqCst) {
            true => Err(set_to_fail()),
            false => Ok(()),
        }
    }

    async fn count_hint(&self) -> Result<usize, StoreError> {
        Ok(self.records.lock().unwrap().len())
    }

    async fn scan_ids(&self, each: &mut (dyn FnMut(KeyId) + Send)) -> Result<usize, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(set_to_fail());
        }
        let ids: Vec<KeyId> = self.records.lock().unwrap().keys().copied().collect();
        ids.iter().for_each(|id| each(*id));
        Ok(ids.len())
    }
}

fn set_to_fail() -> StoreError {
    StoreError::unreachable("memory store set to fail")
}
