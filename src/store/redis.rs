//! The Redis store: one hash per key id at `{prefix}key:{id}` (the README's Redis data model).
//!
//! Lookups go over one multiplexed connection that reconnects by itself (redis-rs's
//! `ConnectionManager`, created lazily so the gateway starts even while Redis is down). The
//! caller bounds each lookup with `timeout_ms`; the connection's own timeouts only make sure a
//! dead socket is noticed and replaced.

use super::{KeyRecord, KeyStore, StoreError};
use crate::key::KeyId;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::time::Duration;

pub struct RedisStore {
    /// For lookups: shared, multiplexed, reconnecting.
    connection: ConnectionManager,
    /// For scans, which get a connection of their own so that a page of SCAN results never
    /// sits in front of a lookup.
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    /// How `scan_ids` paces itself: of the stores, only this one has a server a scan could slow.
    scan: ScanPacing,
}

/// What the Redis store is opened with.
pub struct RedisSettings<'a> {
    /// `store.redis.url`.
    pub url: &'a str,
    /// `store.redis.prefix`: every name the store reads starts with it.
    pub prefix: &'a str,
    /// A lookup's bound (`store.redis.timeout_ms`), which the connection's own timeouts follow.
    pub timeout: Duration,
    pub scan: ScanPacing,
}

/// How the membership filter's rebuild walks the key space (`filter.scan_batch`,
/// `filter.scan_pause_ms`): a page at a time with a pause between pages, so that a rebuild never
/// holds Redis long enough to slow the lookups sharing it.
#[derive(Debug, Clone, Copy)]
pub struct ScanPacing {
    /// Names asked for per SCAN page (its COUNT).
    pub batch: usize,
    pub pause: Duration,
}

impl RedisStore {
    /// Opens the store lazily; must be called inside the tokio runtime that will drive the
    /// connection.
    pub fn open(settings: RedisSettings<'_>) -> Result<Self, StoreError> {
        let RedisSettings { url, prefix, timeout, scan } = settings;
        let client = redis::Client::open(url).map_err(StoreError::unreachable)?;
        let scan_client = client.clone();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
            // Always past the lookup's own `timeout_ms` (a reload that changes it reconnects),
            // so a slow answer is counted as the lookup's timeout, never as a connection error.
            .set_response_timeout(Some(timeout + Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::unreachable)?;
        Ok(RedisStore { connection, client: scan_client, prefix: prefix.to_string(), timeout, scan })
    }

    pub fn record_key(prefix: &str, id: &KeyId) -> String {
        format!("{prefix}key:{id}")
    }
}

#[async_trait]
impl KeyStore for RedisStore {
    async fn fetch(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let mut connection = self.connection.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(Self::record_key(&self.prefix, id))
            .query_async(&mut connection)
            .await
            .map_err(StoreError::unreachable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(KeyRecord::from_fields(&fields).unwrap_or_else(|e| {
            log::warn!("record of key id {id} breaks the data model ({e}): the key is disabled");
            KeyRecord::invalid()
        })))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING").query_async::<()>(&mut connection).await.map_err(StoreError::unreachable)
    }

    async fn count_hint(&self) -> Result<usize, StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("DBSIZE").query_async(&mut connection).await.map_err(StoreError::unreachable)
    }

    async fn scan_ids(&self, each: &mut (dyn FnMut(KeyId) + Send)) -> Result<usize, StoreError> {
        let mut connection = self.scan_connection().await?;
        // The prefix is literal: escape what SCAN's MATCH would read as a glob.
        let literal: String = self
            .prefix
            .chars()
            .flat_map(|c| match c {
                '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let pattern = format!("{literal}key:*");
        let names_start = format!("{}key:", self.prefix);
        let (mut cursor, mut count) = (0u64, 0usize);
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(self.scan.batch);
            let page = scan.query_async::<(u64, Vec<String>)>(&mut connection);
            let (next, names) = tokio::time::timeout(self.scan_timeout(), page)
                .await
                .map_err(|_| StoreError::Timeout)?
                .map_err(StoreError::unreachable)?;
            for name in &names {
                if let Some(id) = name.strip_prefix(&names_start).and_then(KeyId::from_hex) {
                    each(id);
                    count += 1;
                }
            }
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
            tokio::time::sleep(self.scan.pause).await;
        }
    }
}

impl RedisStore {
    async fn scan_connection(&self) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let connect = self.client.get_multiplexed_async_connection();
        tokio::time::timeout(self.scan_timeout(), connect)
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(StoreError::unreachable)
    }

    /// A page of SCAN is more work than a lookup; it still must not hang a rebuild for ever.
    fn scan_timeout(&self) -> Duration {
        (self.timeout * 20).max(Duration::from_secs(1))
    }
}
