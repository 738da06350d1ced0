//! What the cache says about a key id: the first place a lookup ([`crate::lookup`]) asks.
//!
//! Known and unknown keys are held in two separate bounded caches, so a flood of unknown keys
//! can only evict other unknown keys, never a known one. A known entry is fresh for `ttl` (less
//! up to a tenth, see [`KeyCache::ttl_of`]), then served stale (and refreshed in the background)
//! while the store cannot confirm it, until `ttl + stale` after it was confirmed. An unknown
//! entry lives for `negative_ttl`.
//!
//! The hit path takes no lock of ours and allocates nothing: quick_cache's shard lookup and an
//! `Arc` clone.

use crate::config::CacheConfig;
use crate::grant::Grant;
use crate::key::KeyId;
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a failed background refresh waits before the next try, so that a store outage
/// costs each stale key one lookup per second rather than one per request.
const REFRESH_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Known {
    grant: Arc<Grant>,
    /// When the store last confirmed the record.
    verified: Stamp,
    /// No background refresh before this (set after a failed one).
    retry_at: Stamp,
    /// The cache's epoch when verified; an older epoch means "check again".
    epoch: u64,
}

/// A moment as nanoseconds since the cache was made: 8 bytes where an `Instant` takes 16, in
/// every cached entry.
type Stamp = u64;

/// The cache's answer for one key id.
pub enum Cached {
    /// Known and recently confirmed.
    Fresh(Arc<Grant>),
    /// Known, past its TTL but within `stale`: serve it; `refresh` says whether to ask the store.
    Stale { grant: Arc<Grant>, refresh: bool },
    /// Recently confirmed absent from the store.
    Unknown,
    /// Nothing usable: the store must be asked.
    Miss,
}

pub struct KeyCache {
    known: Cache<KeyId, Known>,
    /// When each unknown key was found absent.
    unknown: Cache<KeyId, Stamp>,
    /// What stamps count from.
    origin: Instant,
    /// Bumped when every known entry must be confirmed again, e.g. after announcements may have
    /// been missed; entries of an older epoch are served stale until refreshed.
    epoch: AtomicU64,
}

impl KeyCache {
    /// A cache of `config`'s capacities (they cannot change while it runs; its durations can).
    pub fn new(config: &CacheConfig) -> Self {
        KeyCache {
            known: Cache::new(config.capacity),
            unknown: at_most(config.negative_capacity),
            origin: Instant::now(),
            epoch: AtomicU64::new(0),
        }
    }

    /// What the cache says about `id`, judged by the durations of `config` (the settings now
    /// in force: a reload applies to entries already cached).
    #[cfg(any(test, feature = "test-util"))]
    pub fn get(&self, id: &KeyId, config: &CacheConfig) -> Cached {
        self.get_at(id, config, Instant::now())
    }

    /// [`Self::get`] as of `now`: a request passes the moment it began, so the clock is read
    /// once for both (the cache's durations are seconds; a request's microseconds are nothing
    /// to them).
    pub fn get_at(&self, id: &KeyId, config: &CacheConfig, now: Instant) -> Cached {
        let now = self.stamp(now);
        if let Some(known) = self.known.get(id) {
            let age = since(known.verified, now);
            if age < Self::ttl_of(id, config.ttl) && known.epoch == self.epoch.load(Ordering::Relaxed) {
                return Cached::Fresh(known.grant);
            }
            if age < config.ttl + config.stale {
                return Cached::Stale { grant: known.grant, refresh: now >= known.retry_at };
            }
            return Cached::Miss;
        }
        match self.unknown.get(id) {
            Some(at) if since(at, now) < config.negative_ttl => Cached::Unknown,
            _ => Cached::Miss,
        }
    }

    /// How long `id` stays fresh: `ttl` less up to a tenth, fixed per key id (its bytes are a
    /// SHA-256, so the fraction is spread evenly). Keys confirmed together (after a reconnect,
    /// or a restart) then come up for refresh spread over a tenth of `ttl`, not in one wave,
    /// and stay spread: each key keeps its own period.
    fn ttl_of(id: &KeyId, ttl: Duration) -> Duration {
        let fraction = u32::from(id.as_bytes()[31]);
        ttl - ttl / 2560 * fraction
    }

    /// The grant cached for `id`, however old (its limiter carries over to a refreshed record).
    pub fn grant_of(&self, id: &KeyId) -> Option<Arc<Grant>> {
        self.known.peek(id).map(|k| k.grant)
    }

    /// Records that the store just confirmed `id`.
    pub fn remember_known(&self, id: KeyId, grant: Arc<Grant>) {
        let now = self.now();
        let (verified, epoch) = (now, self.epoch.load(Ordering::Relaxed));
        self.unknown.remove(&id);
        self.known.insert(id, Known { grant, verified, retry_at: now, epoch });
    }

    /// Records that the store just said `id` has no record.
    pub fn remember_unknown(&self, id: KeyId) {
        self.known.remove(&id);
        self.unknown.insert(id, self.now());
    }

    /// Claims the refresh of a stale `grant` for the caller: true at most once a second per
    /// entry, so a busy stale key starts one refresh, not one per request.
    pub fn claim_refresh(&self, id: &KeyId, grant: &Arc<Grant>) -> bool {
        self.push_back_refresh(id, grant, true)
    }

    /// After a failed refresh of `grant`: keep serving it, try again in a second. Only the
    /// same entry is touched, and only if it is still there: an announcement that forgot it
    /// meanwhile is never undone.
    pub fn postpone_refresh(&self, id: &KeyId, grant: &Arc<Grant>) {
        self.push_back_refresh(id, grant, false);
    }

    /// Moves the entry's next refresh a second on, if it still holds `grant` (and, with
    /// `only_if_due`, its refresh is due). In place under the shard's lock: a confirmation that
    /// lands meanwhile is never overwritten by an older copy of the entry.
    fn push_back_refresh(&self, id: &KeyId, grant: &Arc<Grant>, only_if_due: bool) -> bool {
        let now = self.now();
        let pushed = self.known.entry(id, Some(Duration::ZERO), |_, known| {
            let due = !only_if_due || now >= known.retry_at;
            let ours = Arc::ptr_eq(&known.grant, grant) && due;
            if ours {
                known.retry_at = now + REFRESH_RETRY.as_nanos() as Stamp;
            }
            EntryAction::Retain(ours)
        });
        matches!(pushed, EntryResult::Retained(true))
    }

    /// An announcement for `id`: forget it, known or unknown.
    pub fn forget(&self, id: &KeyId) {
        self.known.remove(id);
        self.unknown.remove(id);
    }

    /// An announcement of `*`: forget everything.
    pub fn forget_all(&self) {
        self.known.clear();
        self.unknown.clear();
    }

    /// Announcements may have been missed: trust no unknown entry, and confirm every known one
    /// again (still serving it meanwhile).
    pub fn distrust_all(&self) {
        self.unknown.clear();
        self.reconfirm_known();
    }

    /// Every known entry is served stale until confirmed again (e.g. after its limits changed).
    pub fn reconfirm_known(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    fn now(&self) -> Stamp {
        self.stamp(Instant::now())
    }

    fn stamp(&self, at: Instant) -> Stamp {
        at.saturating_duration_since(self.origin).as_nanos() as Stamp
    }

    pub fn known_len(&self) -> usize {
        self.known.len()
    }

    pub fn unknown_len(&self) -> usize {
        self.unknown.len()
    }
}

/// A cache that holds at most `capacity` entries: the one for unknown keys, which clients fill
/// at will. quick_cache splits its capacity over its shards rounding up, so it may hold a few
/// more than asked; asked for a multiple of its shards (as many, since it expects as many
/// entries), it holds at most `capacity`.
fn at_most<V: Clone>(capacity: usize) -> Cache<KeyId, V> {
    let first = Cache::new(capacity);
    let (bound, shards) = (capacity as u64, first.num_shards() as u64);
    match first.capacity() > bound {
        false => first,
        true => Cache::with(
            capacity,
            (bound - bound % shards).max(1),
            Default::default(),
            Default::default(),
            Default::default(),
        ),
    }
}

/// The time from `earlier` to `later`, none if `later` is not after it.
fn since(earlier: Stamp, later: Stamp) -> Duration {
    Duration::from_nanos(later.saturating_sub(earlier))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
