//! The settings snapshot: everything a reload can change, built whole from a validated
//! [`Config`] and swapped whole (one `ArcSwap` in the [`crate::gateway::Gateway`]). A request
//! loads it once and reads every setting from that one value; the subsystems keep only runtime
//! state (cache entries, limiter state, filter bits, queries in flight).
//!
//! Building a snapshot is where a reload can fail (a store that cannot be opened), so it happens
//! before anything is swapped: a refused file leaves the running snapshot whole.

use crate::client_ip::ClientAddress;
use crate::config::{Config, RedisNodes, StoreBackend};
use crate::limit::fleet::Fleet;
use crate::limit::IpLimiter;
use crate::lookup::LookupSettings;
use crate::metrics::Metrics;
use crate::store::cluster::ClusterStore;
use crate::store::nodes::url_info;
use crate::store::redis::{RedisSettings, RedisStore, ScanPacing};
use crate::store::sentinel::SentinelGroup;
use crate::store::{file::FileStore, KeyStore};
use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};
use std::sync::Arc;

/// Everything a reload can change, as one immutable value.
pub struct Settings {
    /// The validated config this snapshot was built from (a reload compares the next with it).
    pub config: Config,
    /// Whose address a request is charged to (`trusted_proxies`).
    pub client_address: ClientAddress,
    /// The per-IP limiter. Runtime state, but its rate and bound are fixed when built: a
    /// snapshot with the same ones carries the previous one over, state and all; another one
    /// starts empty and carries over only the count of addresses forgotten early.
    pub ip_limiter: Arc<IpLimiter>,
    /// The store, and how a lookup uses it.
    pub lookup: Arc<LookupSettings>,
    /// The fleet's counters (runtime state, carried from snapshot to snapshot).
    pub fleet: Arc<Fleet>,
}

/// What a new snapshot's store is to the previous one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChange {
    /// The same store over the same connection.
    Same,
    /// The same store over a new connection (a new timeout): what was learnt from it stays.
    Reconnected,
    /// Another store (another Redis, prefix or key file): what was learnt must be forgotten.
    Replaced,
}

impl Settings {
    /// The first snapshot; must run inside the runtime that drives the store's connections.
    pub fn first(config: Config, metrics: &Metrics) -> anyhow::Result<Settings> {
        let store = open_store(&config, metrics)?;
        let ip_limiter = Arc::new(ip_limiter(&config));
        Ok(Settings::assemble(config, store, ip_limiter, Arc::new(Fleet::new())))
    }

    /// The snapshot that follows this one for `config`, and how its store relates to this one's.
    /// Another topology (URL, Sentinel group, cluster), other credentials or prefix: another
    /// store.
    pub fn next(&self, config: Config, metrics: &Metrics) -> anyhow::Result<(Settings, StoreChange)> {
        let old = &self.config;
        // The file store is read again on every reload: its keys are what changed, usually.
        let change = match (&config.store.backend, &old.store.backend) {
            (StoreBackend::File(_), _) => StoreChange::Replaced,
            (new, old) if new != old => StoreChange::Replaced,
            // Redis's own timeouts follow the lookup's: a new timeout needs a new connection.
            _ if config.store.timeout != old.store.timeout => StoreChange::Reconnected,
            _ => StoreChange::Same,
        };
        let store = match change {
            StoreChange::Same => Arc::clone(&self.lookup.store),
            StoreChange::Reconnected | StoreChange::Replaced => open_store(&config, metrics)?,
        };
        let limits = &config.rate_limit;
        let same_limiter = self.ip_limiter.rate() == limits.unauthenticated_per_ip
            && self.ip_limiter.max_addresses() == limits.max_addresses;
        let ip_limiter = match same_limiter {
            true => Arc::clone(&self.ip_limiter),
            false => Arc::new(IpLimiter::succeeding(
                &self.ip_limiter,
                limits.unauthenticated_per_ip,
                limits.max_addresses,
            )),
        };
        Ok((Settings::assemble(config, store, ip_limiter, Arc::clone(&self.fleet)), change))
    }

    /// Registers `keygate_ip_limiter_addresses`, read at each scrape from the per-IP limiter of
    /// the settings then in force: how many addresses it holds, never which.
    pub fn register_gauges(settings: &Arc<ArcSwap<Settings>>, metrics: &Metrics) {
        let settings = Arc::clone(settings);
        let gauge = IntGauge::new(
            "keygate_ip_limiter_addresses",
            "Client addresses the per-IP limiter holds state for; idle ones are forgotten every 10 s.",
        );
        let held = Arc::clone(&settings);
        metrics.sampled(gauge, move |gauge| gauge.set(held.load().ip_limiter.addresses() as i64));
        let forgotten = IntCounter::new(
            "keygate_ip_limiter_forgotten_total",
            "Client addresses the per-IP limiter forgot early to stay within max_addresses (an attack from many addresses).",
        );
        metrics.sampled(forgotten, move |counter| {
            let total = settings.load().ip_limiter.forgotten_early();
            counter.inc_by(total.saturating_sub(counter.get()));
        });
    }

    fn assemble(
        config: Config,
        store: Arc<dyn KeyStore>,
        ip_limiter: Arc<IpLimiter>,
        fleet: Arc<Fleet>,
    ) -> Settings {
        Settings {
            client_address: ClientAddress::new(config.trusted_proxies.clone()),
            ip_limiter,
            lookup: Arc::new(LookupSettings::new(&config, store, Arc::clone(&fleet))),
            fleet,
            config,
        }
    }

    /// The fields of `next` that differ from this snapshot's but cannot change while running.
    pub fn fixed_fields_changed(&self, next: &Config) -> Vec<&'static str> {
        let (old, new) = (&self.config, next);
        [
            ("listen", old.listen != new.listen),
            ("admin_listen", old.admin_listen != new.admin_listen),
            ("auth_listen", old.auth_listen != new.auth_listen),
            ("threads", old.threads != new.threads),
            ("work_stealing", old.work_stealing != new.work_stealing),
            ("pid_file", old.pid_file != new.pid_file),
            ("upgrade_sock", old.upgrade_sock != new.upgrade_sock),
            ("grace_period_s", old.grace_period != new.grace_period),
            ("header_timeout_ms", old.header_timeout != new.header_timeout),
            ("upstream.health_check", old.upstream.health_check != new.upstream.health_check),
            ("cache.capacity", old.cache.capacity != new.cache.capacity),
            ("cache.negative_capacity", old.cache.negative_capacity != new.cache.negative_capacity),
            ("filter", old.filter != new.filter),
            ("access_log", old.access_log != new.access_log),
        ]
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect()
    }
}

/// The per-IP limiter `config` asks for, holding no address yet.
fn ip_limiter(config: &Config) -> IpLimiter {
    IpLimiter::new(config.rate_limit.unauthenticated_per_ip, config.rate_limit.max_addresses)
}

/// Opens the store `config` names; must run inside the runtime that drives its connections.
/// A Redis store that follows failovers counts them in `metrics`.
fn open_store(config: &Config, metrics: &Metrics) -> anyhow::Result<Arc<dyn KeyStore>> {
    Ok(match &config.store.backend {
        StoreBackend::Redis { nodes, auth, prefix } => {
            let settings = RedisSettings {
                prefix,
                timeout: config.store.timeout,
                scan: ScanPacing { batch: config.filter.scan_batch, pause: config.filter.scan_pause },
            };
            let failovers = metrics.store_failovers.clone();
            match nodes {
                RedisNodes::Url(url) => Arc::new(RedisStore::open(url_info(url, auth)?, settings)?),
                RedisNodes::Sentinel { master, nodes } => {
                    let group = SentinelGroup {
                        master: master.clone(),
                        sentinels: nodes.clone(),
                        auth: auth.clone(),
                    };
                    Arc::new(RedisStore::follow(group, settings, failovers))
                }
                RedisNodes::Cluster { nodes } => {
                    Arc::new(ClusterStore::open(nodes.clone(), auth.clone(), settings, failovers)?)
                }
            }
        }
        StoreBackend::File(path) => {
            let store = FileStore::open(path)?;
            log::info!("file store: {} keys from {}", store.len(), path.display());
            Arc::new(store)
        }
    })
}

#[cfg(any(test, feature = "test-util"))]
impl Settings {
    /// The documented defaults (one listener, one peer) over `store`: for unit tests and
    /// benchmarks, which need settings but no file.
    pub fn for_tests(store: Arc<dyn KeyStore>) -> Settings {
        let yaml = "listen: [127.0.0.1:1]\nupstream: {peers: [127.0.0.1:2]}\nstore: {file: keys.yaml}\n";
        let config = Config::parse(yaml, std::path::Path::new(".")).expect("a valid config");
        Settings::over_store(config, store)
    }

    /// `config` over `store` instead of the store it names (which is never opened).
    pub fn over_store(config: Config, store: Arc<dyn KeyStore>) -> Settings {
        let ip_limiter = Arc::new(ip_limiter(&config));
        Settings::assemble(config, store, ip_limiter, Arc::new(Fleet::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(store: &str) -> Config {
        let yaml = format!(
            "listen: [127.0.0.1:1]\nupstream: {{peers: [127.0.0.1:2]}}\nstore:\n  redis: {{{store}}}\n"
        );
        Config::parse(&yaml, std::path::Path::new(".")).expect("a valid config")
    }

    /// Nothing listens on port 1: the stores open lazily, and nothing here waits on them.
    #[tokio::test]
    async fn another_topology_or_other_credentials_is_another_store() {
        let metrics = Metrics::new();
        let url = "url: 'redis://127.0.0.1:1/0'";
        let sentinel = "sentinel: {master: keygate, nodes: ['127.0.0.1:1']}";
        let cluster = "cluster: {nodes: ['127.0.0.1:1']}";
        let mut settings = Settings::first(config(url), &metrics).unwrap();
        for (store, expected) in [
            (url, StoreChange::Same),
            (sentinel, StoreChange::Replaced),
            (sentinel, StoreChange::Same),
            (&format!("{sentinel}, password: other"), StoreChange::Replaced),
            (cluster, StoreChange::Replaced),
            (&format!("{cluster}, timeout_ms: 80"), StoreChange::Reconnected),
            (url, StoreChange::Replaced),
        ] {
            let (next, change) = settings.next(config(store), &metrics).unwrap();
            assert_eq!(change, expected, "to {store}");
            settings = next;
        }
    }
}
