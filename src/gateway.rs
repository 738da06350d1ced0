//! The gateway's shared state: every stage of the request path, built once from a [`Config`]
//! and shared by the proxy, the admin endpoint and the background tasks. What a reload may
//! change is either behind an [`ArcSwap`] (read once per request) or held by a stage that
//! changes in place (see [`crate::reload`]).

use crate::access_log::AccessLog;
use crate::cache::KeyCache;
use crate::client_ip::ClientAddress;
use crate::config::{Config, StoreBackend};
use crate::extract::KeyExtractor;
use crate::filter::{self, KeyFilter};
use crate::invalidate;
use crate::limit::IpLimiter;
use crate::lookup::KeyLookup;
use crate::metrics::Metrics;
use crate::store::{file::FileStore, redis::RedisStore, KeyStore};
use crate::upstream::Upstreams;
use arc_swap::ArcSwap;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::server::ExecutionPhase;
use pingora::services::background::GenBackgroundService;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The longest a start waits for the key store to answer.
const STORE_WARMUP: Duration = Duration::from_secs(2);

/// How often the per-IP limiter forgets addresses that are back to a full burst.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(10);

/// What each request reads once, swapped whole by a reload.
pub struct RequestSettings {
    pub api_key: KeyExtractor,
    pub client_address: ClientAddress,
    pub ip_limiter: Arc<IpLimiter>,
}

pub struct Gateway {
    /// The config now in force (a reload compares against it).
    pub config: ArcSwap<Config>,
    pub settings: ArcSwap<RequestSettings>,
    pub lookup: Arc<KeyLookup>,
    pub metrics: Arc<Metrics>,
    pub upstreams: Upstreams,
    /// The JSON access log, when configured (changing it needs a restart).
    pub access_log: Option<AccessLog>,
    /// The file a reload reads; none for a gateway built in a test from a value.
    pub config_path: Option<PathBuf>,
    /// Set once this process has handed its listeners to a successor (a graceful upgrade):
    /// every response then closes its connection, so keep-alive clients move to the new
    /// process before this one stops and drops the connections left idle.
    draining: AtomicBool,
    /// The invalidation listener, replaced when a reload changes the store.
    announcements: Mutex<Option<JoinHandle<()>>>,
    /// Drives the Redis connections and the background tasks, apart from Pingora's runtimes,
    /// so they exist before the server starts and outlive any one service. An `Option` only so
    /// that `drop` can take it (see there).
    tasks: Option<Runtime>,
}

impl Drop for Gateway {
    /// The last reference may go in an async context (a service's runtime shutting down),
    /// where dropping a runtime would panic: shut it down without waiting instead.
    fn drop(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            tasks.shutdown_background();
        }
    }
}

impl Gateway {
    /// Builds every stage and starts the background tasks. Returns the gateway and the upstream
    /// health-check service, which Pingora must run.
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> anyhow::Result<(Arc<Gateway>, GenBackgroundService<LoadBalancer<RoundRobin>>)> {
        let tasks = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keygate-tasks")
            .enable_all()
            .build()?;
        let metrics = Arc::new(Metrics::new());
        let store = {
            let _in_runtime = tasks.enter();
            open_store(&config)?
        };
        let lookup = Arc::new(KeyLookup::new(
            KeyCache::new(&config.cache),
            KeyFilter::new(config.filter),
            store,
            config.store.timeout,
            config.store.max_inflight,
            config.rate_limit.per_key,
            Arc::clone(&metrics),
        ));
        // Connect to the store before serving: otherwise the first lookups of a new process (a
        // start, or a graceful upgrade taking over live traffic) pay the connection set-up
        // inside their timeout_ms. A store that is down delays the start by STORE_WARMUP at most.
        let store = lookup.store();
        let warm = tasks.block_on(async { tokio::time::timeout(STORE_WARMUP, store.ping()).await });
        if !matches!(warm, Ok(Ok(()))) {
            log::warn!("key store not answering at start; serving anyway (uncached keys get 503)");
        }
        let (upstreams, health_service) = Upstreams::new(&config.upstream);
        let access_log = config.access_log.as_ref().map(AccessLog::open).transpose()?;
        let gateway = Arc::new(Gateway {
            settings: ArcSwap::from_pointee(RequestSettings::new(&config, None)),
            config: ArcSwap::from_pointee(config),
            lookup,
            metrics,
            upstreams,
            access_log,
            config_path,
            draining: AtomicBool::new(false),
            announcements: Mutex::new(None),
            tasks: Some(tasks),
        });
        gateway.listen_for_announcements();
        if gateway.config.load().filter.enabled {
            let (lookup, metrics) = (Arc::clone(&gateway.lookup), Arc::clone(&gateway.metrics));
            gateway.spawn(filter::rebuild::maintain(lookup, metrics));
        }
        gateway.spawn(forget_idle_addresses(Arc::downgrade(&gateway)));
        gateway.spawn(crate::reload::on_hangup(Arc::downgrade(&gateway)));
        Ok((gateway, health_service))
    }

    /// (Re)starts following the store's announcements: the Redis subscription, or for the
    /// file store nothing (the file changes only on reload, so nothing can be missed).
    pub(crate) fn listen_for_announcements(&self) {
        let mut current = self.announcements.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.take() {
            old.abort();
            self.lookup.announcements_lost();
        }
        match &self.config.load().store.backend {
            StoreBackend::Redis { url, prefix } => {
                let Ok(client) = redis::Client::open(url.as_str()) else { return };
                let channel = format!("{prefix}invalidate");
                let lookup = Arc::clone(&self.lookup);
                *current = Some(self.runtime().spawn(invalidate::listen(client, channel, lookup)));
            }
            StoreBackend::File(_) => {
                self.lookup.announcements_resumed();
            }
        }
    }

    /// Whether responses should close their connections (see `draining`).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Follows Pingora's phases: once the listeners are handed over, or the stop has begun,
    /// the process drains.
    pub fn drain_when_handed_over(self: &Arc<Self>, mut phases: broadcast::Receiver<ExecutionPhase>) {
        let gateway = Arc::downgrade(self);
        self.spawn(async move {
            loop {
                match phases.recv().await {
                    Ok(ExecutionPhase::GracefulUpgradeCloseTimeout | ExecutionPhase::ShutdownStarted) => {
                        if let Some(gateway) = gateway.upgrade() {
                            log::info!(
                                "listeners handed over or stopping: closing connections after each response"
                            );
                            gateway.draining.store(true, Ordering::Relaxed);
                        }
                        return;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Runs `future` on the background runtime.
    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, future: F) {
        self.runtime().spawn(future);
    }

    fn runtime(&self) -> &Runtime {
        self.tasks.as_ref().expect("the runtime lives as long as the gateway")
    }
}

impl RequestSettings {
    /// The settings for `config`; the per-IP limiter of `previous` is kept (with its state)
    /// when its rate did not change.
    pub fn new(config: &Config, previous: Option<&RequestSettings>) -> Self {
        let rate = config.rate_limit.unauthenticated_per_ip;
        let ip_limiter = match previous {
            Some(p) if p.ip_limiter.rate() == rate => Arc::clone(&p.ip_limiter),
            _ => Arc::new(IpLimiter::new(rate)),
        };
        RequestSettings {
            api_key: config.api_key.clone(),
            client_address: ClientAddress::new(config.trusted_proxies.clone()),
            ip_limiter,
        }
    }
}

/// Opens the store `config` names; must run inside the background runtime (Redis connections
/// are driven there).
pub(crate) fn open_store(config: &Config) -> anyhow::Result<Arc<dyn KeyStore>> {
    use crate::store::redis::{RedisSettings, ScanPacing};
    Ok(match &config.store.backend {
        StoreBackend::Redis { url, prefix } => Arc::new(RedisStore::open(RedisSettings {
            url,
            prefix,
            timeout: config.store.timeout,
            scan: ScanPacing { batch: config.filter.scan_batch, pause: config.filter.scan_pause },
        })?),
        StoreBackend::File(path) => {
            let store = FileStore::open(path)?;
            log::info!("file store: {} keys from {}", store.len(), path.display());
            Arc::new(store)
        }
    })
}

async fn forget_idle_addresses(gateway: Weak<Gateway>) {
    let mut every = tokio::time::interval(FORGET_IDLE_EVERY);
    loop {
        every.tick().await;
        let Some(gateway) = gateway.upgrade() else { return };
        gateway.settings.load().ip_limiter.forget_idle();
    }
}
