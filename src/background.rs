//! The gateway's background work, on a runtime of its own apart from Pingora's: the Redis
//! connections, the invalidation listener, the filter's rebuilds, the per-IP limiter's sweep,
//! the fleet's syncs, reloads on SIGHUP and the drain after a hand-over. It exists before the server starts and
//! outlives any one of Pingora's services.

use crate::config::LimitScope;
use crate::gateway::Gateway;
use crate::invalidate;
use crate::lookup::KeyLookup;
use crate::store::KeyStore;
use pingora::server::ExecutionPhase;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How often the per-IP limiter forgets addresses that are back to a full burst.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(10);

pub struct Background {
    /// An `Option` only so that `drop` can take it (see there).
    runtime: Option<Runtime>,
    /// The invalidation listener, replaced when a reload changes the store.
    announcements: Mutex<Option<JoinHandle<()>>>,
}

impl Background {
    pub fn new() -> std::io::Result<Background> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keygate-tasks")
            .enable_all()
            .build()?;
        Ok(Background { runtime: Some(runtime), announcements: Mutex::new(None) })
    }

    pub fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("the runtime lives as long as the gateway")
    }

    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) {
        self.runtime().spawn(future);
    }

    /// (Re)starts following the store's announcements: the Redis subscription, or for the file
    /// store nothing (the file changes only on reload, so nothing can be missed).
    pub fn follow_announcements(&self, store: &Arc<dyn KeyStore>, lookup: &Arc<KeyLookup>) {
        let mut current = self.announcements.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.take() {
            old.abort();
            lookup.announcements_lost();
        }
        match store.announcements() {
            Some(announcements) => {
                *current = Some(self.runtime().spawn(invalidate::listen(announcements, Arc::clone(lookup))));
            }
            None => lookup.announcements_resumed(),
        }
    }
}

impl Drop for Background {
    /// The last reference may go in an async context (a service's runtime shutting down),
    /// where dropping a runtime would panic: shut it down without waiting instead.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Every `FORGET_IDLE_EVERY`, the per-IP limiter of the settings in force forgets idle addresses.
pub async fn forget_idle_addresses(gateway: Weak<Gateway>) {
    let mut every = tokio::time::interval(FORGET_IDLE_EVERY);
    loop {
        every.tick().await;
        let Some(gateway) = gateway.upgrade() else { return };
        gateway.settings.load().ip_limiter.forget_idle();
    }
}

/// Every `rate_limit.sync_ms` (give or take a tenth, so the fleet's gateways do not sync in
/// step), the fleet's counters are exchanged with the store: always with `scope: fleet` (the
/// sync also counts the gateways), otherwise only while some key has a quota to count.
pub async fn sync_fleet(gateway: Weak<Gateway>) {
    let mut failing = false;
    for round in 0u64.. {
        let Some(gateway) = gateway.upgrade() else { return };
        let settings = gateway.settings.load_full();
        let limits = &settings.config.rate_limit;
        let period = limits.sync;
        if limits.scope == LimitScope::Fleet || settings.fleet.has_keys() {
            let timeout = period.max(settings.config.store.timeout);
            let result = settings.fleet.sync(&*settings.lookup.store, period, timeout).await;
            gateway.metrics.fleet_sync(result.is_ok());
            match (&result, failing) {
                (Err(e), false) => log::warn!(
                    "fleet sync failed ({}): each gateway now limits shared keys alone at rate/N",
                    e.with_cause()
                ),
                (Ok(()), true) => log::info!("fleet sync works again: shared limits are the fleet's"),
                _ => {}
            }
            failing = result.is_err();
        }
        drop((settings, gateway));
        tokio::time::sleep(jittered(period, round)).await;
    }
}

/// `period`, give or take up to a tenth, differently in every process and round.
fn jittered(period: Duration, round: u64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(round);
    let unit = (hasher.finish() % 2001) as f64 / 1000.0 - 1.0;
    period.mul_f64(1.0 + unit / 10.0)
}

/// Follows Pingora's phases: once the listeners are handed over, or the stop has begun, the
/// gateway drains (every response closes its connection).
pub async fn drain_when_handed_over(gateway: Weak<Gateway>, mut phases: broadcast::Receiver<ExecutionPhase>) {
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::GracefulUpgradeCloseTimeout | ExecutionPhase::ShutdownStarted) => {
                if let Some(gateway) = gateway.upgrade() {
                    log::info!("listeners handed over or stopping: closing connections after each response");
                    gateway.start_draining();
                }
                return;
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
