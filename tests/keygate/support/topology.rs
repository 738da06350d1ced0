//! Highly available Redis topologies for the tests, real processes on free loopback ports,
//! each in a folder of its own and stopped on drop:
//!
//! - [`SentinelGroup`]: a master, one replica and three sentinels (each with its own writable
//!   conf file, as Sentinel rewrites it), `down-after-milliseconds` 1000 so a failover is quick;
//! - [`Cluster`]: a Redis Cluster of three masters, with one replica each when a failover is to
//!   be tested, `cluster-node-timeout` 1000.
//!
//! Both, like the single [`Redis`], can write a key's record and announce it ([`KeyWriter`]),
//! so one test body runs against any of the three.

use super::{eventually, free_port, Redis, Setup, Upstream, UsedKeys};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The sentinels' name for the master.
pub const MASTER_NAME: &str = "keygate";

/// What a test body needs of any topology: write records and announce them as a writer would.
pub trait KeyWriter {
    /// The `store:` section's body (indented by two spaces) for a gateway on this topology.
    fn store_yaml(&self) -> String;

    /// Runs `commands` in order where records are written (the master of each key's slot),
    /// over one connection.
    fn write(&self, commands: &[redis::Cmd]);

    /// Writes a key's record (replacing any), without announcing it.
    fn put_key(&self, key: &str, fields: &[(&str, &str)]) {
        self.write(&record_commands(key, fields));
    }

    /// Announces a change of `key`'s record on `keygate:invalidate`.
    fn announce(&self, key: &str) {
        self.write(&[redis::cmd("PUBLISH").arg("keygate:invalidate").arg(id_of(key)).clone()]);
    }
}

/// DEL and HSET of a key's record.
pub fn record_commands(key: &str, fields: &[(&str, &str)]) -> Vec<redis::Cmd> {
    let name = record_name(key);
    let mut hset = redis::cmd("HSET");
    hset.arg(&name);
    for (field, value) in fields {
        hset.arg(*field).arg(*value);
    }
    vec![redis::cmd("DEL").arg(&name).clone(), hset]
}

pub fn run_all(commands: &[redis::Cmd], con: &mut dyn redis::ConnectionLike) {
    for command in commands {
        let _: () = command.query(con).unwrap();
    }
}

pub fn id_of(key: &str) -> String {
    keygate::key::ApiKey::from_cli(key).id().to_hex()
}

pub fn record_name(key: &str) -> String {
    format!("keygate:key:{}", id_of(key))
}

impl KeyWriter for Redis {
    fn store_yaml(&self) -> String {
        format!("  redis:\n    url: {}\n    timeout_ms: 50\n", self.url())
    }

    fn write(&self, commands: &[redis::Cmd]) {
        run_all(commands, &mut self.connection());
    }
}

impl Setup {
    /// A gateway whose `store:` section is `store` (indented by two spaces), before `upstream`.
    pub fn with_store_yaml(store: String, upstream: &Upstream) -> Setup {
        Setup::with_store(store, upstream, UsedKeys::default())
    }
}

// === impl Server ===

/// One `redis-server` process (a data node or a sentinel), killed on drop.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `redis-server` with `conf` (a config file's text; `port`, `bind` and `dir` are
    /// added) and `args`, and waits until it answers PING.
    fn start(port: u16, conf: &str, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsave \"\"\nappendonly no\n{conf}",
            dir.path().display()
        );
        let path = dir.path().join("redis.conf");
        std::fs::write(&path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .arg(&path)
            .args(args)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        let server = Server { port, child: Some(child), dir };
        let up = eventually(Duration::from_secs(10), || server.try_connection().is_some());
        assert!(up.is_some(), "redis-server did not start on {port}:\n{}", server.log());
        server
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn try_connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut con = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
        con.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        redis::cmd("PING").query::<String>(&mut con).ok()?;
        Some(con)
    }

    pub fn connection(&self) -> redis::Connection {
        self.try_connection().unwrap_or_else(|| panic!("redis on {} answers", self.port))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Dies at once, as a crashed server does.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the server wrote to its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// The fields of `INFO section`.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        self.try_info(section).unwrap_or_else(|| panic!("redis on {} answers INFO", self.port))
    }

    /// The fields of `INFO section`, if the server answers now (a replica loading what its new
    /// master sent does not answer PING).
    pub fn try_info(&self, section: &str) -> Option<HashMap<String, String>> {
        let text: String = redis::cmd("INFO").arg(section).query(&mut self.try_connection()?).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// === impl SentinelGroup ===

/// A master, its replica and three sentinels watching them.
pub struct SentinelGroup {
    /// The two data nodes; which is master changes with each failover.
    pub nodes: Vec<Server>,
    pub sentinels: Vec<Server>,
}

impl SentinelGroup {
    pub fn start() -> SentinelGroup {
        let master = Server::start(free_port(), "", &[]);
        let replica = Server::start(free_port(), &format!("replicaof 127.0.0.1 {}\n", master.port), &[]);
        let synced = eventually(Duration::from_secs(10), || {
            replica.info("replication").get("master_link_status").map(String::as_str) == Some("up")
        });
        assert!(synced.is_some(), "the replica never synced:\n{}", replica.log());
        let sentinels = (0..3)
            .map(|_| {
                let conf = format!(
                    "sentinel monitor {MASTER_NAME} 127.0.0.1 {port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 3000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    port = master.port
                );
                Server::start(free_port(), &conf, &["--sentinel"])
            })
            .collect();
        let group = SentinelGroup { nodes: vec![master, replica], sentinels };
        group.wait_until_settled();
        group
    }

    /// Waits until every running replica is synced with the master, and every sentinel knows
    /// it and the other sentinels: before that a failover cannot be agreed on.
    pub fn wait_until_settled(&self) {
        let settled = eventually(Duration::from_secs(30), || {
            let master = self.master_port();
            let replicas_synced = self.nodes.iter().filter(|n| n.is_running() && n.port != master).all(|n| {
                n.try_info("replication").is_some_and(|info| {
                    info.get("master_link_status").is_some_and(|s| s == "up")
                        && info.get("master_port").is_some_and(|p| *p == master.to_string())
                })
            });
            replicas_synced
                && self.sentinels.iter().filter(|s| s.is_running()).all(|sentinel| {
                    let mut con = sentinel.connection();
                    let replicas: Vec<HashMap<String, String>> =
                        redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME).query(&mut con).unwrap();
                    let others: Vec<HashMap<String, String>> =
                        redis::cmd("SENTINEL").arg("SENTINELS").arg(MASTER_NAME).query(&mut con).unwrap();
                    let healthy = |r: &HashMap<String, String>| r.get("flags").is_some_and(|f| f == "slave");
                    replicas.iter().filter(|r| healthy(r)).count() == self.running_nodes() - 1
                        && others.len() >= self.running_sentinels() - 1
                })
        });
        assert!(settled.is_some(), "the sentinels never agreed on the group");
    }

    fn running_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_running()).count()
    }

    fn running_sentinels(&self) -> usize {
        self.sentinels.iter().filter(|n| n.is_running()).count()
    }

    /// The master's port, as the sentinels say.
    pub fn master_port(&self) -> u16 {
        let sentinel = self.sentinels.iter().find(|s| s.is_running()).expect("a sentinel runs");
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query(&mut sentinel.connection())
            .unwrap();
        port
    }

    pub fn master(&self) -> &Server {
        let port = self.master_port();
        self.nodes.iter().find(|n| n.port == port).expect("the master is one of ours")
    }

    /// `SENTINEL FAILOVER`: the replica is promoted, the master demoted, without waiting for a
    /// failure.
    pub fn failover(&self) {
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query(&mut self.sentinels[0].connection())
            .unwrap();
    }

    /// The port of a data node that is not the master (the replica, before a failover).
    pub fn replica_port(&self) -> u16 {
        let master = self.master_port();
        self.nodes.iter().find(|n| n.is_running() && n.port != master).expect("a replica runs").port
    }

    /// Kills the master's process.
    pub fn kill_master(&mut self) {
        let port = self.master_port();
        self.nodes.iter_mut().find(|n| n.port == port).unwrap().kill();
    }

    /// Waits until the sentinels name a master other than the one on `old_port`, and it
    /// answers as master; returns its port.
    pub fn wait_for_new_master(&self, old_port: u16, within: Duration) -> u16 {
        let mut port = old_port;
        let moved =
            eventually(within, || {
                port = self.master_port();
                port != old_port
                    && self.nodes.iter().find(|n| n.port == port).is_some_and(|n| {
                        n.info("replication").get("role").map(String::as_str) == Some("master")
                    })
            });
        assert!(moved.is_some(), "the sentinels never named a new master");
        port
    }
}

impl KeyWriter for SentinelGroup {
    fn store_yaml(&self) -> String {
        let nodes: Vec<String> = self.sentinels.iter().map(Server::address).collect();
        format!(
            "  redis:\n    sentinel:\n      master: {MASTER_NAME}\n      nodes: [{}]\n    timeout_ms: 50\n",
            nodes.join(", ")
        )
    }

    fn write(&self, commands: &[redis::Cmd]) {
        run_all(commands, &mut self.master().connection());
    }
}

// === impl Cluster ===

/// A Redis Cluster on loopback.
pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// Three masters; with `replicas`, one replica each (six nodes).
    pub fn start(replicas: bool) -> Cluster {
        let count = if replicas { 6 } else { 3 };
        let nodes: Vec<Server> = (0..count)
            .map(|_| {
                // The bus port is chosen too: the default (port + 10000) may be in the range the
                // kernel gives outgoing connections, and taken.
                let conf = format!(
                    "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\ncluster-port {}\n",
                    free_port()
                );
                Server::start(free_port(), &conf, &[])
            })
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(Server::address))
            .args(["--cluster-replicas", if replicas { "1" } else { "0" }, "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(created.status.success(), "cluster create: {}", String::from_utf8_lossy(&created.stderr));
        let cluster = Cluster { nodes };
        cluster.wait_until_settled();
        cluster
    }

    /// Waits until every running node says the cluster is ok and knows every other node.
    pub fn wait_until_settled(&self) {
        let running = self.nodes.iter().filter(|n| n.is_running()).count();
        let ok = eventually(Duration::from_secs(20), || {
            self.nodes.iter().filter(|n| n.is_running()).all(|node| {
                let info: String =
                    redis::cmd("CLUSTER").arg("INFO").query(&mut node.connection()).unwrap_or_default();
                let known = node.cluster_nodes().iter().filter(|n| !n.flags.contains("fail")).count();
                info.contains("cluster_state:ok") && known == running
            })
        });
        assert!(ok.is_some(), "the cluster never settled");
    }

    /// A master that has a replica, and that replica (the first in `CLUSTER NODES`).
    pub fn master_with_replica(&self) -> (u16, u16) {
        let view = self.running()[0].cluster_nodes();
        view.iter()
            .filter(|n| n.flags.contains("slave") && !n.flags.contains("fail"))
            .find_map(|replica| {
                let master = view.iter().find(|m| m.id == replica.master_id)?;
                Some((master.port, replica.port))
            })
            .expect("a replica")
    }

    fn running(&self) -> Vec<&Server> {
        self.nodes.iter().filter(|n| n.is_running()).collect()
    }

    pub fn node(&self, port: u16) -> &Server {
        self.nodes.iter().find(|n| n.port == port).expect("one of ours")
    }

    /// `CLUSTER FAILOVER` on the replica on `port`: it takes over its master's slots.
    pub fn failover_to(&self, port: u16) {
        let _: () = redis::cmd("CLUSTER").arg("FAILOVER").query(&mut self.node(port).connection()).unwrap();
    }

    pub fn kill(&mut self, port: u16) {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap().kill();
    }

    /// Waits until the node on `port` serves slots as a master, in every running node's view.
    pub fn wait_until_master(&self, port: u16, within: Duration) {
        let promoted = eventually(within, || {
            self.running().iter().all(|node| {
                node.cluster_nodes().iter().any(|n| n.port == port && n.flags.contains("master"))
                    && redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query::<String>(&mut node.connection())
                        .is_ok_and(|i| i.contains("cluster_state:ok"))
            })
        });
        assert!(promoted.is_some(), "the node on {port} never became a master");
    }

    /// Writes and announces a key named `{stem}-{n}` (app `acme`) whose slot the master on
    /// `port` serves.
    pub fn key_on(&self, port: u16, stem: &str) -> String {
        let mut master = self.node(port).connection();
        for n in 0..1000 {
            let key = format!("{stem}-{n}");
            // A key of another master's slots is a MOVED error here.
            if redis::cmd("EXISTS").arg(record_name(&key)).query::<u64>(&mut master).is_ok() {
                self.put_key(&key, &[("app", "acme")]);
                self.announce(&key);
                return key;
            }
        }
        panic!("no key of the master on {port}'s slots")
    }

    /// How many keys each master holds (the masters that hold any, by port).
    pub fn keys_per_master(&self) -> HashMap<u16, usize> {
        let view = self.running()[0].cluster_nodes();
        view.iter()
            .filter(|n| n.flags.contains("master") && !n.flags.contains("fail"))
            .map(|m| (m.port, redis::cmd("DBSIZE").query(&mut self.node(m.port).connection()).unwrap()))
            .collect()
    }

    fn connection(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self.running().iter().map(|n| n.url()).collect();
        redis::cluster::ClusterClient::new(urls).unwrap().get_connection().unwrap()
    }
}

impl KeyWriter for Cluster {
    fn store_yaml(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().take(3).map(Server::address).collect();
        format!("  redis:\n    cluster:\n      nodes: [{}]\n    timeout_ms: 50\n", nodes.join(", "))
    }

    fn write(&self, commands: &[redis::Cmd]) {
        run_all(commands, &mut self.connection());
    }
}

/// One line of `CLUSTER NODES`.
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub flags: String,
    /// The master's id for a replica, `-` for a master.
    pub master_id: String,
}

impl Server {
    pub fn cluster_nodes(&self) -> Vec<ClusterNode> {
        let text: String =
            redis::cmd("CLUSTER").arg("NODES").query(&mut self.connection()).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let address = fields.get(1)?.split('@').next()?;
                Some(ClusterNode {
                    id: fields[0].to_string(),
                    port: address.rsplit(':').next()?.parse().ok()?,
                    flags: fields.get(2)?.to_string(),
                    master_id: fields.get(3)?.to_string(),
                })
            })
            .collect()
    }
}

/// Writes `count` keys named `{stem}-{n}` (app `acme`) through `writer`, over one connection.
pub fn put_keys(writer: &dyn KeyWriter, stem: &str, count: usize) -> Vec<String> {
    let keys: Vec<String> = (0..count).map(|n| format!("{stem}-{n:05}")).collect();
    let commands: Vec<redis::Cmd> =
        keys.iter().flat_map(|k| record_commands(k, &[("app", "acme")])).collect();
    writer.write(&commands);
    keys
}

/// The keygate binary's `keys` subcommand against `config`; its output.
pub fn keys_cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keygate")).args(args).arg("-c").arg(config).output().unwrap()
}

/// Polls the node on `port` every 2 ms until it answers `ROLE` as a master; the moment it did,
/// and a connection to it. Connects again after an error: Sentinel kills a promoted replica's
/// clients.
pub fn until_master(port: u16, within: Duration) -> (std::time::Instant, redis::Connection) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let deadline = std::time::Instant::now() + within;
    loop {
        assert!(std::time::Instant::now() < deadline, "the node on {port} never answered as a master");
        if let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) {
            let _ = con.set_read_timeout(Some(Duration::from_secs(1)));
            loop {
                match redis::cmd("ROLE").query::<Vec<redis::Value>>(&mut con) {
                    Ok(role) if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") =>
                    {
                        return (std::time::Instant::now(), con);
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(2)),
                    Err(_) => break,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Connects to the node on `port` again (after Sentinel killed the clients of a promoted node).
pub fn connect_to(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let con = client.get_connection_with_timeout(Duration::from_secs(1)).unwrap();
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    con
}
