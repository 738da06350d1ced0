//! How keygate reaches a Redis node, whichever shape the store has (one URL, a Sentinel group,
//! a cluster): the connection details with the configured credentials, the timeouts every
//! connection follows, which errors say the store may have moved, and where announcements are
//! heard ([`AnnouncementHub`]).
//!
//! Kept apart from the stores so that the single-server, Sentinel and cluster stores, the
//! invalidation listener and `keygate keys` all connect the same way.

use super::cluster::ClusterTopology;
use super::sentinel::SentinelMaster;
use crate::config::{NodeAddress, RedisAuth};
use redis::aio::{ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo, RedisError, RedisResult};
use std::sync::Arc;
use std::time::Duration;

/// The least a connection may take to be set up, however short the lookups' bound.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The connection details of `address`, with `auth`.
pub fn node_info(address: &NodeAddress, auth: &RedisAuth) -> RedisResult<ConnectionInfo> {
    let info = (address.host.as_str(), address.port).into_connection_info()?;
    Ok(with_auth(info, auth))
}

/// The connection details of `url`, with `auth` (validation made sure the URL has none of its
/// own when `auth` has a password).
pub fn url_info(url: &str, auth: &RedisAuth) -> RedisResult<ConnectionInfo> {
    Ok(with_auth(url.into_connection_info()?, auth))
}

fn with_auth(info: ConnectionInfo, auth: &RedisAuth) -> ConnectionInfo {
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &auth.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &auth.password {
        settings = settings.set_password(password.expose());
    }
    info.set_redis_settings(settings)
}

/// A connection's own set-up bound, for lookups bounded by `timeout`.
pub fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(MIN_CONNECT_TIMEOUT)
}

/// The reconnecting lookup connection's settings, for lookups bounded by `timeout`.
pub fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout(timeout)))
        // Always past the lookup's own `timeout_ms` (a reload that changes it reconnects),
        // so a slow answer is counted as the lookup's timeout, never as a connection error.
        .set_response_timeout(Some(timeout + Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1))
}

/// A plain connection to one node, for work that must not queue behind lookups (scans, the
/// sentinels' questions), set up within `within`.
pub async fn connect(info: ConnectionInfo, within: Duration) -> RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(info)?;
    let config =
        AsyncConnectionConfig::new().set_connection_timeout(Some(within)).set_response_timeout(Some(within));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Whether `error` may mean the server asked is no longer the master: it is gone, or it
/// answers as a replica (READONLY), or it has no master to follow (MASTERDOWN, LOADING).
pub fn may_have_moved(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || matches!(error.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

/// Where a store's announcements (`{prefix}invalidate`) are heard, and when the subscription
/// must move: what the invalidation listener follows.
#[derive(Clone)]
pub enum AnnouncementHub {
    /// One server (`url`): subscribe there; redis-rs reconnects to it.
    Node(redis::Client),
    /// The master the sentinels name: subscribe there, and again wherever it moves.
    Sentinel(Arc<SentinelMaster>),
    /// Any node of the cluster: classic PUBLISH reaches every node's subscribers, so one
    /// subscription, moved to another node when its node fails, hears everything.
    Cluster(Arc<ClusterTopology>),
}

impl AnnouncementHub {
    /// The node to subscribe on, on the `attempt`th try in a row; `None` while there is none
    /// yet (the sentinels have not named a master).
    pub fn node(&self, attempt: usize) -> Option<redis::Client> {
        match self {
            AnnouncementHub::Node(client) => Some(client.clone()),
            AnnouncementHub::Sentinel(master) => master.current().map(|m| m.client.clone()),
            AnnouncementHub::Cluster(topology) => topology.subscription_node(attempt),
        }
    }

    /// Whether a subscription's silence (a frozen server: pings unanswered, the connection up)
    /// can hide no announcement. True where every announcement is published on the very
    /// server subscribed to (one server, the Sentinel master): nothing is published while it
    /// is frozen, and what comes after arrives on the same connection. False in a cluster,
    /// where announcements published on other nodes reach the subscribed one over the cluster
    /// bus, which drops messages to a node that stops answering.
    pub fn silence_is_safe(&self) -> bool {
        !matches!(self, AnnouncementHub::Cluster(_))
    }

    /// Resolves once a subscription made now must move (the master moved); never for a single
    /// server or a cluster, whose subscriptions move only when they fail.
    pub fn moved(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let watch = match self {
            AnnouncementHub::Sentinel(master) => Some(master.moves()),
            _ => None,
        };
        async move {
            match watch {
                Some(mut moves) => {
                    // A closed channel is a master no one follows any more: stay put.
                    if moves.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Wakes when a node may have been named where there was none (the sentinels answered).
    pub async fn wait_for_node(&self, at_most: Duration) {
        if let AnnouncementHub::Sentinel(master) = self {
            let mut moves = master.moves();
            let _ = tokio::time::timeout(at_most, moves.changed()).await;
        } else {
            tokio::time::sleep(at_most).await;
        }
    }
}

/// What the invalidation listener needs: where, and on which channel.
#[derive(Clone)]
pub struct Announcements {
    pub hub: AnnouncementHub,
    /// `{prefix}invalidate`.
    pub channel: String,
}
