//! The Redis store on a Redis Cluster: the same records (`{prefix}key:{id}`, no hash tag, so
//! the key ids spread over every slot and every master), found wherever the cluster keeps them.
//!
//! Lookups go through redis-rs's cluster client (`cluster-async`), which routes each record's
//! name to the master of its slot and follows MOVED answers. What it cannot do for us is done
//! here, by a [`ClusterTopology`] that reads the cluster's map (`CLUSTER NODES`, from any node
//! that answers) every second and whenever a lookup fails:
//! - a master's failover (a replica now serving its slots) is counted in
//!   `keygate_store_failovers_total`, and the lookups get a connection made afresh from the new
//!   map rather than waiting for the old one to notice;
//! - SCAN walks one server, so the membership filter's rebuild scans every master in turn, and
//!   starts over if the map changed meanwhile (keys may have moved under the scan);
//! - the invalidation listener subscribes on one node of the map, and another when it fails
//!   (classic pub/sub: see [`super::nodes::AnnouncementHub::Cluster`]).

use super::nodes::{self, AnnouncementHub, Announcements};
use super::redis::{scan_node, scan_timeout, RedisSettings, ScanPacing};
use super::{counters, KeyRecord, KeyStore, StoreError};
use crate::config::{NodeAddress, RedisAuth};
use crate::key::KeyId;
use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use prometheus::IntCounter;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::RedisError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How often the map of slots is read when nothing seems wrong.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The shortest gap between two readings prompted by lookups' errors.
const SUSPICION_GAP: Duration = Duration::from_millis(100);
/// How long a node may take to give its map.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// Scans begun again because the map changed under them, before a rebuild gives up (and is
/// retried later, like any failed rebuild).
const MAX_SCAN_ATTEMPTS: usize = 5;

/// Why the cluster's shape could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no cluster node gave its map of slots")]
    NoNode(#[source] Option<RedisError>),
    #[error("a node's map of slots could not be read")]
    Unreadable,
    #[error("the cluster's map of slots kept changing during the scan")]
    Unsettled,
}

pub struct ClusterStore {
    topology: Arc<ClusterTopology>,
    prefix: String,
    timeout: Duration,
    scan: ScanPacing,
}

impl ClusterStore {
    /// Opens the store on the cluster `seeds` belong to, lazily; must be called inside the
    /// tokio runtime that will drive the connections.
    pub fn open(
        seeds: Vec<NodeAddress>,
        auth: RedisAuth,
        settings: RedisSettings<'_>,
        failovers: IntCounter,
    ) -> Result<Self, StoreError> {
        let RedisSettings { prefix, timeout, scan } = settings;
        let topology = ClusterTopology::watch(seeds, auth, timeout, failovers)?;
        Ok(ClusterStore { topology, prefix: prefix.to_string(), timeout, scan })
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.topology.connection();
        command.query_async(&mut connection).await.map_err(|e| {
            self.topology.suspect(&e);
            StoreError::unreachable(e)
        })
    }
}

#[async_trait]
impl KeyStore for ClusterStore {
    async fn fetch(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let name = super::redis::RedisStore::record_key(&self.prefix, id);
        let fields: HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(name)).await?;
        Ok(super::redis::record_of(id, fields))
    }

    /// Any node answering will do: redis-rs would otherwise ask every node, and one being
    /// failed over would make the whole cluster look down.
    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.topology.connection();
        let any = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        connection.route_command(redis::cmd("PING"), any).await.map(drop).map_err(|e| {
            self.topology.suspect(&e);
            StoreError::unreachable(e)
        })
    }

    /// The sum of every master's DBSIZE.
    async fn count_hint(&self) -> Result<usize, StoreError> {
        let map = self.topology.read_map().await.map_err(StoreError::unreachable)?;
        let mut total = 0;
        for master in map.masters() {
            let mut connection = self.topology.connect(master, scan_timeout(self.timeout)).await?;
            let count: usize =
                redis::cmd("DBSIZE").query_async(&mut connection).await.map_err(StoreError::unreachable)?;
            total += count;
        }
        Ok(total)
    }

    /// Every master in turn, over a connection of its own; all over again if the map of slots
    /// changed meanwhile. An id seen before the change is given again, which a filter does not
    /// mind; only the last pass is counted.
    async fn scan_ids(&self, each: &mut (dyn FnMut(KeyId) + Send)) -> Result<usize, StoreError> {
        let page_timeout = scan_timeout(self.timeout);
        for _ in 0..MAX_SCAN_ATTEMPTS {
            let map = self.topology.read_map().await.map_err(StoreError::unreachable)?;
            let mut scanned = Ok(0);
            for master in map.masters() {
                let pass = async {
                    let mut connection = self.topology.connect(master, page_timeout).await?;
                    scan_node(&mut connection, &self.prefix, self.scan, page_timeout, each).await
                };
                match pass.await {
                    Ok(count) => scanned = scanned.map(|total| total + count),
                    Err(e) => {
                        scanned = Err(e);
                        break;
                    }
                }
            }
            let after = self.topology.read_map().await.map_err(StoreError::unreachable)?;
            if after.owners() == map.owners() {
                return scanned;
            }
            log::info!("cluster map of slots changed during the filter's scan; scanning again");
        }
        Err(StoreError::unreachable(ClusterError::Unsettled))
    }

    /// The scripts loaded on every master, then every key's script on its own slot's master,
    /// all at once (a cluster refuses a pipeline across slots; redis-rs multiplexes these on
    /// each node's connection): two round trips.
    async fn exchange(
        &self,
        exchange: &counters::Exchange<'_>,
    ) -> Result<Option<counters::Exchanged>, StoreError> {
        let fail = |e: RedisError| {
            self.topology.suspect(&e);
            StoreError::unreachable(e)
        };
        let mut connection = self.topology.connection();
        let [key_hash, members_hash, _] = counters::hashes(&mut connection).await.map_err(fail)?;
        let mut load = redis::pipe();
        counters::load_scripts(&mut load);
        for command in load.cmd_iter() {
            command.query_async::<()>(&mut connection).await.map_err(fail)?;
        }
        let members = counters::members_call(members_hash, &self.prefix, exchange);
        let members = async { members.query_async::<u32>(&mut connection.clone()).await };
        let keys = exchange.keys.iter().map(|key| {
            let call = counters::key_call(key_hash, &self.prefix, key, exchange.rate_ttl);
            let mut connection = connection.clone();
            async move { call.query_async::<Vec<u64>>(&mut connection).await }
        });
        let (members, replies) =
            futures_util::future::join(members, futures_util::future::join_all(keys)).await;
        let mut totals = Vec::with_capacity(replies.len());
        for reply in replies {
            totals.push(
                counters::totals_of(reply.map_err(fail)?).map_err(|why| fail(counters::bad_reply(why)))?,
            );
        }
        Ok(Some(counters::Exchanged { members: members.map_err(fail)?, totals }))
    }

    fn announcements(&self) -> Option<Announcements> {
        let hub = AnnouncementHub::Cluster(Arc::clone(&self.topology));
        Some(Announcements { hub, channel: format!("{}invalidate", self.prefix) })
    }
}

// === impl ClusterTopology ===

/// The cluster's shape as last read, and the lookups' connection made from it; followed for as
/// long as this value lives.
pub struct ClusterTopology {
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
}

struct Shared {
    seeds: Vec<NodeAddress>,
    auth: RedisAuth,
    /// The lookups' bound, which the connections' own timeouts follow.
    timeout: Duration,
    connection: ArcSwap<ClusterConnection>,
    map: ArcSwapOption<ClusterMap>,
    /// Poked when a lookup's error says a node may be gone.
    suspicion: Notify,
    failovers: IntCounter,
}

impl ClusterTopology {
    fn watch(
        seeds: Vec<NodeAddress>,
        auth: RedisAuth,
        timeout: Duration,
        failovers: IntCounter,
    ) -> Result<Arc<ClusterTopology>, StoreError> {
        let connection = lookup_connection(&seeds, &auth, timeout).map_err(StoreError::unreachable)?;
        let shared = Arc::new(Shared {
            seeds,
            auth,
            timeout,
            connection: ArcSwap::from_pointee(connection),
            map: ArcSwapOption::empty(),
            suspicion: Notify::new(),
            failovers,
        });
        let watcher = tokio::spawn(watch(Arc::clone(&shared)));
        Ok(Arc::new(ClusterTopology { shared, watcher }))
    }

    fn connection(&self) -> ClusterConnection {
        ClusterConnection::clone(&self.shared.connection.load())
    }

    fn suspect(&self, error: &RedisError) {
        if nodes::may_have_moved(error) || matches!(error.kind(), redis::ErrorKind::ClusterConnectionNotFound)
        {
            self.shared.suspicion.notify_one();
        }
    }

    async fn read_map(&self) -> Result<ClusterMap, ClusterError> {
        self.shared.read_map().await
    }

    async fn connect(
        &self,
        node: &NodeAddress,
        within: Duration,
    ) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let info = nodes::node_info(node, &self.shared.auth).map_err(StoreError::unreachable)?;
        tokio::time::timeout(within, nodes::connect(info, within))
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(StoreError::unreachable)
    }

    /// The node the invalidation listener subscribes on at its `attempt`th try: the nodes of
    /// the last map in turn (masters first), then the seeds.
    pub fn subscription_node(&self, attempt: usize) -> Option<redis::Client> {
        let map = self.shared.map.load_full();
        let mut candidates: Vec<&NodeAddress> = Vec::new();
        if let Some(map) = &map {
            candidates.extend(map.all());
        }
        candidates.extend(self.shared.seeds.iter());
        let mut seen = HashSet::new();
        candidates.retain(|node| seen.insert(*node));
        let node = candidates.get(attempt % candidates.len().max(1))?;
        redis::Client::open(nodes::node_info(node, &self.shared.auth).ok()?).ok()
    }
}

impl Drop for ClusterTopology {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Reads the map of slots every `WATCH_EVERY` (sooner when lookups fail) and follows failovers.
async fn watch(shared: Arc<Shared>) {
    let mut logged_failure = false;
    loop {
        match shared.read_map().await {
            Ok(map) => {
                logged_failure = false;
                shared.follow(map);
            }
            Err(e) if !logged_failure => {
                logged_failure = true;
                log::warn!("key store: cannot read the cluster's map of slots: {e}");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = shared.suspicion.notified() => tokio::time::sleep(SUSPICION_GAP).await,
        }
    }
}

impl Shared {
    /// Takes `map` as the cluster's shape; a master failed over since the last one is counted,
    /// and the lookups move to a connection made from the new map.
    fn follow(&self, map: ClusterMap) {
        let previous = self.map.load_full();
        let promoted = previous.as_deref().map(|old| map.promoted_since(old)).unwrap_or_default();
        if !promoted.is_empty() {
            self.failovers.inc_by(promoted.len() as u64);
            for node in &promoted {
                log::warn!("key store: cluster replica {node} took over its master's slots; following it");
            }
            let mut nodes: Vec<NodeAddress> = map.masters().cloned().collect();
            nodes.extend(self.seeds.iter().filter(|s| !nodes.contains(s)).cloned().collect::<Vec<_>>());
            match lookup_connection(&nodes, &self.auth, self.timeout) {
                Ok(connection) => self.connection.store(Arc::new(connection)),
                Err(e) => log::warn!("key store: cannot make a new cluster connection: {e}"),
            }
        }
        if previous.is_none() {
            log::info!("key store: cluster of {} masters", map.masters().count());
        }
        self.map.store(Some(Arc::new(map)));
    }

    /// The map of slots from the first node that gives it: the masters of the last map, then
    /// their replicas, then the seeds.
    async fn read_map(&self) -> Result<ClusterMap, ClusterError> {
        let known = self.map.load_full();
        let mut candidates: Vec<NodeAddress> = Vec::new();
        if let Some(map) = &known {
            candidates.extend(map.all().cloned());
        }
        candidates.extend(self.seeds.iter().cloned());
        let mut seen = HashSet::new();
        candidates.retain(|node| seen.insert(node.clone()));
        let mut last = None;
        for node in &candidates {
            let ask = async {
                let mut connection = nodes::connect(nodes::node_info(node, &self.auth)?, ASK_TIMEOUT).await?;
                redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut connection).await
            };
            match tokio::time::timeout(ASK_TIMEOUT, ask).await {
                Ok(Ok(answer)) => match ClusterMap::parse(&answer, node) {
                    Some(map) if map.masters().next().is_some() => return Ok(map),
                    _ => return Err(ClusterError::Unreadable),
                },
                Ok(Err(e)) => last = Some(e),
                Err(_) => {}
            }
        }
        Err(ClusterError::NoNode(last))
    }
}

/// A cluster connection for lookups, made lazily from `nodes`.
fn lookup_connection(
    nodes: &[NodeAddress],
    auth: &RedisAuth,
    timeout: Duration,
) -> Result<ClusterConnection, RedisError> {
    let infos = nodes.iter().map(|n| nodes::node_info(n, auth)).collect::<Result<Vec<_>, _>>()?;
    let mut builder = ClusterClient::builder(infos).retries(1);
    if let Some(username) = &auth.username {
        builder = builder.username(username);
    }
    if let Some(password) = &auth.password {
        builder = builder.password(password.expose());
    }
    let client = builder.build()?;
    // As for one server: past the lookup's own bound, so that a slow answer is its timeout.
    let config = ClusterConfig::new()
        .set_connection_timeout(nodes::connect_timeout(timeout))
        .set_response_timeout(timeout + Duration::from_secs(1));
    Ok(client.get_pending_async_connection_with_config(config))
}

// === impl ClusterMap ===

/// The cluster as one node sees it (`CLUSTER NODES`): who is master of which slots, who
/// replicates whom. (`CLUSTER SLOTS` leaves out replicas that have not received data yet, so it
/// cannot tell a promoted replica from a new master.)
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterMap {
    nodes: Vec<ClusterNode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterNode {
    id: String,
    address: NodeAddress,
    is_master: bool,
    /// The slot ranges it serves (a master's), first to last, both included.
    slots: Vec<(u16, u16)>,
}

impl ClusterMap {
    /// Reads `CLUSTER NODES`' answer, given by `asked` (a node that does not know its own
    /// address yet is at the address it was asked on).
    fn parse(text: &str, asked: &NodeAddress) -> Option<ClusterMap> {
        let mut nodes = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, address, flags, _master, _ping, _pong, _epoch, _link, slots @ ..] = fields.as_slice()
            else {
                return None;
            };
            let flags: Vec<&str> = flags.split(',').collect();
            if flags.iter().any(|f| matches!(*f, "handshake" | "noaddr")) {
                continue;
            }
            // `host:port@bus-port[,hostname]`
            let address = address.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let host = if host.is_empty() { asked.host.clone() } else { host.to_string() };
            let slots = slots
                .iter()
                .filter(|s| !s.starts_with('[')) // slots being migrated: still their owner's
                .map(|s| match s.split_once('-') {
                    Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
                    None => s.parse().ok().map(|slot| (slot, slot)),
                })
                .collect::<Option<Vec<(u16, u16)>>>()?;
            nodes.push(ClusterNode {
                id: id.to_string(),
                address: NodeAddress { host, port: port.parse().ok()? },
                is_master: flags.contains(&"master"),
                slots,
            });
        }
        nodes.sort_by_key(|n| n.slots.first().copied());
        Some(ClusterMap { nodes })
    }

    /// Every master that serves slots, failing or not (a scan that skipped one would leave its
    /// keys out of the filter), in slot order.
    fn masters(&self) -> impl Iterator<Item = &NodeAddress> {
        self.nodes.iter().filter(|n| n.is_master && !n.slots.is_empty()).map(|n| &n.address)
    }

    /// Every node, masters first: where a subscription or a question may go.
    fn all(&self) -> impl Iterator<Item = &NodeAddress> {
        self.masters().chain(self.nodes.iter().filter(|n| n.slots.is_empty()).map(|n| &n.address))
    }

    /// Which node serves which slots: what a scan must not see change under it.
    fn owners(&self) -> Vec<(u16, u16, &str)> {
        let mut owners: Vec<(u16, u16, &str)> = self
            .nodes
            .iter()
            .filter(|n| n.is_master)
            .flat_map(|n| n.slots.iter().map(|&(first, last)| (first, last, n.id.as_str())))
            .collect();
        owners.sort();
        owners
    }

    /// The masters serving slots here that were replicas in `old`: failovers.
    fn promoted_since(&self, old: &ClusterMap) -> Vec<NodeAddress> {
        self.nodes
            .iter()
            .filter(|n| n.is_master && !n.slots.is_empty())
            .filter(|n| old.nodes.iter().any(|o| o.id == n.id && !o.is_master))
            .map(|n| n.address.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
2ea6 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
0809 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [10923->-d236]
d236 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
3c3c 127.0.0.1:7003@17003 slave 2ea6 0 0 1 connected
9f13 127.0.0.1:7004@17004,node-4 slave 0809 0 0 2 connected
";

    fn map(text: &str) -> ClusterMap {
        ClusterMap::parse(text, &NodeAddress { host: "127.0.0.1".into(), port: 7000 }).expect("readable")
    }

    fn ports<'a>(nodes: impl Iterator<Item = &'a NodeAddress>) -> Vec<u16> {
        nodes.map(|n| n.port).collect()
    }

    #[test]
    fn masters_come_in_slot_order_and_replicas_after_them() {
        let before = map(BEFORE);
        assert_eq!(ports(before.masters()), [7000, 7001, 7002]);
        assert_eq!(ports(before.all()), [7000, 7001, 7002, 7003, 7004]);
        assert_eq!(before.owners()[1], (5461, 10922, "0809"));
    }

    #[test]
    fn a_replica_taking_over_its_masters_slots_is_a_failover_and_a_change_of_owners() {
        let before = map(BEFORE);
        // 7003 took 7000's slots; 7000 failed (a failed master keeps being listed, slotless).
        let after = map(&BEFORE
            .replace("myself,master - 0 0 1 connected 0-5460", "master,fail - 0 0 1 connected")
            .replace("slave 2ea6 0 0 1 connected", "master - 0 0 4 connected 0-5460"));
        assert_ne!(before.owners(), after.owners());
        assert_eq!(ports(after.promoted_since(&before).iter()), [7003]);
        assert!(before.promoted_since(&before).is_empty());
        assert_eq!(ports(after.masters()), [7003, 7001, 7002]);
    }

    #[test]
    fn slots_moving_to_another_master_change_the_owners_but_are_no_failover() {
        let before = map(BEFORE);
        let after = map(&BEFORE.replace("0-5460", "0-5000").replace("10923-16383", "5001-5460 10923-16383"));
        assert_ne!(before.owners(), after.owners());
        assert!(after.promoted_since(&before).is_empty());
    }

    #[test]
    fn a_master_failing_but_not_yet_replaced_is_still_scanned() {
        let failing = map(&BEFORE.replace("myself,master", "master,fail"));
        assert_eq!(ports(failing.masters()), [7000, 7001, 7002]);
    }
}
