//! The Redis store on one master: one hash per key id at `{prefix}key:{id}` (the README's
//! Redis data model), on a single server (`url`) or on whichever server a Sentinel group names
//! master ([`super::sentinel`]). A cluster is [`super::cluster`]'s.
//!
//! Lookups go over one multiplexed connection that reconnects by itself (redis-rs's
//! `ConnectionManager`, created lazily so the gateway starts even while Redis is down). The
//! caller bounds each lookup with `timeout_ms`; the connection's own timeouts only make sure a
//! dead socket is noticed and replaced. Under Sentinel the connection is the current master's,
//! replaced when the master moves, and a failed lookup makes the sentinels be asked again.

use super::nodes::{self, AnnouncementHub, Announcements};
use super::sentinel::{SentinelGroup, SentinelMaster};
use super::{counters, KeyRecord, KeyStore, StoreError};
use crate::key::KeyId;
use async_trait::async_trait;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct RedisStore {
    master: MasterSource,
    prefix: String,
    timeout: Duration,
    /// How `scan_ids` paces itself: of the stores, only Redis has a server a scan could slow.
    scan: ScanPacing,
}

/// Where the one master is.
enum MasterSource {
    /// `url`: always the same server.
    Fixed {
        /// For lookups: shared, multiplexed, reconnecting.
        connection: ConnectionManager,
        /// For scans, which get a connection of their own so that a page of SCAN results
        /// never sits in front of a lookup; and for the invalidation subscription.
        client: redis::Client,
    },
    /// Whichever server the sentinels name, followed through failovers.
    Sentinel(Arc<SentinelMaster>),
}

/// What the Redis store is opened with.
pub struct RedisSettings<'a> {
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
    /// Opens the store on the server at `info`, lazily; must be called inside the tokio
    /// runtime that will drive the connection.
    pub fn open(info: redis::ConnectionInfo, settings: RedisSettings<'_>) -> Result<Self, StoreError> {
        let client = redis::Client::open(info).map_err(StoreError::unreachable)?;
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), nodes::manager_config(settings.timeout))
                .map_err(StoreError::unreachable)?;
        Ok(RedisStore::new(MasterSource::Fixed { connection, client }, settings))
    }

    /// Opens the store on the master the sentinels of `group` name, following it through
    /// failovers (each counted in `failovers`); must be called inside the tokio runtime that
    /// will drive the connections.
    pub fn follow(group: SentinelGroup, settings: RedisSettings<'_>, failovers: IntCounter) -> Self {
        let master = SentinelMaster::follow(group, settings.timeout, failovers);
        RedisStore::new(MasterSource::Sentinel(master), settings)
    }

    fn new(master: MasterSource, settings: RedisSettings<'_>) -> Self {
        let RedisSettings { prefix, timeout, scan } = settings;
        RedisStore { master, prefix: prefix.to_string(), timeout, scan }
    }

    pub fn record_key(prefix: &str, id: &KeyId) -> String {
        format!("{prefix}key:{id}")
    }

    /// The lookups' connection to the master (under Sentinel, waiting for the first answer).
    async fn connection(&self) -> ConnectionManager {
        match &self.master {
            MasterSource::Fixed { connection, .. } => connection.clone(),
            MasterSource::Sentinel(master) => master.master().await.connection.clone(),
        }
    }

    /// Runs `command` on the master; an error that says the master may have moved has the
    /// sentinels asked again.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection().await;
        command.query_async(&mut connection).await.map_err(|e| {
            if let MasterSource::Sentinel(master) = &self.master {
                master.suspect(&e);
            }
            StoreError::unreachable(e)
        })
    }
}

/// The record an `HGETALL` of `id`'s hash returned: none for no hash; a hash that breaks the
/// data model is a disabled key (logged by id), never an unknown one.
pub(super) fn record_of(id: &KeyId, fields: HashMap<String, String>) -> Option<KeyRecord> {
    if fields.is_empty() {
        return None;
    }
    Some(KeyRecord::from_fields(&fields).unwrap_or_else(|e| {
        log::warn!("record of key id {id} breaks the data model ({e}): the key is disabled");
        KeyRecord::invalid()
    }))
}

#[async_trait]
impl KeyStore for RedisStore {
    async fn fetch(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let fields = self.query(redis::cmd("HGETALL").arg(Self::record_key(&self.prefix, id))).await?;
        Ok(record_of(id, fields))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query::<()>(&redis::cmd("PING")).await
    }

    async fn count_hint(&self) -> Result<usize, StoreError> {
        self.query(&redis::cmd("DBSIZE")).await
    }

    async fn scan_ids(&self, each: &mut (dyn FnMut(KeyId) + Send)) -> Result<usize, StoreError> {
        let mut connection = self.scan_connection().await?;
        scan_node(&mut connection, &self.prefix, self.scan, scan_timeout(self.timeout), each).await
    }

    async fn exchange(
        &self,
        exchange: &counters::Exchange<'_>,
    ) -> Result<Option<counters::Exchanged>, StoreError> {
        let mut connection = self.connection().await;
        let exchanged =
            counters::exchange_on(&mut connection, &self.prefix, exchange).await.map_err(|e| {
                if let MasterSource::Sentinel(master) = &self.master {
                    master.suspect(&e);
                }
                StoreError::unreachable(e)
            })?;
        Ok(Some(exchanged))
    }

    fn announcements(&self) -> Option<Announcements> {
        let hub = match &self.master {
            MasterSource::Fixed { client, .. } => AnnouncementHub::Node(client.clone()),
            MasterSource::Sentinel(master) => AnnouncementHub::Sentinel(Arc::clone(master)),
        };
        Some(Announcements { hub, channel: format!("{}invalidate", self.prefix) })
    }
}

/// Calls `each` with every key id on one server (SCAN is per server), paced by `pacing`, each
/// page within `page_timeout`; returns how many there were.
pub(super) async fn scan_node(
    connection: &mut MultiplexedConnection,
    prefix: &str,
    pacing: ScanPacing,
    page_timeout: Duration,
    each: &mut (dyn FnMut(KeyId) + Send),
) -> Result<usize, StoreError> {
    // The prefix is literal: escape what SCAN's MATCH would read as a glob.
    let literal: String = prefix
        .chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    let pattern = format!("{literal}key:*");
    let names_start = format!("{prefix}key:");
    let (mut cursor, mut count) = (0u64, 0usize);
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(pacing.batch);
        let page = scan.query_async::<(u64, Vec<String>)>(connection);
        let (next, names) = tokio::time::timeout(page_timeout, page)
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
        tokio::time::sleep(pacing.pause).await;
    }
}

/// A page of SCAN is more work than a lookup; it still must not hang a rebuild for ever.
pub(super) fn scan_timeout(lookup_timeout: Duration) -> Duration {
    (lookup_timeout * 20).max(Duration::from_secs(1))
}

impl RedisStore {
    async fn scan_connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let client = match &self.master {
            MasterSource::Fixed { client, .. } => client.clone(),
            MasterSource::Sentinel(master) => {
                tokio::time::timeout(scan_timeout(self.timeout), master.master())
                    .await
                    .map_err(|_| StoreError::Timeout)?
                    .client
                    .clone()
            }
        };
        let connect = client.get_multiplexed_async_connection();
        tokio::time::timeout(scan_timeout(self.timeout), connect)
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(StoreError::unreachable)
    }
}
