//! Reload on SIGHUP: read the config file again, build the next [`Settings`] snapshot, say what
//! needs a restart, swap. Everything that can fail (reading, validating, opening a new store)
//! happens while building, so a bad file leaves the running snapshot whole.
//!
//! After the swap, runtime state follows what changed: another store forgets what the old one
//! said (and the filter is rebuilt from the new one, whose announcements are followed); a new
//! default per-key limit has known keys confirmed again; new peers are picked up, keeping the
//! health of those that stay. Listeners, threads, capacities and the like need an upgrade.

use crate::gateway::Gateway;
use crate::settings::StoreChange;
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
        let ok = reload(&gateway).await;
        gateway.metrics.config_reload(ok);
    }
}

/// Reads the config file again and applies it; false (with every problem logged) when the file
/// was refused and the running settings stay.
pub async fn reload(gateway: &Gateway) -> bool {
    let Some(path) = &gateway.config_path else { return false };
    // Whatever the new file holds: log rotation reloads to have the log opened again.
    if let Some(log) = &gateway.access_log {
        log.reopen();
    }
    let config = match crate::config::Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            errors.problems.iter().for_each(|p| log::error!("reload refused: {}: {p}", path.display()));
            return false;
        }
    };
    let old = gateway.settings.load_full();
    let (new, store) = match old.next(config, &gateway.metrics) {
        Ok(next) => next,
        Err(e) => {
            log::error!("reload refused: {}: store: {e:#}", path.display());
            return false;
        }
    };
    for field in old.fixed_fields_changed(&new.config) {
        log::warn!("reload: `{field}` cannot change while running; it takes effect on a graceful upgrade (keygate -u) or restart");
    }
    let new = Arc::new(new);
    gateway.settings.store(Arc::clone(&new));

    if store == StoreChange::Replaced {
        gateway.lookup.store_replaced();
        gateway.background.follow_announcements(&new.lookup.store, &gateway.lookup);
    }
    let (new_limits, old_limits) = (&new.config.rate_limit, &old.config.rate_limit);
    if new_limits.per_key != old_limits.per_key || new_limits.scope != old_limits.scope {
        gateway.lookup.default_rate_changed();
    }
    gateway.upstreams.peers_changed().await;
    log::info!("reloaded {}", path.display());
    true
}
