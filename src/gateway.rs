//! The gateway: the composition root. Every stage of the request path built once from a
//! [`Config`] and shared by the proxy, the auth listener, the admin endpoint and the background
//! tasks. What a reload can change is the [`Settings`] snapshot, swapped whole and loaded once
//! per request; everything else here is runtime state.

use crate::access_log::AccessLog;
use crate::background::{self, Background};
use crate::config::Config;
use crate::filter;
use crate::lookup::KeyLookup;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::upstream::Upstreams;
use arc_swap::ArcSwap;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::server::ExecutionPhase;
use pingora::services::background::GenBackgroundService;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// The longest a start waits for the key store to answer.
const STORE_WARMUP: Duration = Duration::from_secs(2);

pub struct Gateway {
    /// Everything a reload can change; shared with the upstream peers' discovery.
    pub settings: Arc<ArcSwap<Settings>>,
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
    pub background: Background,
}

impl Gateway {
    /// Builds every stage and starts the background tasks. Returns the gateway and the upstream
    /// health-check service, which Pingora must run.
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> anyhow::Result<(Arc<Gateway>, GenBackgroundService<LoadBalancer<RoundRobin>>)> {
        let background = Background::new()?;
        let metrics = Arc::new(Metrics::new());
        let lookup = Arc::new(KeyLookup::new(&config.cache, config.filter, Arc::clone(&metrics)));
        let skipped = metrics.access_log_skipped.clone();
        let access_log = config.access_log.as_ref().map(|log| AccessLog::open(log, skipped)).transpose()?;
        let health_check = config.upstream.health_check.clone();
        let settings = {
            let _in_runtime = background.runtime().enter();
            Arc::new(ArcSwap::from_pointee(Settings::first(config, &metrics)?))
        };
        // Connect to the store before serving: otherwise the first lookups of a new process (a
        // start, or a graceful upgrade taking over live traffic) pay the connection set-up
        // inside their timeout_ms. A store that is down delays the start by STORE_WARMUP at most.
        let store = Arc::clone(&settings.load().lookup.store);
        let warm =
            background.runtime().block_on(async { tokio::time::timeout(STORE_WARMUP, store.ping()).await });
        if !matches!(warm, Ok(Ok(()))) {
            log::warn!("key store not answering at start; serving anyway (uncached keys get 503)");
        }
        let peers = Arc::clone(&settings);
        let (upstreams, health_service) =
            Upstreams::new(&health_check, move || peers.load().config.upstream.peers.clone());
        lookup.register_gauges(&metrics);
        upstreams.register_gauges(&metrics);
        Settings::register_gauges(&settings, &metrics);
        let gateway = Arc::new(Gateway {
            settings,
            lookup,
            metrics,
            upstreams,
            access_log,
            config_path,
            draining: AtomicBool::new(false),
            background,
        });
        let settings = gateway.settings.load();
        gateway.background.follow_announcements(&settings.lookup.store, &gateway.lookup);
        if settings.config.filter.enabled {
            let rebuilds = filter::rebuild::maintain(
                Arc::clone(&gateway.lookup),
                Arc::clone(&gateway.settings),
                Arc::clone(&gateway.metrics),
            );
            gateway.background.spawn(rebuilds);
        }
        gateway.background.spawn(background::forget_idle_addresses(Arc::downgrade(&gateway)));
        gateway.background.spawn(background::sync_fleet(Arc::downgrade(&gateway)));
        gateway.background.spawn(crate::reload::on_hangup(Arc::downgrade(&gateway)));
        Ok((gateway, health_service))
    }

    /// Whether responses should close their connections (see `draining`).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Drains once Pingora hands the listeners over or begins to stop.
    pub fn drain_when_handed_over(self: &Arc<Self>, phases: broadcast::Receiver<ExecutionPhase>) {
        self.background.spawn(background::drain_when_handed_over(Arc::downgrade(self), phases));
    }
}

#[cfg(feature = "test-util")]
impl Gateway {
    /// A gateway over `settings` with no background task and no health check running: for the
    /// benchmarks of the decision, which need its stages but no network.
    pub fn for_tests(settings: Settings) -> std::io::Result<Arc<Gateway>> {
        let metrics = Arc::new(Metrics::new());
        let config = &settings.config;
        let lookup = Arc::new(KeyLookup::new(&config.cache, config.filter, Arc::clone(&metrics)));
        let health_check = config.upstream.health_check.clone();
        let settings = Arc::new(ArcSwap::from_pointee(settings));
        let peers = Arc::clone(&settings);
        let (upstreams, _not_run) =
            Upstreams::new(&health_check, move || peers.load().config.upstream.peers.clone());
        Ok(Arc::new(Gateway {
            settings,
            lookup,
            metrics,
            upstreams,
            access_log: None,
            config_path: None,
            draining: AtomicBool::new(false),
            background: Background::new()?,
        }))
    }
}
