//! Reload on SIGHUP: read the config file again and swap what changed, without dropping a
//! connection or losing state that is still valid.
//!
//! Everything that can fail (reading, validating, opening a new store) happens before anything
//! is swapped, so a bad file leaves the running config whole. Then:
//! - request settings (key sources, trusted proxies, the per-IP limit) are swapped at once; the
//!   per-IP limiter keeps its state when its rate did not change;
//! - the default per-key limit reaches cached keys as they are confirmed again; keys whose
//!   effective limit did not change keep their limiter state;
//! - cache TTLs apply to entries already cached; capacities need a restart;
//! - a changed store (a new Redis URL or prefix, or the file store's file, re-read every time)
//!   is opened anew, the cache forgets what the old one said and the filter is rebuilt;
//! - upstream peers and timeouts are replaced; peers that stay keep their health;
//! - listeners, threads, the pid file, the upgrade socket, the health check's kind and the
//!   filter's and the access log's settings cannot change: a graceful upgrade (`keygate -u`) changes them.

use crate::config::{Config, StoreBackend};
use crate::gateway::{open_store, Gateway, RequestSettings};
use std::sync::{Arc, Weak};

/// Reloads on every SIGHUP, for as long as the gateway lives.
pub async fn on_hangup(gateway: Weak<Gateway>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            log::error!("cannot listen for SIGHUP, reload is off: {e}");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let Some(gateway) = gateway.upgrade() else { return };
        let ok = gateway.reload().await;
        gateway.metrics.config_reload(ok);
    }
}

impl Gateway {
    /// Reads the config file again and applies it; false (with every problem logged) when the
    /// file was refused and the running config stays.
    pub async fn reload(&self) -> bool {
        let Some(path) = &self.config_path else { return false };
        // Whatever the new file holds: log rotation reloads to have the log opened again.
        if let Some(log) = &self.access_log {
            log.reopen();
        }
        let new = match Config::load(path) {
            Ok(config) => config,
            Err(errors) => {
                for problem in &errors.problems {
                    log::error!("reload refused: {}: {problem}", path.display());
                }
                return false;
            }
        };
        let old = self.config.load_full();
        // The file store is read again on every reload: its keys are what changed, usually.
        let store_changed =
            new.store.backend != old.store.backend || matches!(new.store.backend, StoreBackend::File(_));
        // The same Redis with a new timeout: a new connection (its own timeouts follow the
        // lookup's), and everything learnt from the store stays true.
        let reconnect = !store_changed && new.store.timeout != old.store.timeout;
        let mut store = match (store_changed || reconnect).then(|| open_store(&new)).transpose() {
            Ok(store) => store,
            Err(e) => {
                log::error!("reload refused: {}: store: {e:#}", path.display());
                return false;
            }
        };
        warn_about_what_needs_a_restart(&old, &new);

        self.settings.store(Arc::new(RequestSettings::new(&new, Some(&self.settings.load()))));
        self.lookup.set_default_rate(new.rate_limit.per_key);
        self.lookup.cache.set_ttls(&new.cache);
        if reconnect {
            self.lookup.reconnect_store(store.take().expect("opened above"));
        }
        self.lookup.set_store(store, new.store.timeout, new.store.max_inflight);
        self.upstreams.reconfigure(&new.upstream).await;
        self.config.store(Arc::new(new));
        if store_changed {
            self.listen_for_announcements();
        }
        log::info!("reloaded {}", path.display());
        true
    }
}

fn warn_about_what_needs_a_restart(old: &Config, new: &Config) {
    let fixed = [
        ("listen", old.listen != new.listen),
        ("admin_listen", old.admin_listen != new.admin_listen),
        ("auth_listen", old.auth_listen != new.auth_listen),
        ("threads", old.threads != new.threads),
        ("pid_file", old.pid_file != new.pid_file),
        ("upgrade_sock", old.upgrade_sock != new.upgrade_sock),
        ("grace_period_s", old.grace_period != new.grace_period),
        ("header_timeout_ms", old.header_timeout != new.header_timeout),
        ("upstream.health_check", old.upstream.health_check != new.upstream.health_check),
        ("cache.capacity", old.cache.capacity != new.cache.capacity),
        ("cache.negative_capacity", old.cache.negative_capacity != new.cache.negative_capacity),
        ("filter", old.filter != new.filter),
        ("access_log", old.access_log != new.access_log),
    ];
    for (field, changed) in fixed {
        if changed {
            log::warn!("reload: `{field}` cannot change while running; it takes effect on a graceful upgrade (keygate -u) or restart");
        }
    }
}
