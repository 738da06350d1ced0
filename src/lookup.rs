//! A key id's verdict: from the cache ([`crate::cache`]), else the membership filter
//! ([`crate::filter`]), else (once the decision has checked the per-IP limit) the store
//! ([`crate::store`]).
//!
//! This is where the store guarantees live:
//! - one store query per key id in flight per process; concurrent requests wait for its answer
//!   ([`flights`]);
//! - at most `max_inflight` queries at once; beyond that a lookup is shed as `Overloaded`
//!   ([`admission`]);
//! - every query is bounded by `timeout`, and an error or timeout is never cached as unknown;
//! - an announcement that arrives while a query is in flight (or before its answer is written)
//!   makes the answer doubtful: it is returned to the requests that asked, but not remembered;
//! - a key id outside the trusted membership filter ([`crate::filter`]) is unknown without a
//!   query, whether or not the store answers lookups: the filter is trusted for as long as no
//!   announcement can have been missed ([`crate::invalidate`] says when one may have been), so
//!   a frozen store keeps its exclusions, while a lost subscription makes every uncached key a
//!   store read (a 503 while the store is down).

pub mod admission;
pub mod flights;

use crate::cache::{Cached, KeyCache};
use crate::config::{CacheConfig, Config, Rate};
use crate::filter::{FilterConfig, KeyFilter};
use crate::grant::{AppNames, FleetLimits, Grant};
use crate::key::KeyId;
use crate::limit::fleet::Fleet;
use crate::metrics::{CacheResult, Metrics, StoreResult};
use crate::store::KeyStore;
use admission::Admission;
use flights::Flights;
use prometheus::{Gauge, IntGaugeVec, Opts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the store (or the cache on its behalf) says about a key.
#[derive(Clone)]
pub enum Verdict {
    Known(Arc<Grant>),
    Unknown,
}

/// Why no verdict could be had; both are answered 503, neither is ever cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("key store unavailable")]
    Unavailable,
    #[error("too many key store lookups in flight")]
    Overloaded,
}

/// An invalidation, as announced on `{prefix}invalidate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    Key(KeyId),
    Everything,
}

/// How a gauge reads its value from the lookup.
type Reading = fn(&KeyLookup) -> f64;

/// What a lookup reads from the settings snapshot: the store and how to use it.
pub struct LookupSettings {
    pub store: Arc<dyn KeyStore>,
    /// A query slower than this is a store error, never an "unknown".
    pub timeout: Duration,
    /// Store queries in flight at once, at most.
    pub max_inflight: usize,
    /// The per-key limit for records that set none; read when a record is fetched, never on
    /// the hit path.
    pub default_rate: Rate,
    /// How long cached answers are believed (the capacities are the cache's own).
    pub cache: CacheConfig,
    /// Where keys' shared limits (a fleet rate, a quota) are counted; none in unit tests.
    pub fleet: Option<FleetLimits>,
}

impl LookupSettings {
    pub fn new(config: &Config, store: Arc<dyn KeyStore>, fleet: Arc<Fleet>) -> Self {
        LookupSettings {
            store,
            timeout: config.store.timeout,
            max_inflight: config.store.max_inflight,
            default_rate: config.rate_limit.per_key,
            cache: config.cache.clone(),
            fleet: Some(FleetLimits { fleet, scope: config.rate_limit.scope }),
        }
    }
}

/// The lookup's runtime state: what is cached, what is in flight, what was announced. Its
/// settings come with each call, from the snapshot the request loaded.
pub struct KeyLookup {
    pub cache: KeyCache,
    pub filter: KeyFilter,
    flights: Flights<Result<Verdict, LookupError>>,
    admission: Admission,
    /// Counts announcements, so a query can tell whether one arrived while it was in flight.
    announcements: AtomicU64,
    apps: AppNames,
    metrics: Arc<Metrics>,
}

impl KeyLookup {
    pub fn new(cache: &CacheConfig, filter: FilterConfig, metrics: Arc<Metrics>) -> Self {
        KeyLookup {
            cache: KeyCache::new(cache),
            filter: KeyFilter::new(filter),
            flights: Flights::default(),
            admission: Admission::default(),
            announcements: AtomicU64::new(0),
            apps: AppNames::default(),
            metrics,
        }
    }

    /// Another store took over (a reload): everything learnt from the old one is forgotten,
    /// and the filter, which describes the old one, rejects nothing until rebuilt.
    pub fn store_replaced(&self) {
        self.filter.channel_lost();
        self.announcements.fetch_add(1, Ordering::SeqCst);
        self.cache.forget_all();
    }

    /// A new default per-key limit (a reload). Known keys are confirmed again in the background
    /// and pick it up then; a key whose effective limit did not change keeps its limiter state.
    pub fn default_rate_changed(&self) {
        self.cache.reconfirm_known();
    }

    /// The cache's answer, counted. A stale known key is served as known and refreshed in the
    /// background, so a slow or absent store never delays a key it already vouched for.
    #[cfg(any(test, feature = "test-util"))]
    pub fn cached(self: &Arc<Self>, settings: &Arc<LookupSettings>, id: &KeyId) -> Option<Verdict> {
        self.cached_at(settings, id, tokio::time::Instant::now())
    }

    /// [`Self::cached`] as of `now`, the moment the request began (one clock read for both).
    pub fn cached_at(
        self: &Arc<Self>,
        settings: &Arc<LookupSettings>,
        id: &KeyId,
        now: tokio::time::Instant,
    ) -> Option<Verdict> {
        match self.cache.get_at(id, &settings.cache, now) {
            Cached::Fresh(grant) => {
                self.metrics.cache_lookup(CacheResult::Hit);
                Some(Verdict::Known(grant))
            }
            Cached::Stale { grant, refresh } => {
                self.metrics.cache_lookup(CacheResult::StaleHit);
                if refresh && self.cache.claim_refresh(id, &grant) {
                    self.refresh_in_background(Arc::clone(settings), *id, Arc::clone(&grant));
                }
                Some(Verdict::Known(grant))
            }
            Cached::Unknown => {
                self.metrics.cache_lookup(CacheResult::NegativeHit);
                Some(Verdict::Unknown)
            }
            Cached::Miss => {
                self.metrics.cache_lookup(CacheResult::Miss);
                None
            }
        }
    }

    fn refresh_in_background(self: &Arc<Self>, settings: Arc<LookupSettings>, id: KeyId, stale: Arc<Grant>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if this.fetch(&settings, id).await.is_err() {
                this.cache.postpone_refresh(&id, &stale);
            }
        });
    }

    /// Whether the filter may answer "unknown" for this store now; while it cannot, every
    /// uncached key costs a store lookup.
    pub fn filter_answers(&self) -> bool {
        self.filter.is_trusted()
    }

    /// Whether the filter says `id` is no key's, for a key the cache does not hold: then it is
    /// unknown without a store read.
    pub fn filter_excludes(&self, id: &KeyId) -> bool {
        let excluded = self.filter.excludes(id);
        if excluded {
            self.metrics.filter_rejection();
        }
        excluded
    }

    /// Asks the store, joining the query already in flight for `id` if there is one.
    pub async fn fetch(&self, settings: &LookupSettings, id: KeyId) -> Result<Verdict, LookupError> {
        self.flights.join(id, || self.query_store(settings, id)).await
    }

    /// Store queries running now.
    pub fn queries_running(&self) -> usize {
        self.admission.running()
    }

    async fn query_store(&self, settings: &LookupSettings, id: KeyId) -> Result<Verdict, LookupError> {
        let Some(_admitted) = self.admission.try_admit(settings.max_inflight) else {
            return Err(LookupError::Overloaded);
        };
        let seen = self.announcements.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(settings.timeout, settings.store.fetch(&id)).await;
        let result = match &answer {
            Ok(Ok(Some(_))) => StoreResult::Found,
            Ok(Ok(None)) => StoreResult::NotFound,
            Ok(Err(_)) => StoreResult::Error,
            Err(_) => StoreResult::Timeout,
        };
        self.metrics.store_query(result, started.elapsed());
        let verdict = match answer {
            Ok(Ok(Some(mut record))) => {
                record.app = self.apps.intern(&record.app);
                let previous = self.cache.grant_of(&id);
                let shared = settings.fleet.as_ref().map(|limits| (limits, id));
                let grant = Grant::for_key(&record, settings.default_rate, previous.as_ref(), shared);
                self.cache.remember_known(id, Arc::clone(&grant));
                Verdict::Known(grant)
            }
            Ok(Ok(None)) => {
                self.cache.remember_unknown(id);
                Verdict::Unknown
            }
            Ok(Err(e)) => {
                log::debug!("lookup of key id {id} failed: {}", e.with_cause());
                return Err(LookupError::Unavailable);
            }
            Err(_) => return Err(LookupError::Unavailable),
        };
        // Checked after the write: an announcement counts before it forgets, so one that came
        // at any point since the query began is either seen here or forgets after the write.
        if self.announcements.load(Ordering::SeqCst) != seen {
            self.cache.forget(&id);
        }
        Ok(verdict)
    }

    /// Registers what the lookup exposes at each scrape: its cache's entries, the store queries
    /// running, and its filter's size, age and trust.
    pub fn register_gauges(self: &Arc<Self>, metrics: &Metrics) {
        let this = Arc::downgrade(self);
        let read = move |read: Reading| {
            let this = this.clone();
            move |gauge: &Gauge| gauge.set(this.upgrade().map_or(0.0, |lookup| read(&lookup)))
        };
        let entries = Arc::downgrade(self);
        metrics.sampled(
            IntGaugeVec::new(Opts::new("keygate_cache_entries", "Key cache entries by kind."), &["kind"]),
            move |gauge| {
                let Some(lookup) = entries.upgrade() else { return };
                gauge.with_label_values(&["positive"]).set(lookup.cache.known_len() as i64);
                gauge.with_label_values(&["negative"]).set(lookup.cache.unknown_len() as i64);
            },
        );
        let gauges: [(&str, &str, Reading); 5] = [
            ("keygate_store_lookups_in_flight", "Store lookups running now.", |l| l.queries_running() as f64),
            (
                "keygate_filter_keys",
                "Key ids put in the membership filter: by its last build, and announced since.",
                |l| l.filter.stats().0 as f64,
            ),
            ("keygate_filter_bytes", "Memory of the membership filter's bits.", |l| {
                l.filter.stats().1 as f64
            }),
            (
                "keygate_filter_age_seconds",
                "Seconds since the membership filter was last built (since start, before the first build).",
                |l| l.filter.stats().2,
            ),
            (
                "keygate_filter_trusted",
                "1 while the filter may reject keys (built, no announcement missed since).",
                |l| f64::from(u8::from(l.filter.is_trusted())),
            ),
        ];
        for (name, help, value) in gauges {
            metrics.sampled(Gauge::new(name, help), read(value));
        }
    }

    /// Applies an invalidation announcement.
    pub fn announce(&self, announcement: Announcement) {
        self.announcements.fetch_add(1, Ordering::SeqCst);
        match announcement {
            Announcement::Key(id) => {
                self.filter.announced(&id);
                self.cache.forget(&id);
            }
            Announcement::Everything => {
                self.filter.announced_everything();
                self.cache.forget_all();
            }
        }
    }

    /// The announcement channel was (re)joined after a gap in which messages may have been
    /// lost: nothing cached as unknown is trusted, every known key is confirmed again, and the
    /// filter rejects nothing until it is rebuilt.
    pub fn announcements_resumed(&self) {
        self.announcements.fetch_add(1, Ordering::SeqCst);
        self.filter.channel_resumed();
        self.cache.distrust_all();
    }

    /// The announcement channel broke: from now on announcements may be missed.
    pub fn announcements_lost(&self) {
        self.filter.channel_lost();
    }
}

#[cfg(test)]
mod tests;
