//! The gateway's shared state: every stage of the request path, built once from a [`Config`]
//! and shared by the proxy, the admin endpoint and the background tasks.

use crate::cache::KeyCache;
use crate::client_ip::ClientAddress;
use crate::config::{Config, StoreBackend};
use crate::filter::{self, KeyFilter};
use crate::invalidate;
use crate::limit::IpLimiter;
use crate::lookup::KeyLookup;
use crate::metrics::Metrics;
use crate::store::{file::FileStore, redis::RedisStore, KeyStore};
use crate::upstream::Upstreams;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::services::background::GenBackgroundService;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

/// How often the per-IP limiter forgets addresses that are back to a full burst.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub config: Config,
    pub lookup: Arc<KeyLookup>,
    pub metrics: Arc<Metrics>,
    pub upstreams: Upstreams,
    pub ip_limiter: Arc<IpLimiter>,
    pub client_address: ClientAddress,
    /// True while the invalidation subscription is up (always true for the file store).
    pub subscribed: Arc<AtomicBool>,
    /// Drives the Redis connections and the background tasks, apart from Pingora's runtimes,
    /// so they exist before the server starts and outlive any one service.
    _tasks: Runtime,
}

impl Gateway {
    /// Builds every stage and starts the background tasks. Returns the gateway and the upstream
    /// health-check service, which Pingora must run.
    pub fn start(
        config: Config,
    ) -> anyhow::Result<(Arc<Gateway>, GenBackgroundService<LoadBalancer<RoundRobin>>)> {
        let tasks = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keygate-tasks")
            .enable_all()
            .build()?;
        let metrics = Arc::new(Metrics::new());
        let subscribed = Arc::new(AtomicBool::new(false));
        let store: Arc<dyn KeyStore> = match &config.store.backend {
            StoreBackend::Redis { url, prefix } => {
                let _in_runtime = tasks.enter();
                Arc::new(RedisStore::open(url, prefix, config.store.timeout)?)
            }
            StoreBackend::File(path) => {
                let store = FileStore::open(path).map_err(anyhow::Error::msg)?;
                log::info!("file store: {} keys from {}", store.len(), path.display());
                subscribed.store(true, std::sync::atomic::Ordering::SeqCst);
                Arc::new(store)
            }
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
        match &config.store.backend {
            StoreBackend::Redis { url, prefix } => {
                let client = redis::Client::open(url.as_str())?;
                let channel = format!("{prefix}invalidate");
                tasks.spawn(invalidate::listen(
                    client,
                    channel,
                    Arc::clone(&lookup),
                    Arc::clone(&subscribed),
                ));
            }
            // The file is the whole truth, changed only by a reload: nothing can be missed.
            StoreBackend::File(_) => lookup.filter.channel_resumed(),
        }
        if config.filter.enabled {
            tasks.spawn(filter::rebuild::maintain(Arc::clone(&lookup), Arc::clone(&metrics)));
        }
        let ip_limiter = Arc::new(IpLimiter::new(config.rate_limit.unauthenticated_per_ip));
        let idle = Arc::clone(&ip_limiter);
        tasks.spawn(async move {
            let mut every = tokio::time::interval(FORGET_IDLE_EVERY);
            loop {
                every.tick().await;
                idle.forget_idle();
            }
        });
        let (upstreams, health_service) = Upstreams::new(&config.upstream);
        let gateway = Gateway {
            client_address: ClientAddress::new(config.trusted_proxies.clone()),
            config,
            lookup,
            metrics,
            upstreams,
            ip_limiter,
            subscribed,
            _tasks: tasks,
        };
        Ok((Arc::new(gateway), health_service))
    }
}
