//! A known key as the request path holds it: the [`Grant`] cached for a key id, built from the
//! store's record, and the shared copies of app names that grants point to.
//!
//! A grant carries what forwarding needs (the app, until when the key may be used) and the key's
//! own limiter, so a cache hit answers everything in one allocation.

use crate::config::Rate;
use crate::limit::KeyLimiter;
use crate::store::record::unix_now;
use crate::store::KeyRecord;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A known key as requests see it: its app, until when it may be used, and its limiter. Shared
/// by every request that uses the key, and one allocation per cached key.
pub struct Grant {
    /// The tenant, sent upstream as `X-Keygate-App`.
    pub app: Arc<str>,
    /// See [`KeyRecord::usable_until`].
    usable_until: u64,
    pub limiter: KeyLimiter,
}

impl Grant {
    /// The grant for a freshly fetched record: `previous` itself when the record brings nothing
    /// new, so a refresh never hands a key a fresh burst. A changed record starts a new limiter.
    pub fn for_record(record: &KeyRecord, default: Rate, previous: Option<&Arc<Grant>>) -> Arc<Grant> {
        let rate = Rate {
            per_second: record.rate.unwrap_or(default.per_second),
            burst: record.burst.unwrap_or(default.burst),
        };
        let usable_until = record.usable_until();
        match previous {
            Some(p) if p.app == record.app && p.usable_until == usable_until && p.limiter.rate == rate => {
                Arc::clone(p)
            }
            _ => {
                Arc::new(Grant { app: Arc::clone(&record.app), usable_until, limiter: KeyLimiter::new(rate) })
            }
        }
    }

    /// Whether the key may be used now: active and not expired.
    pub fn is_enabled(&self) -> bool {
        match self.usable_until {
            u64::MAX => true,
            until => unix_now() < until,
        }
    }
}

/// The app names of cached records, each held once: many keys belong to one app, and a cached
/// key's memory is mostly its record.
#[derive(Default)]
pub struct AppNames(Mutex<AppNameSet>);

#[derive(Default)]
struct AppNameSet {
    names: HashSet<Arc<str>>,
    /// Size after the last sweep; the set is swept of unused names when it doubles.
    swept_at: usize,
}

impl AppNames {
    /// The shared copy of `app` (taken from off the request path: when a record is fetched).
    pub fn intern(&self, app: &Arc<str>) -> Arc<str> {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = set.names.get(app) {
            return Arc::clone(shared);
        }
        if set.names.len() >= 2 * set.swept_at + 1024 {
            // Only the set holds a name no cached record uses any more.
            set.names.retain(|name| Arc::strong_count(name) > 1);
            set.swept_at = set.names.len();
        }
        set.names.insert(Arc::clone(app));
        Arc::clone(app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_keeps_the_grant_and_its_limiter_unless_the_record_changed() {
        let default = Rate { per_second: 1.0, burst: 1 };
        let first = Grant::for_record(&KeyRecord::active("a"), default, None);
        assert!(first.limiter.check().is_ok());
        let same = Grant::for_record(&KeyRecord::active("a"), default, Some(&first));
        assert!(Arc::ptr_eq(&first, &same));
        assert!(same.limiter.check().is_err());
        let record = KeyRecord { burst: Some(5), ..KeyRecord::active("a") };
        let changed = Grant::for_record(&record, default, Some(&same));
        assert!(!Arc::ptr_eq(&same, &changed));
        assert!(changed.limiter.check().is_ok());
    }

    #[test]
    fn a_grant_is_enabled_while_active_and_unexpired() {
        let default = Rate { per_second: 1.0, burst: 1 };
        let grant = |record: KeyRecord| Grant::for_record(&record, default, None).is_enabled();
        assert!(grant(KeyRecord::active("a")));
        assert!(grant(KeyRecord { expires: Some(unix_now() + 60), ..KeyRecord::active("a") }));
        assert!(!grant(KeyRecord { expires: Some(unix_now() - 1), ..KeyRecord::active("a") }));
        assert!(!grant(KeyRecord { status: "revoked".into(), ..KeyRecord::active("a") }));
    }
}
