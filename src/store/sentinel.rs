//! The master of a Sentinel group, followed through failovers.
//!
//! redis-rs's own Sentinel client resolves the master when a connection is made, and an open
//! connection then stays on that server whatever becomes of it (redis-rs issue 1438): after a
//! failover, lookups would go on reading a demoted replica, or fail until restart. So the
//! connection management is ours: a [`SentinelMaster`] asks the sentinels where the master is
//! (`SENTINEL GET-MASTER-ADDR-BY-NAME`, each sentinel in turn, the answer checked with `ROLE`),
//! listens on every sentinel for `+switch-master`, and asks again whenever a lookup's error
//! says the server may have moved (a broken connection, READONLY) and every few seconds anyway.
//!
//! The sentinels are slow to say a failover happened: the leader notices the promotion on its
//! next `INFO` (up to a second), and `+switch-master` comes once the other replicas (the old
//! master too, in a forced failover) are reconfigured, seconds after the new master began to
//! serve. Meanwhile writers may already write and announce on the new master. So the master's
//! replicas are also asked, four times a second, whether one of them took over: a replica that
//! answers as a master whose previous replication id (`master_replid2`) is our master's is its
//! successor, promoted, and is followed at once. The same lineage keeps the old master, which
//! goes on answering as a master until the sentinels demote it, from being taken back.
//!
//! Even that is late by up to a poll: a key written on the new master the moment it serves,
//! asked of the gateway before the poll notices, would be read on the old master and refused
//! (and the membership filter, still fed by the old master's announcements, refuses it without
//! a read). So the gateway also moves *before* the promotion: the leading sentinel announces
//! the replica it chose (`+selected-slave`) at least one of its timer ticks (50-100 ms) before
//! it tells that replica to become master. A replica serves reads of everything its master
//! wrote, and carries the master's announcements (PUBLISH is replicated), so from then on the
//! lookups read, the filter is rebuilt from, and the subscription listens on the node that is
//! about to serve: nothing written on it after its promotion can be missed. The old master is
//! marked superseded for [`SELECTED_PATIENCE`]: should the failover be abandoned, the sentinels
//! go on naming it and the gateway goes back to it then.
//! When the master moves, the lookups' connection is replaced by one to the new master, the
//! move is counted (`keygate_store_failovers_total`), and the invalidation listener, which
//! watches [`SentinelMaster::moves`], subscribes again on the new master.

use super::nodes::{self, may_have_moved};
use crate::config::{NodeAddress, RedisAuth};
use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::RedisError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

/// How often the sentinels are asked even when nothing seems wrong: a `+switch-master` can be
/// missed (no sentinel reachable at that moment).
const CONFIRM_EVERY: Duration = Duration::from_secs(5);
/// How often they are asked while no master is known.
const RETRY_EVERY: Duration = Duration::from_millis(250);
/// The shortest gap between two questions prompted by lookups' errors: a burst of failed
/// lookups asks once.
const SUSPICION_GAP: Duration = Duration::from_millis(100);
/// How long a sentinel (or a named master checking its role) may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the master's replicas are asked whether one of them has been promoted: the
/// gateway then follows the new master within this (and a round trip) of its first serving,
/// well inside the second in which invalidations must be heard again.
const PROMOTION_POLL: Duration = Duration::from_millis(250);
/// How long a replica the sentinels selected for promotion is followed while they still name
/// the old master: past the sentinels' own failover timeout (a failover not done by then is
/// abandoned), after which the old master is taken back if they still name it.
const SELECTED_PATIENCE: Duration = Duration::from_secs(10);
/// The pings that notice a dead sentinel subscription, and the wait before subscribing again.
const PING_EVERY: Duration = Duration::from_secs(1);
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);

/// Why the sentinels named no master.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    #[error("no sentinel answered")]
    NoSentinel(#[source] Option<RedisError>),
    #[error("no sentinel knows a master named `{0}`")]
    UnknownMaster(String),
    #[error("the sentinels name {0}, which does not answer as a master")]
    NotMaster(NodeAddress),
}

/// A Sentinel group as configured: the master's name, the sentinels, the data nodes' credentials.
#[derive(Debug, Clone)]
pub struct SentinelGroup {
    pub master: String,
    pub sentinels: Vec<NodeAddress>,
    pub auth: RedisAuth,
}

impl SentinelGroup {
    /// Asks the sentinels in turn where the master is, and checks that it says it is one.
    pub async fn resolve(&self) -> Result<NodeAddress, SentinelError> {
        self.resolve_with_id().await.map(|(address, _)| address)
    }

    /// The master and its replication id (`master_replid`), which a promoted replica keeps as
    /// its previous one.
    async fn resolve_with_id(&self) -> Result<(NodeAddress, String), SentinelError> {
        let mut last = SentinelError::NoSentinel(None);
        for sentinel in &self.sentinels {
            match self.ask(sentinel).await {
                Ok(Some(address)) => match self.master_id(&address).await {
                    Some(id) => return Ok((address, id)),
                    None => last = SentinelError::NotMaster(address),
                },
                Ok(None) => last = SentinelError::UnknownMaster(self.master.clone()),
                Err(e) if matches!(last, SentinelError::NoSentinel(_)) => {
                    last = SentinelError::NoSentinel(Some(e))
                }
                Err(_) => {}
            }
        }
        Err(last)
    }

    /// Whether every sentinel that answers (one at least) names `master` and is not failing
    /// it over: then no failover that could lose a write made on it is under way. The sentinel
    /// leading a failover says so (`failover_in_progress`) from its start until the new master
    /// is named; the others name the new master as soon as they hear of the promotion.
    pub async fn settled_on(&self, master: &NodeAddress) -> bool {
        let mut answered = false;
        for sentinel in &self.sentinels {
            let Ok(info) = nodes::node_info(sentinel, &RedisAuth::default()) else { continue };
            let Ok(mut connection) = nodes::connect(info, ASK_TIMEOUT).await else { continue };
            let mut ask = redis::pipe();
            ask.cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master);
            ask.cmd("SENTINEL").arg("MASTER").arg(&self.master);
            let answer: Result<(Option<(String, u16)>, MasterState), _> =
                ask.query_async(&mut connection).await;
            let Ok((named, state)) = answer else { continue };
            let failing_over =
                state.get("flags").is_some_and(|flags| flags.split(',').any(|f| f == "failover_in_progress"));
            if failing_over || named.is_none_or(|(host, port)| host != master.host || port != master.port) {
                return false;
            }
            answered = true;
        }
        answered
    }

    /// One sentinel's answer: the master's address, or `None` if it knows no such master.
    async fn ask(&self, sentinel: &NodeAddress) -> Result<Option<NodeAddress>, RedisError> {
        // The sentinels' own auth is theirs: the data nodes' credentials are not sent to them.
        let info = nodes::node_info(sentinel, &RedisAuth::default())?;
        let mut connection = nodes::connect(info, ASK_TIMEOUT).await?;
        let answer: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master)
            .query_async(&mut connection)
            .await?;
        Ok(answer.map(|(host, port)| NodeAddress { host, port }))
    }

    /// `address`'s replication id, if it answers as a master (a sentinel may be behind the
    /// others).
    async fn master_id(&self, address: &NodeAddress) -> Option<String> {
        let mut connection =
            nodes::connect(nodes::node_info(address, &self.auth).ok()?, ASK_TIMEOUT).await.ok()?;
        let info = replication(&mut connection).await.ok()?;
        info.is_master().then(|| info.field("master_replid").map(str::to_string)).flatten()
    }
}

/// What `SENTINEL MASTER` says of the master: its fields (`flags`, ...).
type MasterState = HashMap<String, String>;

/// What `INFO replication` says.
struct Replication(HashMap<String, String>);

impl Replication {
    fn field(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn is_master(&self) -> bool {
        self.field("role") == Some("master")
    }

    /// A master's replicas (`slaveN:ip=...,port=...,...`).
    fn replicas(&self) -> Vec<NodeAddress> {
        let mut replicas: Vec<NodeAddress> = self
            .0
            .iter()
            .filter(|(name, _)| name.starts_with("slave") && name[5..].parse::<u32>().is_ok())
            .filter_map(|(_, value)| {
                let field =
                    |name: &str| value.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
                Some(NodeAddress { host: field("ip")?.to_string(), port: field("port")?.parse().ok()? })
            })
            .collect();
        replicas.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        replicas
    }
}

async fn replication(connection: &mut MultiplexedConnection) -> Result<Replication, RedisError> {
    let text: String = redis::cmd("INFO").arg("replication").query_async(connection).await?;
    Ok(Replication(
        text.lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_string(), value.trim().to_string()))
            .collect(),
    ))
}

/// The master now: where it is, and the connections to it.
pub struct Master {
    pub address: NodeAddress,
    /// For connections of their own (scans, the invalidation subscription).
    pub client: redis::Client,
    /// For lookups: multiplexed, reconnecting to this address until the master moves.
    pub connection: ConnectionManager,
}

/// The master of a Sentinel group, followed for as long as this value lives.
pub struct SentinelMaster {
    shared: Arc<Shared>,
    /// Stopped when the store is replaced (a reload) and nothing follows the master any more.
    follower: JoinHandle<()>,
}

struct Shared {
    group: SentinelGroup,
    /// The lookups' bound, which their connection's own timeouts follow.
    timeout: Duration,
    current: ArcSwapOption<Master>,
    /// Bumped each time the master moves (or is first found), for those who must follow it.
    moves: watch::Sender<u64>,
    /// Poked when a lookup's error says the master may have moved.
    suspicion: Notify,
    /// The replication id of a master left for its promoted (or selected) replica: while a
    /// sentinel still names that server (it answers as a master until demoted), it is behind,
    /// not a move. Left for a replica only selected, until the deadline.
    superseded: std::sync::Mutex<Option<Superseded>>,
    /// The master's address and replication id as last read, for a move made on a sentinel's
    /// word before the promotion.
    lineage: std::sync::Mutex<Option<(NodeAddress, String)>>,
    failovers: IntCounter,
}

/// A master left for its successor.
struct Superseded {
    /// Its replication id, which it keeps until demoted.
    id: String,
    /// `None` once the successor was seen promoted; else when to stop believing it will be.
    until: Option<Instant>,
}

/// What a sentinel subscription heard.
enum Heard {
    /// The leading sentinel chose this replica of our master (at this address) to promote.
    Selected { replica: NodeAddress, master: NodeAddress },
    /// `+switch-master` for our master: it is now at this address.
    Switch(NodeAddress),
    /// A subscription began: a switch may have been missed before it, so ask.
    Subscribed,
    /// A replica of the master answers as a master that continues its history: promoted.
    Promoted { address: NodeAddress, predecessor: String },
}

impl SentinelMaster {
    /// Starts following `group`'s master; must be called inside the runtime that will drive
    /// the connections. Lookups wait (within their bound) until the first answer.
    pub fn follow(group: SentinelGroup, timeout: Duration, failovers: IntCounter) -> Arc<SentinelMaster> {
        let shared = Arc::new(Shared {
            group,
            timeout,
            current: ArcSwapOption::empty(),
            moves: watch::Sender::new(0),
            suspicion: Notify::new(),
            superseded: std::sync::Mutex::new(None),
            lineage: std::sync::Mutex::new(None),
            failovers,
        });
        let follower = tokio::spawn(follow(Arc::clone(&shared)));
        Arc::new(SentinelMaster { shared, follower })
    }

    /// The master as last known; `None` until the sentinels first named one.
    pub fn current(&self) -> Option<Arc<Master>> {
        self.shared.current.load_full()
    }

    /// The master, waiting for the sentinels' first answer if need be (the caller bounds it).
    pub async fn master(&self) -> Arc<Master> {
        let mut moves = self.moves();
        loop {
            if let Some(master) = self.current() {
                return master;
            }
            if moves.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Changes each time the master moves.
    pub fn moves(&self) -> watch::Receiver<u64> {
        self.shared.moves.subscribe()
    }

    /// A lookup failed with `error`: if it may mean the master moved, ask the sentinels now.
    pub fn suspect(&self, error: &RedisError) {
        if may_have_moved(error) {
            self.shared.suspicion.notify_one();
        }
    }
}

impl Drop for SentinelMaster {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Keeps `shared.current` on the master, for ever (until aborted).
async fn follow(shared: Arc<Shared>) {
    let (heard, mut hearing) = mpsc::channel(16);
    // Dropped (aborting every subscription) when this task is aborted.
    let mut subscriptions = JoinSet::new();
    for sentinel in &shared.group.sentinels {
        subscriptions.spawn(listen(sentinel.clone(), shared.group.master.clone(), heard.clone()));
    }
    subscriptions.spawn(watch_promotions(Arc::clone(&shared), heard.clone()));
    let mut logged_failure = false;
    // Lookups failing all at once ask once: after asking, the next question waits out
    // `SUSPICION_GAP`. What the sentinels announce meanwhile is acted on at once (a selected
    // replica must be followed before its promotion), so the wait is a deadline, not a sleep.
    let mut ask_pending = false;
    let mut quiet_until = tokio::time::Instant::now();
    loop {
        let wait = if shared.current.load().is_some() { CONFIRM_EVERY } else { RETRY_EVERY };
        let ask = tokio::select! {
            message = hearing.recv() => match message {
                Some(Heard::Switch(address)) => {
                    shared.move_to(address);
                    false
                }
                Some(Heard::Promoted { address, predecessor }) => {
                    *shared.lock_superseded() = Some(Superseded { id: predecessor, until: None });
                    shared.move_to(address);
                    false
                }
                Some(Heard::Selected { replica, master }) => {
                    shared.follow_selected(replica, master).await;
                    false
                }
                Some(Heard::Subscribed) | None => true,
            },
            _ = shared.suspicion.notified() => true,
            _ = tokio::time::sleep(wait) => true,
            _ = tokio::time::sleep_until(quiet_until), if ask_pending => true,
        };
        ask_pending |= ask;
        if !ask_pending || tokio::time::Instant::now() < quiet_until {
            continue;
        }
        ask_pending = false;
        match shared.group.resolve_with_id().await {
            Ok((address, id)) => {
                logged_failure = false;
                let mut superseded = shared.lock_superseded();
                if superseded.as_ref().is_some_and(|s| s.until.is_some_and(|until| until <= Instant::now())) {
                    // The selected replica was never promoted: the failover was abandoned.
                    *superseded = None;
                }
                if superseded.as_ref().is_some_and(|s| s.id == id) {
                    // The old master, not demoted yet: the sentinels have not caught up.
                } else if shared.current.load().as_ref().is_some_and(|m| m.address == address) {
                    *superseded = None; // they agree with the promotion followed
                } else {
                    drop(superseded);
                    shared.move_to(address);
                }
            }
            Err(e) if !logged_failure => {
                logged_failure = true;
                log::warn!("key store: cannot find master `{}`: {e}", shared.group.master);
            }
            Err(_) => {}
        }
        quiet_until = tokio::time::Instant::now() + SUSPICION_GAP;
    }
}

impl Shared {
    fn lock_superseded(&self) -> std::sync::MutexGuard<'_, Option<Superseded>> {
        self.superseded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_lineage(&self) -> std::sync::MutexGuard<'_, Option<(NodeAddress, String)>> {
        self.lineage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A sentinel chose `replica` to replace `master`: if that is ours, follow the replica now,
    /// before it is promoted (see the module doc), and hold the old master as superseded for a
    /// while.
    async fn follow_selected(&self, replica: NodeAddress, master: NodeAddress) {
        if !self.current.load().as_ref().is_some_and(|m| m.address == master) {
            return; // old news, or another group's
        }
        let known = self.lock_lineage().as_ref().filter(|(at, _)| *at == master).map(|(_, id)| id.clone());
        // A master frozen or gone cannot say; it is then not taken back until its id is known.
        let id = match known {
            Some(id) => Some(id),
            None => self.group.master_id(&master).await,
        };
        if let Some(id) = id {
            *self.lock_superseded() =
                Some(Superseded { id, until: Some(Instant::now() + SELECTED_PATIENCE) });
        }
        log::warn!(
            "key store: the sentinels chose {replica} to replace master {master}; reading from it now"
        );
        self.move_to(replica);
    }

    /// Points the lookups at `address`, if that is a move.
    fn move_to(&self, address: NodeAddress) {
        let previous = self.current.load();
        if previous.as_ref().is_some_and(|m| m.address == address) {
            return;
        }
        let master = match self.open(&address) {
            Ok(master) => master,
            Err(e) => {
                log::warn!("key store: cannot connect to master {address}: {e}");
                return;
            }
        };
        // Connected now rather than by the first lookups: after the move the listener makes the
        // cache confirm its known keys again, and a confirmation that times out while the
        // connection is still being made would put the next one off by a second.
        let mut warm = master.connection.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(ASK_TIMEOUT, redis::cmd("PING").query_async::<()>(&mut warm)).await;
        });
        self.current.store(Some(Arc::new(master)));
        match previous.as_ref() {
            Some(old) => {
                self.failovers.inc();
                log::warn!(
                    "key store: master `{}` moved from {} to {address}; following it",
                    self.group.master,
                    old.address
                );
            }
            None => log::info!("key store: master `{}` is at {address}", self.group.master),
        }
        self.moves.send_modify(|n| *n += 1);
    }

    fn open(&self, address: &NodeAddress) -> Result<Master, RedisError> {
        let client = redis::Client::open(nodes::node_info(address, &self.group.auth)?)?;
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), nodes::manager_config(self.timeout))?;
        Ok(Master { address: address.clone(), client, connection })
    }
}

/// Asks the master's replicas every `PROMOTION_POLL` whether one of them took over (see the
/// module doc), and the master for its replication id and its replicas. The replicas are asked
/// first, so a master that is frozen or gone delays nothing; its last answer is kept.
async fn watch_promotions(shared: Arc<Shared>, heard: mpsc::Sender<Heard>) {
    let mut connections: HashMap<NodeAddress, MultiplexedConnection> = HashMap::new();
    // The master as it last answered: where, its replication id, its replicas.
    let mut known: Option<(NodeAddress, String, Vec<NodeAddress>)> = None;
    loop {
        tokio::time::sleep(PROMOTION_POLL).await;
        let Some(master) = shared.current.load_full() else { continue };
        if known.as_ref().is_some_and(|(address, ..)| *address != master.address) {
            known = None;
        }
        if let Some((_, id, replicas)) = &known {
            for replica in replicas {
                let Some(info) = ask_replication(&mut connections, replica, &shared.group.auth).await else {
                    continue;
                };
                if info.is_master() && info.field("master_replid2") == Some(id.as_str()) {
                    let promoted = Heard::Promoted { address: replica.clone(), predecessor: id.clone() };
                    let _ = heard.send(promoted).await;
                    known = None;
                    break;
                }
            }
        }
        if let Some(info) = ask_replication(&mut connections, &master.address, &shared.group.auth).await {
            if let (true, Some(id)) = (info.is_master(), info.field("master_replid")) {
                *shared.lock_lineage() = Some((master.address.clone(), id.to_string()));
                // A replica followed on the sentinels' choice, now promoted: the old master is
                // superseded for good.
                if let Some(superseded) = shared.lock_superseded().as_mut() {
                    if info.field("master_replid2") == Some(superseded.id.as_str()) {
                        superseded.until = None;
                    }
                }
                known = Some((master.address.clone(), id.to_string(), info.replicas()));
            }
        }
    }
}

/// `INFO replication` of `node`, over a connection kept for the next time (dropped on error).
async fn ask_replication(
    connections: &mut HashMap<NodeAddress, MultiplexedConnection>,
    node: &NodeAddress,
    auth: &RedisAuth,
) -> Option<Replication> {
    let connection = match connections.get_mut(node) {
        Some(connection) => connection,
        None => {
            let info = nodes::node_info(node, auth).ok()?;
            let connection =
                tokio::time::timeout(ASK_TIMEOUT, nodes::connect(info, ASK_TIMEOUT)).await.ok()?.ok()?;
            connections.entry(node.clone()).or_insert(connection)
        }
    };
    match tokio::time::timeout(ASK_TIMEOUT, replication(connection)).await {
        Ok(Ok(info)) => Some(info),
        _ => {
            connections.remove(node);
            None
        }
    }
}

/// Follows one sentinel's `+switch-master` announcements for ever, subscribing again after a
/// failure.
async fn listen(sentinel: NodeAddress, master: String, heard: mpsc::Sender<Heard>) {
    loop {
        if let Ok(pubsub) = subscribe(&sentinel).await {
            let _ = heard.send(Heard::Subscribed).await;
            let (mut sink, mut messages) = pubsub.split();
            let mut ping = tokio::time::interval(PING_EVERY);
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let payload: String = message.get_payload().unwrap_or_default();
                        let news = match message.get_channel_name() {
                            SELECTED => selected(&payload, &master),
                            _ => switched_to(&payload, &master).map(Heard::Switch),
                        };
                        if let Some(news) = news {
                            let _ = heard.send(news).await;
                        }
                    }
                    _ = ping.tick() => {
                        if !matches!(tokio::time::timeout(ASK_TIMEOUT, sink.ping::<()>()).await, Ok(Ok(()))) {
                            break;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

async fn subscribe(sentinel: &NodeAddress) -> Result<redis::aio::PubSub, RedisError> {
    let subscribe = async {
        let client = redis::Client::open(nodes::node_info(sentinel, &RedisAuth::default())?)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&[SWITCHED, SELECTED]).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(ASK_TIMEOUT * 2, subscribe)
        .await
        .unwrap_or_else(|_| Err(RedisError::from((redis::ErrorKind::Io, "subscribe timed out"))))
}

/// The sentinels' announcement that the master moved.
const SWITCHED: &str = "+switch-master";
/// The leading sentinel's announcement of the replica it will promote.
const SELECTED: &str = "+selected-slave";

/// `+selected-slave`'s payload, `slave <ip>:<port> <ip> <port> @ <name> <master-ip>
/// <master-port>`: the replica and the master it is to replace, if that is `master`.
fn selected(payload: &str, master: &str) -> Option<Heard> {
    let fields: Vec<&str> = payload.split_whitespace().collect();
    match fields.as_slice() {
        ["slave", _, host, port, "@", name, master_host, master_port] if *name == master => {
            Some(Heard::Selected {
                replica: NodeAddress { host: host.to_string(), port: port.parse().ok()? },
                master: NodeAddress { host: master_host.to_string(), port: master_port.parse().ok()? },
            })
        }
        _ => None,
    }
}

/// `+switch-master`'s payload, `<name> <old-ip> <old-port> <new-ip> <new-port>`: the new
/// address, if it names `master`.
fn switched_to(payload: &str, master: &str) -> Option<NodeAddress> {
    let fields: Vec<&str> = payload.split_whitespace().collect();
    match fields.as_slice() {
        [name, _, _, host, port] if *name == master => {
            Some(NodeAddress { host: host.to_string(), port: port.parse().ok()? })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_names_the_new_address_of_our_master_only() {
        let moved = switched_to("keygate 127.0.0.1 7001 127.0.0.1 7002", "keygate");
        assert_eq!(moved, Some(NodeAddress { host: "127.0.0.1".into(), port: 7002 }));
        assert_eq!(switched_to("other 127.0.0.1 7001 127.0.0.1 7002", "keygate"), None);
        assert_eq!(switched_to("keygate 127.0.0.1 7001", "keygate"), None);
    }

    #[test]
    fn a_selection_names_the_replica_chosen_to_replace_our_master_only() {
        let payload = "slave 127.0.0.1:7002 127.0.0.1 7002 @ keygate 127.0.0.1 7001";
        let Some(Heard::Selected { replica, master }) = selected(payload, "keygate") else {
            panic!("not read as a selection");
        };
        assert_eq!(replica, NodeAddress { host: "127.0.0.1".into(), port: 7002 });
        assert_eq!(master, NodeAddress { host: "127.0.0.1".into(), port: 7001 });
        assert!(selected(payload, "other").is_none());
        assert!(selected("slave 127.0.0.1:7002 127.0.0.1 7002", "keygate").is_none());
    }

    #[test]
    fn a_masters_replicas_are_read_from_its_replication_info() {
        let info = Replication(
            [
                ("role", "master"),
                ("connected_slaves", "2"),
                ("slave0", "ip=127.0.0.1,port=7002,state=online,offset=42,lag=0"),
                ("slave1", "ip=10.0.0.5,port=6380,state=wait_bgsave,offset=0,lag=0"),
                ("slave_read_only", "1"),
                ("master_replid", "8f1c"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        assert!(info.is_master());
        let replicas = info.replicas();
        assert_eq!(
            replicas,
            [
                NodeAddress { host: "10.0.0.5".into(), port: 6380 },
                NodeAddress { host: "127.0.0.1".into(), port: 7002 }
            ]
        );
    }
}
