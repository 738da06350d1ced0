//! What the store says about a key id: asked last by the lookup, when neither the cache nor the
//! membership filter can answer.
//!
//! The store is a trait so the gateway runs on Redis in production (one server or the master of
//! a Sentinel group: [`redis`] and [`sentinel`]; a cluster: [`cluster`]; how each connects:
//! [`nodes`]), on a YAML file for a single node or a demo, and on an in-memory map in unit
//! tests and benchmarks. "Not found" and
//! "unavailable" are different answers on purpose: the first is cached as unknown, the second
//! never is.

pub mod cluster;
pub mod counters;
pub mod file;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod nodes;
pub mod record;
pub mod redis;
pub mod sentinel;

use crate::key::KeyId;
use async_trait::async_trait;
pub use record::{KeyRecord, RecordError};

/// Why the store could not answer. Never a reason to call a key unknown.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's own error says why: Redis's, or the memory store's switch.
    #[error("store unreachable")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("store lookup timed out")]
    Timeout,
}

impl StoreError {
    /// An unreachable store, and why.
    pub fn unreachable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Unreachable(cause.into())
    }

    /// The error and its cause, for a log line.
    pub fn with_cause(&self) -> String {
        match std::error::Error::source(self) {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }
}

/// Where key records live.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record for `id`: `Ok(None)` when the store is sure there is none.
    async fn fetch(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Whether the store answers at all (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// About how many key ids the store holds (at least as many), to size the filter.
    async fn count_hint(&self) -> Result<usize, StoreError>;

    /// Calls `each` with every key id in the store (some possibly twice, when a cluster's
    /// scan had to start over); returns how many there were. A store that must spare its
    /// server (Redis) paces the scan as it was opened to.
    async fn scan_ids(&self, each: &mut (dyn FnMut(KeyId) + Send)) -> Result<usize, StoreError>;

    /// Where the store announces changed records (Redis's pub/sub); `None` for a store whose
    /// records change only on reload (the file) or in a test (memory).
    fn announcements(&self) -> Option<nodes::Announcements> {
        None
    }

    /// One fleet sync ([`counters`]): adds each key's delta to its shared counters, registers
    /// this gateway, and returns the totals and the fleet's size, in one round trip. `Ok(None)`
    /// for a store that no other gateway shares (the file, memory): this gateway is alone, and
    /// keeps its counts in-process.
    async fn exchange(
        &self,
        exchange: &counters::Exchange<'_>,
    ) -> Result<Option<counters::Exchanged>, StoreError> {
        let _ = exchange;
        Ok(None)
    }
}
