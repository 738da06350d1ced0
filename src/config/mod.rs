//! The configuration: read from YAML ([`file`]), validated into the runtime [`Config`].
//!
//! The two are different types on purpose: the file types mirror what users write, and only a
//! [`Config`] that passed every check reaches the gateway. Loading reports every problem at
//! once, each with the field's path and, where it can be found, its line in the file.

pub mod file;
mod problems;

use crate::extract::{KeyExtractor, KeySource};
use crate::filter::FilterConfig;
use file::{
    defaults, AccessLogFile, ApiKeyFile, CacheFile, FilterFile, RateLimitFile, StoreFile, UpstreamFile,
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
        url: String,
        prefix: String,
    },
    /// A YAML key file, its path resolved against the config file's folder.
    File(PathBuf),
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
}

/// The longest a cache duration may be (ten years).
const MAX_CACHE_SECONDS: u64 = 10 * 365 * 86_400;

const TOP_LEVEL: &[&str] = &[
    "listen",
    "admin_listen",
    "auth_listen",
    "threads",
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
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
        let mut p = Problems::new(text);
        let top: Mapping = match serde_yaml::from_str::<Value>(text) {
            Ok(Value::Mapping(map)) => map,
            Ok(_) => return Err(vec![Problem::new("", Some(1), "the file must be a mapping")]),
            Err(e) => {
                let line = e.location().map(|l| l.line());
                return Err(vec![Problem::new("", line, e.to_string())]);
            }
        };
        for key in top.keys() {
            let name = key.as_str().unwrap_or("");
            if !TOP_LEVEL.contains(&name) {
                p.add(name, "unknown field");
            }
        }
        let section = |name: &str| top.get(name).cloned();

        let listen = match section("listen") {
            None => {
                p.add("listen", "required: at least one listener");
                vec![]
            }
            Some(v) => p
                .typed::<Vec<String>>("listen", v)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .filter_map(|(i, l)| listener(&mut p, &format!("listen[{i}]"), l, base))
                .collect(),
        };
        if listen.is_empty() && top.contains_key("listen") {
            p.add("listen", "at least one listener is required");
        }
        let admin_listen = section("admin_listen")
            .and_then(|v| p.typed::<String>("admin_listen", v))
            .filter(|a| tcp_address(&mut p, "admin_listen", a));
        let auth_listen = section("auth_listen")
            .and_then(|v| p.typed::<String>("auth_listen", v))
            .and_then(|a| listener(&mut p, "auth_listen", &a, base));
        let threads = match section("threads").and_then(|v| p.typed::<usize>("threads", v)) {
            Some(0) => {
                p.add("threads", "must be at least 1");
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let path_field = |p: &mut Problems, name: &str| {
            section(name).and_then(|v| p.typed::<String>(name, v)).map(|s| base.join(s))
        };
        let pid_file = path_field(&mut p, "pid_file");
        let upgrade_sock = path_field(&mut p, "upgrade_sock");
        let grace_period_s = section("grace_period_s")
            .and_then(|v| p.typed::<u64>("grace_period_s", v))
            .unwrap_or_else(defaults::grace_period_s);

        let header_timeout_ms = section("header_timeout_ms")
            .and_then(|v| p.typed::<u64>("header_timeout_ms", v))
            .unwrap_or_else(defaults::header_timeout_ms);
        if header_timeout_ms == 0 {
            p.add("header_timeout_ms", "must be above 0");
        }
        let upstream = match section("upstream") {
            None => {
                p.add("upstream", "required: the ingestion nodes to forward to");
                None
            }
            Some(v) => p.typed::<UpstreamFile>("upstream", v).and_then(|u| upstream(&mut p, u)),
        };
        let api_key = section("api_key")
            .map_or_else(|| Some(ApiKeyFile::default()), |v| p.typed::<ApiKeyFile>("api_key", v))
            .and_then(|k| api_key(&mut p, k));
        let store = match section("store") {
            None => {
                p.add("store", "required: exactly one of redis or file");
                None
            }
            Some(v) => p.typed::<StoreFile>("store", v).and_then(|s| store(&mut p, s, base)),
        };
        let cache = section("cache")
            .map_or_else(|| Some(CacheFile::default()), |v| p.typed::<CacheFile>("cache", v))
            .map(|c| cache(&mut p, c));
        let filter = section("filter")
            .map_or_else(|| Some(FilterFile::default()), |v| p.typed::<FilterFile>("filter", v))
            .map(|f| filter(&mut p, f));
        let rate_limit = section("rate_limit")
            .map_or_else(|| Some(RateLimitFile::default()), |v| p.typed::<RateLimitFile>("rate_limit", v))
            .map(|r| rate_limit(&mut p, r));
        let trusted_proxies = section("trusted_proxies")
            .and_then(|v| p.typed::<Vec<String>>("trusted_proxies", v))
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, net)| network(&mut p, &format!("trusted_proxies[{i}]"), net))
            .collect();

        let access_log =
            section("access_log").and_then(|v| p.typed::<AccessLogFile>("access_log", v)).map(|a| {
                if a.rejections_per_second == 0 {
                    p.add("access_log.rejections_per_second", "must be at least 1");
                }
                AccessLogConfig {
                    path: (a.path != "stderr").then(|| base.join(&a.path)),
                    rejections_per_second: a.rejections_per_second,
                }
            });
        match (upstream, api_key, store, cache, filter, rate_limit) {
            (Some(upstream), Some(api_key), Some(store), Some(cache), Some(filter), Some(rate_limit))
                if p.is_empty() =>
            {
                Ok(Config {
                    listen,
                    admin_listen,
                    auth_listen,
                    threads,
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
                })
            }
            _ => Err(p.into_vec()),
        }
    }
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
    if !ok {
        p.add(field, format!("`{value}` is not HOST:PORT (an IP address and a port)"));
    }
    ok
}

fn upstream(p: &mut Problems, u: UpstreamFile) -> Option<UpstreamConfig> {
    let before = p.len();
    if u.peers.is_empty() {
        p.add("upstream.peers", "at least one peer is required");
    }
    let mut peers = Vec::new();
    for (i, peer) in u.peers.iter().enumerate() {
        match peer.to_socket_addrs().ok().and_then(|mut a| a.next()) {
            Some(addr) => peers.push(addr),
            None => p.add(&format!("upstream.peers[{i}]"), format!("`{peer}` is not HOST:PORT")),
        }
    }
    let health_check = match u.health_check {
        None => HealthCheck::Tcp { interval: Duration::from_millis(defaults::health_interval_ms()) },
        Some(h) => {
            if h.interval_ms == 0 {
                p.add("upstream.health_check.interval_ms", "must be above 0");
            }
            let interval = Duration::from_millis(h.interval_ms);
            match (h.kind.as_str(), h.path) {
                ("tcp", None) => HealthCheck::Tcp { interval },
                ("tcp", Some(_)) => {
                    p.add("upstream.health_check.path", "only an http check has a path");
                    HealthCheck::Tcp { interval }
                }
                ("http", path) => {
                    let path = path.unwrap_or_else(|| "/".into());
                    if !path.starts_with('/') {
                        p.add("upstream.health_check.path", "must start with /");
                    }
                    HealthCheck::Http { path, interval }
                }
                (other, _) => {
                    p.add("upstream.health_check.kind", format!("`{other}` is not tcp or http"));
                    HealthCheck::Tcp { interval }
                }
            }
        }
    };
    for (field, value) in
        [("connect_timeout_ms", u.connect_timeout_ms), ("read_timeout_ms", u.read_timeout_ms)]
    {
        if value == 0 {
            p.add(&format!("upstream.{field}"), "must be above 0");
        }
    }
    (p.len() == before).then(|| UpstreamConfig {
        peers,
        health_check,
        connect_timeout: Duration::from_millis(u.connect_timeout_ms),
        read_timeout: Duration::from_millis(u.read_timeout_ms),
    })
}

fn api_key(p: &mut Problems, k: ApiKeyFile) -> Option<KeyExtractor> {
    let before = p.len();
    if k.sources.is_empty() {
        p.add("api_key.sources", "at least one source is required");
    }
    let mut sources = Vec::new();
    for (i, source) in k.sources.into_iter().enumerate() {
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
    if k.max_length == 0 || k.max_length > 4096 {
        p.add("api_key.max_length", "must be between 1 and 4096");
    }
    (p.len() == before).then_some(KeyExtractor { sources, max_length: k.max_length, forward: k.forward })
}

fn store(p: &mut Problems, s: StoreFile, base: &Path) -> Option<StoreConfig> {
    match (s.redis, s.file) {
        (Some(r), None) => {
            let before = p.len();
            if let Err(e) = redis::Client::open(r.url.as_str()) {
                p.add("store.redis.url", format!("not a Redis URL: {e}"));
            }
            if r.timeout_ms == 0 {
                p.add("store.redis.timeout_ms", "must be above 0");
            }
            if r.max_inflight == 0 {
                p.add("store.redis.max_inflight", "must be at least 1");
            }
            (p.len() == before).then(|| StoreConfig {
                backend: StoreBackend::Redis { url: r.url, prefix: r.prefix },
                timeout: Duration::from_millis(r.timeout_ms),
                max_inflight: r.max_inflight,
            })
        }
        (None, Some(path)) => Some(StoreConfig {
            backend: StoreBackend::File(base.join(path)),
            timeout: Duration::from_millis(defaults::store_timeout_ms()),
            max_inflight: defaults::max_inflight(),
        }),
        _ => {
            p.add("store", "exactly one of redis or file is required");
            None
        }
    }
}

fn cache(p: &mut Problems, c: CacheFile) -> CacheConfig {
    for (field, value) in [("capacity", c.capacity), ("negative_capacity", c.negative_capacity)] {
        if value == 0 {
            p.add(&format!("cache.{field}"), "must be at least 1");
        }
    }
    for (field, value) in [("ttl_s", c.ttl_s), ("negative_ttl_s", c.negative_ttl_s)] {
        if value == 0 {
            p.add(&format!("cache.{field}"), "must be at least 1");
        }
    }
    // Ten years: more is surely a mistake, and keeps the time arithmetic far from overflow.
    for (field, value) in [("ttl_s", c.ttl_s), ("negative_ttl_s", c.negative_ttl_s), ("stale_s", c.stale_s)] {
        if value > MAX_CACHE_SECONDS {
            p.add(&format!("cache.{field}"), format!("must be at most {MAX_CACHE_SECONDS} (ten years)"));
        }
    }
    CacheConfig {
        capacity: c.capacity,
        negative_capacity: c.negative_capacity,
        ttl: Duration::from_secs(c.ttl_s),
        negative_ttl: Duration::from_secs(c.negative_ttl_s),
        stale: Duration::from_secs(c.stale_s),
    }
}

fn filter(p: &mut Problems, f: FilterFile) -> FilterConfig {
    if !(4..=32).contains(&f.bits_per_key) {
        p.add("filter.bits_per_key", "must be between 4 and 32");
    }
    if f.rebuild_interval_s == 0 {
        p.add("filter.rebuild_interval_s", "must be at least 1");
    }
    if !(1..=100_000).contains(&f.scan_batch) {
        p.add("filter.scan_batch", "must be between 1 and 100000");
    }
    FilterConfig {
        enabled: f.enabled,
        rebuild_interval: Duration::from_secs(f.rebuild_interval_s),
        bits_per_key: f.bits_per_key,
        scan_batch: f.scan_batch,
        scan_pause: Duration::from_millis(f.scan_pause_ms),
    }
}

fn rate_limit(p: &mut Problems, r: RateLimitFile) -> RateLimitConfig {
    let per_key = rate(p, "rate_limit", r.per_second, r.burst);
    let unauthenticated_per_ip = match r.unauthenticated_per_ip {
        Some(u) => rate(p, "rate_limit.unauthenticated_per_ip", u.per_second, u.burst),
        None => Rate {
            per_second: defaults::unauthenticated_per_second(),
            burst: defaults::unauthenticated_burst(),
        },
    };
    RateLimitConfig { per_key, unauthenticated_per_ip }
}

fn rate(p: &mut Problems, field: &str, per_second: f64, burst: u32) -> Rate {
    use crate::store::record::{MAX_RATE, MIN_RATE};
    if !(per_second.is_finite() && (MIN_RATE..=MAX_RATE).contains(&per_second)) {
        p.add(&format!("{field}.per_second"), format!("must be a number from {MIN_RATE} to {MAX_RATE}"));
    }
    if burst == 0 {
        p.add(&format!("{field}.burst"), "must be at least 1");
    }
    Rate { per_second, burst }
}

fn network(p: &mut Problems, field: &str, value: &str) -> Option<IpNet> {
    let parsed = value.parse::<IpNet>().or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from));
    match parsed {
        Ok(net) => Some(net),
        Err(_) => {
            p.add(field, format!("`{value}` is not an address or CIDR network"));
            None
        }
    }
}

impl Problems<'_> {
    /// Deserializes one section, recording its shape errors under `field`.
    fn typed<T: DeserializeOwned>(&mut self, field: &str, value: Value) -> Option<T> {
        match serde_yaml::from_value(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.add_shape_error(field, &e.to_string());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
