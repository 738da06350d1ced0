//! Stage 2 of the request path: a key id's verdict, from the cache or else from the store.
//!
//! This is where the contract's store guarantees live:
//! - one store query per key id in flight per process; concurrent requests wait for its answer;
//! - at most `max_inflight` queries at once; beyond that a lookup is shed as `Overloaded`;
//! - every query is bounded by `timeout`, and an error or timeout is never cached as unknown;
//! - an announcement that arrives while a query is in flight (or before its answer is written)
//!   makes the answer doubtful: it is returned to the requests that asked, but not remembered;
//! - a key id outside the trusted membership filter ([`crate::filter`]) is unknown without a
//!   query, but only while the store is answering: during an outage every uncached key is a 503.

use crate::cache::{Cached, KeyCache};
use crate::config::Rate;
use crate::filter::KeyFilter;
use crate::key::KeyId;
use crate::limit::Grant;
use crate::metrics::{CacheResult, Metrics, StoreResult};
use crate::store::KeyStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};

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

type Flight = Arc<OnceCell<Result<Verdict, LookupError>>>;

/// An invalidation, as announced on `{prefix}invalidate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    Key(KeyId),
    Everything,
}

pub struct KeyLookup {
    pub cache: KeyCache,
    pub filter: KeyFilter,
    /// Whether the last store query got an answer; the filter only rejects while it did.
    store_answering: AtomicBool,
    /// Replaced when a reload points at another store.
    store: RwLock<Arc<dyn KeyStore>>,
    /// `timeout` in milliseconds; a reload may change it.
    timeout_ms: AtomicU64,
    permits: Arc<Semaphore>,
    /// The permits `permits` was sized to (`max_inflight`), so a reload can resize it.
    max_inflight: Mutex<usize>,
    /// The query in flight for each key id, shared by everyone who asks meanwhile.
    flights: Mutex<HashMap<KeyId, Flight>>,
    /// Counts announcements, so a query can tell whether one arrived while it was in flight.
    announcements: AtomicU64,
    /// The per-key limit for records that set none; read when a record is fetched, never on
    /// the hit path.
    default_rate: RwLock<Rate>,
    metrics: Arc<Metrics>,
    /// One shared copy of each app name: many keys belong to one app, and a cached key's
    /// memory is mostly its record.
    apps: Mutex<AppNames>,
}

impl KeyLookup {
    pub fn new(
        cache: KeyCache,
        filter: KeyFilter,
        store: Arc<dyn KeyStore>,
        timeout: Duration,
        max_inflight: usize,
        default_rate: Rate,
        metrics: Arc<Metrics>,
    ) -> Self {
        KeyLookup {
            cache,
            filter,
            store_answering: AtomicBool::new(true),
            store: RwLock::new(store),
            timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
            permits: Arc::new(Semaphore::new(max_inflight)),
            max_inflight: Mutex::new(max_inflight),
            flights: Mutex::new(HashMap::new()),
            announcements: AtomicU64::new(0),
            default_rate: RwLock::new(default_rate),
            metrics,
            apps: Mutex::new(AppNames::default()),
        }
    }

    /// The store now in use.
    pub fn store(&self) -> Arc<dyn KeyStore> {
        Arc::clone(&self.store.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The same store over a new connection: what was learnt from it stays.
    pub fn reconnect_store(&self, store: Arc<dyn KeyStore>) {
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = store;
    }

    /// A reload's store settings: another store (forgetting everything learnt from the old
    /// one), a new timeout, a new bound on lookups in flight.
    pub fn set_store(&self, store: Option<Arc<dyn KeyStore>>, timeout: Duration, max_inflight: usize) {
        if let Some(store) = store {
            // The filter describes the old store: it rejects nothing until rebuilt from the new.
            self.filter.channel_lost();
            *self.store.write().unwrap_or_else(|e| e.into_inner()) = store;
            self.announcements.fetch_add(1, Ordering::SeqCst);
            self.cache.forget_all();
        }
        self.timeout_ms.store(timeout.as_millis() as u64, Ordering::Relaxed);
        let mut current = self.max_inflight.lock().unwrap_or_else(|e| e.into_inner());
        match max_inflight.cmp(&*current) {
            std::cmp::Ordering::Greater => self.permits.add_permits(max_inflight - *current),
            std::cmp::Ordering::Less => {
                // Only free permits can be forgotten at once; the rest are taken, and dropped,
                // as the lookups holding them finish.
                let excess = *current - max_inflight;
                let owed = (excess - self.permits.forget_permits(excess)) as u32;
                if owed > 0 {
                    let permits = Arc::clone(&self.permits);
                    tokio::spawn(async move {
                        if let Ok(taken) = permits.acquire_many(owed).await {
                            taken.forget();
                        }
                    });
                }
            }
            std::cmp::Ordering::Equal => {}
        }
        *current = max_inflight;
    }

    /// The cache's answer, counted. A stale known key is served as known and refreshed in the
    /// background, so a slow or absent store never delays a key it already vouched for.
    pub fn cached(self: &Arc<Self>, id: &KeyId) -> Option<Verdict> {
        match self.cache.get(id) {
            Cached::Fresh(grant) => {
                self.metrics.cache_lookup(CacheResult::Hit);
                Some(Verdict::Known(grant))
            }
            Cached::Stale { grant, refresh } => {
                self.metrics.cache_lookup(CacheResult::StaleHit);
                if refresh && self.cache.claim_refresh(id, &grant) {
                    self.refresh_in_background(*id, Arc::clone(&grant));
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

    fn refresh_in_background(self: &Arc<Self>, id: KeyId, stale: Arc<Grant>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if this.fetch(id).await.is_err() {
                this.cache.postpone_refresh(&id, &stale);
            }
        });
    }

    /// Whether the filter may answer "unknown" for this store now; while it cannot, every
    /// uncached key costs a store lookup.
    pub fn filter_answers(&self) -> bool {
        self.store_answering.load(Ordering::Relaxed) && self.filter.is_trusted()
    }

    /// Whether the filter says `id` is no key's, for a key the cache does not hold: then it is
    /// unknown without a store read.
    pub fn filter_excludes(&self, id: &KeyId) -> bool {
        let excluded = self.store_answering.load(Ordering::Relaxed) && self.filter.excludes(id);
        if excluded {
            self.metrics.filter_rejection();
        }
        excluded
    }

    /// Asks the store, joining the query already in flight for `id` if there is one.
    pub async fn fetch(&self, id: KeyId) -> Result<Verdict, LookupError> {
        let flight = Arc::clone(self.lock_flights().entry(id).or_default());
        // Leaves the map whether the query finishes or this request is dropped mid-way (then
        // a waiter, if any, runs the query itself: nobody waits on a query that never ends).
        let _leave = LeaveFlight { lookup: self, id, flight: &flight };
        flight.get_or_init(|| self.query_store(id)).await.clone()
    }

    fn lock_flights(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Flight>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn query_store(&self, id: KeyId) -> Result<Verdict, LookupError> {
        let Ok(_permit) = self.permits.try_acquire() else {
            return Err(LookupError::Overloaded);
        };
        let _in_flight = InFlight::new(&self.metrics);
        let seen = self.announcements.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let store = self.store();
        let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
        let answer = tokio::time::timeout(timeout, store.fetch(&id)).await;
        let result = match &answer {
            Ok(Ok(Some(_))) => StoreResult::Found,
            Ok(Ok(None)) => StoreResult::NotFound,
            Ok(Err(_)) => StoreResult::Error,
            Err(_) => StoreResult::Timeout,
        };
        self.metrics.store_query(result, started.elapsed());
        self.store_answering.store(matches!(answer, Ok(Ok(_))), Ordering::Relaxed);
        let verdict = match answer {
            Ok(Ok(Some(mut record))) => {
                record.app = self.apps.lock().unwrap_or_else(|e| e.into_inner()).intern(&record.app);
                let previous = self.cache.grant_of(&id);
                let default_rate = *self.default_rate.read().unwrap_or_else(|e| e.into_inner());
                let grant = Grant::for_record(&record, default_rate, previous.as_ref());
                self.cache.remember_known(id, Arc::clone(&grant));
                Verdict::Known(grant)
            }
            Ok(Ok(None)) => {
                self.cache.remember_unknown(id);
                Verdict::Unknown
            }
            Ok(Err(e)) => {
                log::debug!("lookup of key id {id} failed: {e}");
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

    /// A new default per-key limit (a reload). Known keys are confirmed again in the background
    /// and pick it up then; a key whose effective limit did not change keeps its limiter state.
    pub fn set_default_rate(&self, rate: Rate) {
        let mut current = self.default_rate.write().unwrap_or_else(|e| e.into_inner());
        if *current != rate {
            *current = rate;
            self.cache.reconfirm_known();
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

/// The app names of cached records, each held once.
#[derive(Default)]
struct AppNames {
    names: std::collections::HashSet<Arc<str>>,
    /// Size after the last sweep; the set is swept of unused names when it doubles.
    swept_at: usize,
}

impl AppNames {
    fn intern(&mut self, app: &Arc<str>) -> Arc<str> {
        if let Some(shared) = self.names.get(app) {
            return Arc::clone(shared);
        }
        if self.names.len() >= 2 * self.swept_at + 1024 {
            // Only the set holds a name no cached record uses any more.
            self.names.retain(|name| Arc::strong_count(name) > 1);
            self.swept_at = self.names.len();
        }
        self.names.insert(Arc::clone(app));
        Arc::clone(app)
    }
}

/// Takes a flight out of the map when the request that joined it is done with it, unless
/// others still wait on it (they run it, or read its answer, themselves).
struct LeaveFlight<'a> {
    lookup: &'a KeyLookup,
    id: KeyId,
    flight: &'a Flight,
}

impl Drop for LeaveFlight<'_> {
    fn drop(&mut self) {
        let mut flights = self.lookup.lock_flights();
        let ours = flights.get(&self.id).is_some_and(|f| Arc::ptr_eq(f, self.flight));
        // Under the map's lock no one can join meanwhile: two references are the map's and ours.
        if ours && (self.flight.initialized() || Arc::strong_count(self.flight) <= 2) {
            flights.remove(&self.id);
        }
    }
}

/// Counts a store lookup in `keygate_store_lookups_in_flight` for as long as it lives, however
/// the lookup ends (answered, timed out, or dropped with its request).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.store_in_flight.inc();
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.store_in_flight.dec();
    }
}

#[cfg(test)]
mod tests;
