//! The configuration: read from YAML ([`file`]), validated into the runtime [`Config`].
//!
//! The two are different types on purpose: the file types mirror what users write, and only a
//! [`Config`] that passed every check reaches the gateway. Loading reports every problem at
//! once, each with the field's path and, where it can be found, its line in the file.

pub mod file;
mod problems;

use crate::extract::{KeyExtractor, KeySource};
pub use crate::filter::FilterConfig;
use file::{
    AccessLogFile, ApiKeyFile, CacheFile, FilterFile, RateLimitFile, RedisFile, StoreFile, UpstreamFile,
};
use ipnet::IpNet;
use problems::Problems;
pub use problems::{ConfigErrors, Problem};
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration: everything keygate runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy accepts clients.
    pub listen: Vec<Listener>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; none when absent.
    pub admin_listen: Option<String>,
    /// The nginx `auth_request` listener, when configured.
    pub auth_listen: Option<Listener>,
    pub threads: usize,
    /// Whether an idle worker thread takes tasks queued on a busy one (Pingora's
    /// `work_stealing`); off, each thread runs its own single-threaded runtime.
    pub work_stealing: bool,
    pub pid_file: Option<PathBuf>,
    pub upgrade_sock: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests (Pingora's own default is 300 s).
    pub grace_period: Duration,
    /// How long a client may take to send a request's headers (slowloris).
    pub header_timeout: Duration,
    pub upstream: UpstreamConfig,
    pub api_key: KeyExtractor,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    /// The membership filter of every key id in the store.
    pub filter: FilterConfig,
    pub rate_limit: RateLimitConfig,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The JSON access log, when configured.
    pub access_log: Option<AccessLogConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// A file to append to; `None` for stderr.
    pub path: Option<PathBuf>,
    /// Rejections logged per second at most (forwarded requests are always logged).
    pub rejections_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub peers: Vec<SocketAddr>,
    pub health_check: HealthCheck,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    Tcp { interval: Duration },
    Http { path: String, interval: Duration },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// A lookup slower than this is a store error, never an "unknown".
    pub timeout: Duration,
    /// Store lookups in flight at once; beyond it requests are shed with 503 `overloaded`.
    pub max_inflight: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Redis {
        /// Where the servers are: one, a Sentinel group or a cluster.
        nodes: RedisNodes,
        /// The credentials every Redis node is asked with (never the sentinels).
        auth: RedisAuth,
        prefix: String,
    },
    /// A YAML key file, its path resolved against the config file's folder.
    File(PathBuf),
}

/// The three shapes a Redis key store comes in (`store.redis.url`, `.sentinel`, `.cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisNodes {
    /// One server: a `redis://` URL.
    Url(String),
    /// A master and its replicas: whichever is master now is asked of the sentinels.
    Sentinel {
        /// The name the sentinels monitor it by.
        master: String,
        /// The sentinels themselves, asked in order.
        nodes: Vec<NodeAddress>,
    },
    /// A Redis Cluster: `nodes` are where its map of slots is first asked for.
    Cluster { nodes: Vec<NodeAddress> },
}

/// A node as written in the config: `HOST:PORT`, the host a name or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    pub host: String,
    pub port: u16,
}

impl NodeAddress {
    /// `HOST:PORT` (an IPv6 host in brackets), or why not.
    pub fn parse(text: &str) -> Result<NodeAddress, &'static str> {
        let (host, port) = text.rsplit_once(':').ok_or("not HOST:PORT")?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = port.parse::<u16>().ok().filter(|&p| p > 0).ok_or("not a port from 1 to 65535")?;
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err("not HOST:PORT");
        }
        Ok(NodeAddress { host: host.to_string(), port })
    }
}

impl std::fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// `store.redis.username` and `.password`, for every Redis node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// A password: its `Debug` never prints it, so no log line or panic message can.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    /// The text itself, for the one place that sends it (a connection's handshake).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MASKED")
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub capacity: usize,
    pub negative_capacity: usize,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub stale: Duration,
}

#[cfg(any(test, feature = "test-util"))]
impl CacheConfig {
    /// `capacity` entries of each kind, TTLs of 300 s (known), 60 s (unknown), an hour stale.
    pub fn for_tests(capacity: usize) -> Self {
        CacheConfig {
            capacity,
            negative_capacity: capacity,
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(60),
            stale: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    pub per_key: Rate,
    pub unauthenticated_per_ip: Rate,
    /// Client addresses the per-IP limiter holds at once; past it the least recent are forgotten.
    pub max_addresses: usize,
    /// Whether a key's rate holds per gateway or for the whole fleet.
    pub scope: LimitScope,
    /// How often consumed tokens (and quota counts) are exchanged through the store.
    pub sync: Duration,
}

/// `rate_limit.scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// Each gateway limits a key alone.
    Local,
    /// A key's rate and burst hold for every gateway on the store together.
    Fleet,
}

/// The shortest and longest `sync_ms`: faster would spend Redis on little; slower would make
/// the fleet's overshoot (`N*rate*sync`) too large to be a limit.
const SYNC_MS: std::ops::RangeInclusive<u64> = 10..=10_000;

/// The most client addresses the per-IP limiter may be asked to hold: about 6 GB of state, far
/// past any sidecar's memory; more is surely a typo.
const MAX_ADDRESSES: usize = 100_000_000;

/// The longest a cache duration may be (ten years).
const MAX_CACHE_SECONDS: u64 = 10 * 365 * 86_400;

/// The top level's documented defaults; each section's are its file type's `Default`.
const GRACE_PERIOD_S: u64 = 5;
const HEADER_TIMEOUT_MS: u64 = 10_000;
/// Off by default: see the README's performance section for the figures behind it.
const WORK_STEALING: bool = false;

const TOP_LEVEL: &[&str] = &[
    "listen",
    "admin_listen",
    "auth_listen",
    "threads",
    "work_stealing",
    "pid_file",
    "upgrade_sock",
    "grace_period_s",
    "header_timeout_ms",
    "upstream",
    "api_key",
    "store",
    "cache",
    "filter",
    "rate_limit",
    "trusted_proxies",
    "access_log",
];

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(path, Problem::new("", None, format!("cannot read: {e}"))))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|problems| ConfigErrors::new(path, problems))
    }

    /// Validates YAML `text`; relative paths in it are resolved against `base`.
    ///
    /// Each top-level field is read on its own, so that one's error hides no other's. Problems
    /// are listed in the order found: unknown fields first, then `Config`'s fields in order.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
        let top = top_level(text)?;
        let mut p = Problems::new(text);
        for name in top.keys().map(|k| k.as_str().unwrap_or("")).filter(|k| !TOP_LEVEL.contains(k)) {
            p.add(name, "unknown field");
        }
        let listen = listeners(&mut p, &top, base);
        let admin_listen =
            p.field::<String>(&top, "admin_listen").filter(|a| tcp_address(&mut p, "admin_listen", a));
        let auth_listen =
            p.field::<String>(&top, "auth_listen").and_then(|a| listener(&mut p, "auth_listen", &a, base));
        let threads = p.field::<usize>(&top, "threads");
        p.ensure(threads != Some(0), "threads", "must be at least 1");
        let work_stealing = p.field::<bool>(&top, "work_stealing").unwrap_or(WORK_STEALING);
        let pid_file = p.field::<String>(&top, "pid_file").map(|f| base.join(f));
        let upgrade_sock = p.field::<String>(&top, "upgrade_sock").map(|f| base.join(f));
        let grace_period_s = p.field(&top, "grace_period_s").unwrap_or(GRACE_PERIOD_S);
        let header_timeout_ms = p.field(&top, "header_timeout_ms").unwrap_or(HEADER_TIMEOUT_MS);
        p.ensure(header_timeout_ms > 0, "header_timeout_ms", "must be above 0");
        let upstream = p
            .required::<UpstreamFile>(&top, "upstream", "required: the ingestion nodes to forward to")
            .map(|u| u.validate(&mut p));
        let api_key = p.section::<ApiKeyFile>(&top, "api_key").validate(&mut p);
        let store = p
            .required::<StoreFile>(&top, "store", "required: exactly one of redis or file")
            .and_then(|s| s.validate(&mut p, base));
        let cache = p.section::<CacheFile>(&top, "cache").validate(&mut p);
        let filter = p.section::<FilterFile>(&top, "filter").validate(&mut p);
        let rate_limit = p.section::<RateLimitFile>(&top, "rate_limit").validate(&mut p);
        let trusted_proxies = p.field::<Vec<String>>(&top, "trusted_proxies").unwrap_or_default();
        let trusted_proxies = trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(i, net)| network(&mut p, &format!("trusted_proxies[{i}]"), net))
            .collect();
        let access_log = p.field::<AccessLogFile>(&top, "access_log").map(|a| a.validate(&mut p, base));
        match (upstream, store) {
            (Some(upstream), Some(store)) if p.is_empty() => Ok(Config {
                listen,
                admin_listen,
                auth_listen,
                threads: threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                work_stealing,
                pid_file,
                upgrade_sock,
                grace_period: Duration::from_secs(grace_period_s),
                header_timeout: Duration::from_millis(header_timeout_ms),
                upstream,
                api_key,
                store,
                cache,
                filter,
                rate_limit,
                trusted_proxies,
                access_log,
            }),
            _ => Err(p.into_vec()),
        }
    }
}

/// The file's top-level mapping, or the one problem that stops it being read at all.
fn top_level(text: &str) -> Result<Mapping, Vec<Problem>> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(map)) => Ok(map),
        Ok(_) => Err(vec![Problem::new("", Some(1), "the file must be a mapping")]),
        Err(e) => Err(vec![Problem::new("", e.location().map(|l| l.line()), e.to_string())]),
    }
}

impl Problems<'_> {
    /// The top-level field `name`, deserialized; `None` when absent or misshapen (recorded).
    /// An unknown field in a section is recorded and then left out, so that it hides none of
    /// the section's other problems (an unknown `upstream.colour` and an empty `peers`: both).
    fn field<T: DeserializeOwned>(&mut self, top: &Mapping, name: &str) -> Option<T> {
        let mut value = top.get(name)?.clone();
        loop {
            match serde_yaml::from_value(value.clone()) {
                Ok(v) => return Some(v),
                Err(e) => {
                    let message = e.to_string();
                    self.add_shape_error(name, &message);
                    let unknown = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next());
                    // Each round removes one field, so this ends.
                    let removed = match (unknown, &mut value) {
                        (Some(sub), Value::Mapping(section)) => section.remove(sub).is_some(),
                        _ => false,
                    };
                    if !removed {
                        return None;
                    }
                }
            }
        }
    }

    /// A section users may leave out: absent, it is its documented default. Misshapen (other
    /// than by an unknown field), it is too, so that its problem is the only one reported for it.
    fn section<T: DeserializeOwned + Default>(&mut self, top: &Mapping, name: &str) -> T {
        self.field(top, name).unwrap_or_default()
    }

    /// A field users must write: absent, it is a problem saying `why` it is needed.
    fn required<T: DeserializeOwned>(&mut self, top: &Mapping, name: &str, why: &str) -> Option<T> {
        if !top.contains_key(name) {
            self.add(name, why);
        }
        self.field(top, name)
    }
}

fn listeners(p: &mut Problems, top: &Mapping, base: &Path) -> Vec<Listener> {
    let list =
        p.required::<Vec<String>>(top, "listen", "required: at least one listener").unwrap_or_default();
    let listen: Vec<Listener> =
        list.iter().enumerate().filter_map(|(i, l)| listener(p, &format!("listen[{i}]"), l, base)).collect();
    if listen.is_empty() && top.contains_key("listen") {
        p.add("listen", "at least one listener is required");
    }
    listen
}

fn listener(p: &mut Problems, field: &str, value: &str, base: &Path) -> Option<Listener> {
    if let Some(path) = value.strip_prefix("unix:") {
        if path.is_empty() {
            p.add(field, "a unix listener needs a path: unix:/path.sock");
            return None;
        }
        return Some(Listener::Unix(base.join(path)));
    }
    tcp_address(p, field, value).then(|| Listener::Tcp(value.to_string()))
}

fn tcp_address(p: &mut Problems, field: &str, value: &str) -> bool {
    let ok = value.parse::<SocketAddr>().is_ok();
    p.ensure(ok, field, format!("`{value}` is not HOST:PORT (an IP address and a port)"));
    ok
}

fn network(p: &mut Problems, field: &str, value: &str) -> Option<IpNet> {
    let parsed = value.parse::<IpNet>().or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from));
    p.ensure(parsed.is_ok(), field, format!("`{value}` is not an address or CIDR network"));
    parsed.ok()
}

// === Each section's validation: every problem recorded, the runtime type built from it ===
//
// A section's value is built even when it has problems (whenever it can be), since `parse`
// returns it only if there were none.

impl UpstreamFile {
    fn validate(self, p: &mut Problems) -> UpstreamConfig {
        let mut peers = Vec::new();
        if let Some(written) = p.given("upstream", "peers", self.peers) {
            p.ensure(!written.is_empty(), "upstream.peers", "at least one peer is required");
            for (i, peer) in written.iter().enumerate() {
                match peer.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                    Some(addr) => peers.push(addr),
                    None => p.add(&format!("upstream.peers[{i}]"), format!("`{peer}` is not HOST:PORT")),
                }
            }
        }
        let h = self.health_check.unwrap_or_default();
        p.ensure(h.interval_ms > 0, "upstream.health_check.interval_ms", "must be above 0");
        let interval = Duration::from_millis(h.interval_ms);
        let health_check = match (h.kind.as_str(), h.path) {
            ("tcp", None) => HealthCheck::Tcp { interval },
            ("tcp", Some(_)) => {
                p.add("upstream.health_check.path", "only an http check has a path");
                HealthCheck::Tcp { interval }
            }
            ("http", path) => {
                let path = path.unwrap_or_else(|| "/".into());
                p.ensure(path.starts_with('/'), "upstream.health_check.path", "must start with /");
                HealthCheck::Http { path, interval }
            }
            (other, _) => {
                p.add("upstream.health_check.kind", format!("`{other}` is not tcp or http"));
                HealthCheck::Tcp { interval }
            }
        };
        p.ensure(self.connect_timeout_ms > 0, "upstream.connect_timeout_ms", "must be above 0");
        p.ensure(self.read_timeout_ms > 0, "upstream.read_timeout_ms", "must be above 0");
        UpstreamConfig {
            peers,
            health_check,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            read_timeout: Duration::from_millis(self.read_timeout_ms),
        }
    }
}

impl ApiKeyFile {
    fn validate(self, p: &mut Problems) -> KeyExtractor {
        p.ensure(!self.sources.is_empty(), "api_key.sources", "at least one source is required");
        let mut sources = Vec::new();
        for (i, source) in self.sources.into_iter().enumerate() {
            let field = format!("api_key.sources[{i}]");
            match (source.header, source.query) {
                (Some(name), None) => match http::header::HeaderName::try_from(name.as_str()) {
                    Ok(name) => sources.push(KeySource::Header(name)),
                    Err(_) => p.add(&field, format!("`{name}` is not a header name")),
                },
                (None, Some(name)) if name.is_empty() || name.contains(['&', '=']) => {
                    p.add(&field, format!("`{name}` is not a query parameter name"))
                }
                (None, Some(name)) => sources.push(KeySource::Query(name)),
                _ => p.add(&field, "exactly one of header or query is required"),
            }
        }
        p.ensure((1..=4096).contains(&self.max_length), "api_key.max_length", "must be between 1 and 4096");
        KeyExtractor { sources, max_length: self.max_length, forward: self.forward }
    }
}

impl StoreFile {
    fn validate(self, p: &mut Problems, base: &Path) -> Option<StoreConfig> {
        match (self.redis, self.file) {
            (Some(r), None) => {
                let (timeout_ms, max_inflight, prefix) = (r.timeout_ms, r.max_inflight, r.prefix.clone());
                let nodes = r.nodes(p);
                p.ensure(timeout_ms > 0, "store.redis.timeout_ms", "must be above 0");
                p.ensure(max_inflight > 0, "store.redis.max_inflight", "must be at least 1");
                if matches!(nodes, Some((RedisNodes::Cluster { .. }, _))) {
                    p.ensure(
                        !has_hash_tag(&prefix),
                        "store.redis.prefix",
                        "a hash tag ({...}) would put every key in one slot of the cluster",
                    );
                }
                let (nodes, auth) = nodes?;
                Some(StoreConfig {
                    backend: StoreBackend::Redis { nodes, auth, prefix },
                    timeout: Duration::from_millis(timeout_ms),
                    max_inflight,
                })
            }
            (None, Some(path)) => {
                let RedisFile { timeout_ms, max_inflight, .. } = RedisFile::default();
                Some(StoreConfig {
                    backend: StoreBackend::File(base.join(path)),
                    timeout: Duration::from_millis(timeout_ms),
                    max_inflight,
                })
            }
            _ => {
                p.add("store", "exactly one of redis or file is required");
                None
            }
        }
    }
}

impl RedisFile {
    /// Where the servers are (exactly one of `url`, `sentinel`, `cluster`) and their credentials.
    fn nodes(self, p: &mut Problems) -> Option<(RedisNodes, RedisAuth)> {
        let written: Vec<&str> = [
            ("url", self.url.is_some()),
            ("sentinel", self.sentinel.is_some()),
            ("cluster", self.cluster.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
        for extra in written.iter().skip(1) {
            p.add(
                &format!("store.redis.{extra}"),
                format!("exactly one of url, sentinel or cluster may be given, and {} is too", written[0]),
            );
        }
        if self.username.is_some() && self.password.is_none() {
            p.add("store.redis.username", "needs a password too");
        }
        let auth = RedisAuth { username: self.username, password: self.password.map(Secret::new) };
        let nodes = match (self.url, self.sentinel, self.cluster) {
            (Some(url), _, _) => {
                match redis::Client::open(url.as_str()) {
                    Err(e) => p.add("store.redis.url", format!("not a Redis URL: {e}")),
                    Ok(client) if auth.password.is_some() => {
                        let settings = client.get_connection_info().redis_settings();
                        let has_own = settings.password().is_some() || settings.username().is_some();
                        p.ensure(
                            !has_own,
                            "store.redis.password",
                            "the url has credentials of its own: give them in one place",
                        );
                    }
                    Ok(_) => {}
                }
                RedisNodes::Url(url)
            }
            (None, Some(sentinel), _) => {
                let master = p.given("store.redis.sentinel", "master", sentinel.master);
                p.ensure(
                    master.as_ref().is_none_or(|m| !m.is_empty()),
                    "store.redis.sentinel.master",
                    "must name the master",
                );
                let nodes = p.given("store.redis.sentinel", "nodes", sentinel.nodes);
                let nodes = node_list(p, "store.redis.sentinel.nodes", nodes.as_deref());
                RedisNodes::Sentinel { master: master?, nodes: nodes? }
            }
            (None, None, Some(cluster)) => {
                let nodes = p.given("store.redis.cluster", "nodes", cluster.nodes);
                RedisNodes::Cluster { nodes: node_list(p, "store.redis.cluster.nodes", nodes.as_deref())? }
            }
            (None, None, None) => {
                // As when `url` was the only way: users of one server read the same message.
                p.given::<String>("store", "url", None);
                return None;
            }
        };
        Some((nodes, auth))
    }
}

/// Whether Redis Cluster hashes only part of `name` (its first `{...}` with something inside).
fn has_hash_tag(name: &str) -> bool {
    name.split_once('{').and_then(|(_, rest)| rest.find('}')).is_some_and(|end| end > 0)
}

/// A list of `HOST:PORT`, at least one; `None` when absent.
fn node_list(p: &mut Problems, field: &str, written: Option<&[String]>) -> Option<Vec<NodeAddress>> {
    let written = written?;
    p.ensure(!written.is_empty(), field, "at least one node is required");
    let mut nodes = Vec::new();
    for (i, node) in written.iter().enumerate() {
        match NodeAddress::parse(node) {
            Ok(address) => nodes.push(address),
            Err(why) => p.add(&format!("{field}[{i}]"), format!("`{node}` is {why}")),
        }
    }
    Some(nodes)
}

impl CacheFile {
    fn validate(self, p: &mut Problems) -> CacheConfig {
        p.ensure(self.capacity > 0, "cache.capacity", "must be at least 1");
        p.ensure(self.negative_capacity > 0, "cache.negative_capacity", "must be at least 1");
        p.ensure(self.ttl_s > 0, "cache.ttl_s", "must be at least 1");
        p.ensure(self.negative_ttl_s > 0, "cache.negative_ttl_s", "must be at least 1");
        // Ten years: more is surely a mistake, and keeps the time arithmetic far from overflow.
        for (field, value) in
            [("ttl_s", self.ttl_s), ("negative_ttl_s", self.negative_ttl_s), ("stale_s", self.stale_s)]
        {
            if value > MAX_CACHE_SECONDS {
                p.add(&format!("cache.{field}"), format!("must be at most {MAX_CACHE_SECONDS} (ten years)"));
            }
        }
        CacheConfig {
            capacity: self.capacity,
            negative_capacity: self.negative_capacity,
            ttl: Duration::from_secs(self.ttl_s),
            negative_ttl: Duration::from_secs(self.negative_ttl_s),
            stale: Duration::from_secs(self.stale_s),
        }
    }
}

impl FilterFile {
    fn validate(self, p: &mut Problems) -> FilterConfig {
        p.ensure((4..=32).contains(&self.bits_per_key), "filter.bits_per_key", "must be between 4 and 32");
        p.ensure(self.rebuild_interval_s > 0, "filter.rebuild_interval_s", "must be at least 1");
        p.ensure(
            (1..=100_000).contains(&self.scan_batch),
            "filter.scan_batch",
            "must be between 1 and 100000",
        );
        self.into()
    }
}

impl From<FilterFile> for FilterConfig {
    fn from(f: FilterFile) -> Self {
        FilterConfig {
            enabled: f.enabled,
            rebuild_interval: Duration::from_secs(f.rebuild_interval_s),
            bits_per_key: f.bits_per_key,
            scan_batch: f.scan_batch,
            scan_pause: Duration::from_millis(f.scan_pause_ms),
        }
    }
}

impl RateLimitFile {
    fn validate(self, p: &mut Problems) -> RateLimitConfig {
        let per_key = rate(p, "rate_limit", self.per_second, self.burst);
        let ip = self.unauthenticated_per_ip.unwrap_or_default();
        let unauthenticated_per_ip = rate(p, "rate_limit.unauthenticated_per_ip", ip.per_second, ip.burst);
        p.ensure(
            (1..=MAX_ADDRESSES).contains(&ip.max_addresses),
            "rate_limit.unauthenticated_per_ip.max_addresses",
            format!("must be from 1 to {MAX_ADDRESSES}"),
        );
        let scope = match self.scope.as_str() {
            "local" => LimitScope::Local,
            "fleet" => LimitScope::Fleet,
            other => {
                p.add("rate_limit.scope", format!("`{other}` is not local or fleet"));
                LimitScope::Local
            }
        };
        p.ensure(
            SYNC_MS.contains(&self.sync_ms),
            "rate_limit.sync_ms",
            format!("must be from {} to {}", SYNC_MS.start(), SYNC_MS.end()),
        );
        RateLimitConfig {
            per_key,
            unauthenticated_per_ip,
            max_addresses: ip.max_addresses,
            scope,
            sync: Duration::from_millis(self.sync_ms),
        }
    }
}

fn rate(p: &mut Problems, field: &str, per_second: f64, burst: u32) -> Rate {
    use crate::store::record::{MAX_RATE, MIN_RATE};
    let in_range = per_second.is_finite() && (MIN_RATE..=MAX_RATE).contains(&per_second);
    p.ensure(
        in_range,
        &format!("{field}.per_second"),
        format!("must be a number from {MIN_RATE} to {MAX_RATE}"),
    );
    p.ensure(burst > 0, &format!("{field}.burst"), "must be at least 1");
    Rate { per_second, burst }
}

impl AccessLogFile {
    fn validate(self, p: &mut Problems, base: &Path) -> AccessLogConfig {
        p.ensure(self.rejections_per_second > 0, "access_log.rejections_per_second", "must be at least 1");
        AccessLogConfig {
            path: (self.path != "stderr").then(|| base.join(&self.path)),
            rejections_per_second: self.rejections_per_second,
        }
    }
}

#[cfg(test)]
mod tests;
