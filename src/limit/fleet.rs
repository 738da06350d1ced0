//! Limits shared by the fleet: a key's rate with `scope: fleet`, and every key's quota.
//!
//! No request waits on Redis. Each gateway keeps its local GCRA on the hot path ([`super::gcra`])
//! and counts what it admitted per key; a background task ([`Fleet::sync`], every `sync_ms`
//! with jitter) sends those counts to the key's shared counters in one round trip
//! ([`crate::store::counters`]) and charges the local limiter with what the others admitted
//! since (the new total, less what it saw last time, less its own delta). The same sync brings
//! each key's fleet-wide quota count for the period.
//!
//! A gateway lends at most its share of a key's burst, `burst/N` (N the gateways last seen in
//! the members set), at once: the burst is the fleet's, and N gateways that each gave the
//! whole of it at the same moment would let N bursts through. While syncs fail, each admission
//! costs N cells, so a gateway alone goes on at `rate/N`; what it admitted meanwhile is kept and
//! sent once Redis answers. The README's "Fleet limits" gives the bound and its argument.

use super::gcra::{Cell, Gcra, Headroom};
use crate::key::KeyId;
use crate::store::counters::{Exchange, Exchanged, KeyDelta, KeyTotals, QuotaCounter};
use crate::store::record::{unix_now, Quota, QuotaPeriod};
use crate::store::{KeyStore, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Syncs a key stays in after its last local admission, so that a gateway that just used a key
/// goes on learning what the others use of it.
const LINGER_SYNCS: u32 = 10;
/// A rate counter lives this many sync periods past its last use (at least `MIN_RATE_TTL`):
/// far longer than any gateway lingers on it, so no gateway's last total outlives it.
const RATE_TTL_SYNCS: u32 = 50;
const MIN_RATE_TTL: Duration = Duration::from_secs(10);
/// A gateway counts as a member this many sync periods after its last sync (at least
/// `MIN_MEMBER_WINDOW`): a missed sync or two does not make the fleet look smaller.
const MEMBER_WINDOW_SYNCS: u32 = 5;
const MIN_MEMBER_WINDOW: Duration = Duration::from_secs(1);
/// A quota counter is deleted this long after its period ends (clocks differ a little).
const QUOTA_GRACE_S: u64 = 3600;
/// `last_total` before the first sync.
const NEVER: u64 = u64::MAX;
/// `quota_limit` of a key without a quota.
const NO_QUOTA: u64 = u64::MAX;
/// Bit of `mode` set while syncs fail.
const DEGRADED: u64 = 1 << 32;

/// The fleet's runtime state in this gateway: one per process, kept across reloads.
pub struct Fleet {
    shared: Arc<Shared>,
    /// This gateway's name in the members set: random, so two processes never share one.
    instance: String,
    /// Each key id's counters while anything holds them (a cached grant, the sync), so that a
    /// grant rebuilt for a changed record goes on with the same counts.
    keys: Mutex<Registry>,
    /// The keys the sync exchanges: those admitted since, and those lingering. Only the sync
    /// task touches it.
    active: Mutex<HashMap<KeyId, Lingering>>,
}

#[derive(Default)]
struct Registry {
    keys: HashMap<KeyId, Weak<FleetKey>>,
    /// Size after the last sweep of dead entries; swept when it doubles.
    swept_at: usize,
}

struct Lingering {
    key: Arc<FleetKey>,
    /// Syncs in a row with nothing admitted here.
    idle: u32,
}

/// What every fleet key's check reads.
struct Shared {
    /// N (the low 32 bits) and `DEGRADED`: one load on the hot path.
    mode: AtomicU64,
    /// Keys that admitted their first request since the sync last took their count.
    dirty: Mutex<Vec<Arc<FleetKey>>>,
}

/// One key's shared-limit state in this gateway.
pub struct FleetKey {
    id: KeyId,
    shared: Arc<Shared>,
    /// The key's GCRA when its rate is the fleet's: here, not in the grant, so a rebuilt grant
    /// keeps it.
    gcra: Gcra,
    /// Whether `gcra` is the key's limiter (`scope: fleet`) or only its quota is shared.
    shares_rate: AtomicBool,
    /// The rate's cell, for charging the others' admissions: the last grant's.
    interval: AtomicU64,
    burst: AtomicU32,
    /// Admitted here since the sync last took the count.
    pending: AtomicU32,
    /// Taken by a sync and not yet acknowledged by Redis: kept through failed syncs, and
    /// saturating rather than wrapping during a very long outage.
    unsent: AtomicU32,
    /// The key's rate counter as last seen.
    last_total: AtomicU64,
    quota_limit: AtomicU64,
    quota_period: AtomicU8,
    /// The period `quota_used` counts (its `QuotaPeriod::at` number).
    quota_stamp: AtomicU32,
    /// The fleet's count for the period at the last sync.
    quota_used: AtomicU64,
}

/// Why a fleet key refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over the rate: nanoseconds until a request would pass.
    Rate(u64),
    /// Over the quota: seconds until the period ends, and the quota.
    Quota { retry_after: u64, quota: u64 },
}

/// What an admission leaves of the quota: for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLeft {
    pub quota: u64,
    pub remaining: u64,
    /// Seconds until the period ends.
    pub reset: u64,
}

// === impl Fleet ===

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new()
    }
}

impl Fleet {
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let instance = format!("{:016x}", hasher.finish());
        Fleet {
            shared: Arc::new(Shared { mode: AtomicU64::new(1), dirty: Mutex::new(Vec::new()) }),
            instance,
            keys: Mutex::new(Registry::default()),
            active: Mutex::new(HashMap::new()),
        }
    }

    /// The gateways last seen, and whether syncs are failing now.
    pub fn members(&self) -> (u32, bool) {
        let mode = self.shared.mode.load(Ordering::Relaxed);
        ((mode as u32).max(1), mode & DEGRADED != 0)
    }

    /// The counters of `id`, set to the record's limits: the ones already held when there are.
    pub fn key(&self, id: KeyId, cell: Cell, shares_rate: bool, quota: Option<Quota>) -> Arc<FleetKey> {
        let mut registry = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let key = match registry.keys.get(&id).and_then(Weak::upgrade) {
            Some(key) => key,
            None => {
                if registry.keys.len() >= 2 * registry.swept_at + 1024 {
                    registry.keys.retain(|_, key| key.strong_count() > 0);
                    registry.swept_at = registry.keys.len();
                }
                let key = Arc::new(FleetKey::new(id, Arc::clone(&self.shared)));
                registry.keys.insert(id, Arc::downgrade(&key));
                key
            }
        };
        key.configure(cell, shares_rate, quota);
        key
    }

    /// One sync: every key admitted since the last, and those lingering, exchanged with the
    /// store in one round trip within `timeout`. Returns whether it succeeded (or there was
    /// nothing to do).
    pub async fn sync(
        &self,
        store: &dyn KeyStore,
        period: Duration,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let mut active = std::mem::take(&mut *self.active.lock().unwrap_or_else(|e| e.into_inner()));
        let dirty = std::mem::take(&mut *self.shared.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        for key in dirty {
            active.insert(key.id, Lingering { key, idle: 0 });
        }
        let now = unix_now();
        let mut sent = Vec::with_capacity(active.len());
        let mut keys = Vec::with_capacity(active.len());
        for lingering in active.values_mut() {
            let key = &lingering.key;
            let fresh = key.pending.swap(0, Ordering::Relaxed);
            lingering.idle = if fresh == 0 { lingering.idle + 1 } else { 0 };
            let delta = key.add_unsent(fresh);
            let quota = key.quota().map(|q| {
                let (stamp, end) = q.period.at(now);
                QuotaCounter { stamp, expire_at: end + QUOTA_GRACE_S }
            });
            keys.push(KeyDelta { id: key.id, delta: u64::from(delta), quota });
            sent.push(Arc::clone(key));
        }
        let exchange = Exchange {
            instance: &self.instance,
            member_window: (period * MEMBER_WINDOW_SYNCS).max(MIN_MEMBER_WINDOW),
            rate_ttl: (period * RATE_TTL_SYNCS).max(MIN_RATE_TTL),
            keys,
        };
        let answer = match tokio::time::timeout(timeout, store.exchange(&exchange)).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout),
        };
        let result = match answer {
            Ok(Some(exchanged)) if exchanged.totals.len() == sent.len() => {
                self.apply(&sent, &exchange.keys, exchanged);
                Ok(())
            }
            Ok(Some(_)) => Err(StoreError::unreachable("a fleet sync answered for other keys than asked")),
            Ok(None) => {
                self.alone(&sent, &exchange.keys);
                Ok(())
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.shared.mode.fetch_or(DEGRADED, Ordering::Relaxed);
        }
        // A key leaves once idle for long and with nothing left to send.
        active.retain(|_, l| l.idle <= LINGER_SYNCS || l.key.unsent.load(Ordering::Relaxed) > 0);
        let mut kept = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.extend(kept.drain());
        *kept = active;
        result
    }

    /// Whether any key is to be exchanged: admitted since the last sync, or lingering.
    pub fn has_keys(&self) -> bool {
        !self.shared.dirty.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
            || !self.active.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Keys exchanged with the store last time or lingering.
    pub fn active_keys(&self) -> usize {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn apply(&self, sent: &[Arc<FleetKey>], deltas: &[KeyDelta], exchanged: Exchanged) {
        self.shared.mode.store(u64::from(exchanged.members.max(1)), Ordering::Relaxed);
        let now = super::ProcessClock::nanos();
        for ((key, delta), totals) in sent.iter().zip(deltas).zip(exchanged.totals) {
            key.settle(now, delta, totals);
        }
    }

    /// A store no other gateway shares: nobody else admitted anything, and the quota count is
    /// this gateway's own.
    fn alone(&self, sent: &[Arc<FleetKey>], deltas: &[KeyDelta]) {
        self.shared.mode.store(1, Ordering::Relaxed);
        for (key, delta) in sent.iter().zip(deltas) {
            let last = key.last_total.load(Ordering::Relaxed);
            let rate = if last == NEVER { 0 } else { last } + delta.delta;
            let quota = delta.quota.map(|q| {
                let before = match key.quota_stamp.load(Ordering::Relaxed) == q.stamp {
                    true => key.quota_used.load(Ordering::Relaxed),
                    false => 0,
                };
                before + delta.delta
            });
            key.settle(0, delta, KeyTotals { rate, quota });
        }
    }
}

// === impl FleetKey ===

impl FleetKey {
    fn new(id: KeyId, shared: Arc<Shared>) -> Self {
        FleetKey {
            id,
            shared,
            gcra: Gcra::default(),
            shares_rate: AtomicBool::new(false),
            interval: AtomicU64::new(1),
            burst: AtomicU32::new(1),
            pending: AtomicU32::new(0),
            unsent: AtomicU32::new(0),
            last_total: AtomicU64::new(NEVER),
            quota_limit: AtomicU64::new(NO_QUOTA),
            quota_period: AtomicU8::new(0),
            quota_stamp: AtomicU32::new(0),
            quota_used: AtomicU64::new(0),
        }
    }

    fn configure(&self, cell: Cell, shares_rate: bool, quota: Option<Quota>) {
        self.interval.store(cell.interval, Ordering::Relaxed);
        self.burst.store(cell.burst, Ordering::Relaxed);
        self.shares_rate.store(shares_rate, Ordering::Relaxed);
        match quota {
            Some(quota) => {
                let period = quota.period as u8;
                if self.quota_period.swap(period, Ordering::Relaxed) != period
                    || self.quota_limit.load(Ordering::Relaxed) == NO_QUOTA
                {
                    let (stamp, _) = quota.period.at(unix_now());
                    self.quota_stamp.store(stamp, Ordering::Relaxed);
                    self.quota_used.store(0, Ordering::Relaxed);
                }
                self.quota_limit.store(quota.limit, Ordering::Relaxed);
            }
            None => self.quota_limit.store(NO_QUOTA, Ordering::Relaxed),
        }
    }

    /// The quota it keeps, and whether it holds the key's rate.
    pub(crate) fn shape(&self) -> (Option<Quota>, bool) {
        (self.quota(), self.shares_rate.load(Ordering::Relaxed))
    }

    /// The gateways last seen.
    fn members(&self) -> (u32, bool) {
        let mode = self.shared.mode.load(Ordering::Relaxed);
        ((mode as u32).max(1), mode & DEGRADED != 0)
    }

    fn quota(&self) -> Option<Quota> {
        let limit = self.quota_limit.load(Ordering::Relaxed);
        let period = match self.quota_period.load(Ordering::Relaxed) {
            0 => QuotaPeriod::Day,
            _ => QuotaPeriod::Month,
        };
        (limit != NO_QUOTA).then_some(Quota { limit, period })
    }

    /// Admits a request at `now` (ProcessClock nanoseconds) under the key's quota and, with a
    /// shared rate, the fleet's share of it; `local` is the grant's own GCRA otherwise. On the
    /// hot path: atomics only, and a lock once per key per sync period (the first admission).
    #[inline]
    pub fn admit(
        self: &Arc<Self>,
        now: u64,
        cell: Cell,
        local: &Gcra,
    ) -> Result<(Headroom, Option<QuotaLeft>), Refused> {
        let quota = self.quota_check()?;
        let headroom = match self.shares_rate.load(Ordering::Relaxed) {
            true => {
                let mode = self.shared.mode.load(Ordering::Relaxed);
                let members = u64::from((mode as u32).max(1));
                // Alone, each request costs N cells: rate/N, and burst/N requests at once.
                let cost = if mode & DEGRADED != 0 { members } else { 1 };
                // Rounded down: N shares never add up to more than the burst.
                let share = (u64::from(cell.burst) / members).max(1);
                self.gcra.check(now, cell, cost, share * cost)
            }
            false => local.check(now, cell, 1, u64::from(cell.burst)),
        }
        .map_err(Refused::Rate)?;
        if self.pending.fetch_add(1, Ordering::Relaxed) == 0 {
            self.shared.dirty.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(self));
        }
        Ok((headroom, quota))
    }

    /// The quota's verdict: what is left after this request, or the refusal.
    #[inline]
    fn quota_check(&self) -> Result<Option<QuotaLeft>, Refused> {
        let limit = self.quota_limit.load(Ordering::Relaxed);
        if limit == NO_QUOTA {
            return Ok(None);
        }
        let used = self.quota_used.load(Ordering::Relaxed)
            + u64::from(self.unsent.load(Ordering::Relaxed))
            + u64::from(self.pending.load(Ordering::Relaxed));
        let now = unix_now();
        let quota = self.quota().expect("a limit was read");
        let (stamp, end) = quota.period.at(now);
        let reset = end.saturating_sub(now).max(1);
        if used < limit {
            return Ok(Some(QuotaLeft { quota: limit, remaining: limit - used - 1, reset }));
        }
        if stamp != self.quota_stamp.load(Ordering::Relaxed) {
            // A new period began since the last sync: its count starts again (the next sync
            // brings the fleet's).
            self.quota_stamp.store(stamp, Ordering::Relaxed);
            self.quota_used.store(0, Ordering::Relaxed);
            return Ok(Some(QuotaLeft { quota: limit, remaining: limit.saturating_sub(1), reset }));
        }
        Err(Refused::Quota { retry_after: reset, quota: limit })
    }

    /// Moves `fresh` admissions to the unsent count; the total to send.
    fn add_unsent(&self, fresh: u32) -> u32 {
        let update = |unsent: u32| Some(unsent.saturating_add(fresh));
        let before = self.unsent.fetch_update(Ordering::Relaxed, Ordering::Relaxed, update).unwrap_or(0);
        before.saturating_add(fresh)
    }

    /// Takes in a sync's answer for this key: the others' admissions charged (with a shared
    /// rate), the quota count for the period, the delta acknowledged. `now` 0: charge nothing.
    fn settle(&self, now: u64, sent: &KeyDelta, totals: KeyTotals) {
        let last = self.last_total.swap(totals.rate, Ordering::Relaxed);
        let burst = u64::from(self.burst.load(Ordering::Relaxed));
        let others = match last {
            // The first sync of a key new here: the count holds the others' use since they
            // began, of which what they lent at once (their shares of the burst) may be
            // recent. Charged, so that a key new to every gateway is not lent twice over.
            NEVER => {
                let (members, _) = self.members();
                let others_share = burst - (burst / u64::from(members)).max(1).min(burst);
                totals.rate.saturating_sub(sent.delta).min(others_share)
            }
            // Our own delta is in the total; anything else is the others'.
            last if totals.rate >= last + sent.delta => totals.rate - last - sent.delta,
            // The counter expired and began again: all but our delta is the others'.
            _ => totals.rate.saturating_sub(sent.delta),
        };
        if let (Some(count), Some(counter)) = (totals.quota, sent.quota) {
            self.quota_stamp.store(counter.stamp, Ordering::Relaxed);
            self.quota_used.store(count, Ordering::Relaxed);
        }
        let delta = sent.delta.min(u64::from(u32::MAX)) as u32;
        let _ =
            self.unsent.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(delta)));
        if now > 0 && self.shares_rate.load(Ordering::Relaxed) {
            let cell = Cell { interval: self.interval.load(Ordering::Relaxed), burst: burst as u32 };
            self.gcra.charge(now, cell, others);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const SECOND: u64 = 1_000_000_000;
    /// 10 a second, burst 6.
    const CELL: Cell = Cell { interval: SECOND / 10, burst: 6 };

    fn id(n: u8) -> KeyId {
        crate::key::ApiKey::from_cli(&format!("fleet-test-key-{n}")).id()
    }

    fn admitted(key: &Arc<FleetKey>, now: u64) -> usize {
        let local = Gcra::default();
        (0..100).take_while(|_| key.admit(now, CELL, &local).is_ok()).count()
    }

    #[test]
    fn a_gateway_lends_its_share_of_the_burst() {
        let fleet = Fleet::new();
        fleet.shared.mode.store(3, Ordering::Relaxed);
        let key = fleet.key(id(1), CELL, true, None);
        assert_eq!(admitted(&key, 10 * SECOND), 2, "6 / 3 gateways");
        assert_eq!(fleet.shared.dirty.lock().unwrap().len(), 1, "marked once for the sync");
        assert_eq!(key.pending.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn alone_a_gateway_never_stops_a_key() {
        let fleet = Fleet::new();
        fleet.shared.mode.store(5 | DEGRADED, Ordering::Relaxed);
        let cell = Cell { interval: SECOND, burst: 1 };
        let key = fleet.key(id(6), cell, true, None);
        let local = Gcra::default();
        assert!(key.admit(10 * SECOND, cell, &local).is_ok(), "a burst of 1 over 5 gateways is still 1");
        assert!(key.admit(10 * SECOND, cell, &local).is_err());
        assert!(key.admit(15 * SECOND, cell, &local).is_ok(), "then one every N/rate seconds");
    }

    #[test]
    fn while_syncs_fail_each_admission_costs_n() {
        let fleet = Fleet::new();
        fleet.shared.mode.store(3 | DEGRADED, Ordering::Relaxed);
        let key = fleet.key(id(2), CELL, true, None);
        let start = 10 * SECOND;
        assert_eq!(admitted(&key, start), 2, "burst/N requests at once, at 3 cells each");
        // Ten seconds at rate/3: about 33 admissions.
        let passed: usize = (1..=100).map(|tenth| admitted(&key, start + tenth * SECOND / 10)).sum();
        assert!((32..=34).contains(&passed), "{passed} in 10 s at 10/3 a second");
    }

    #[test]
    fn the_others_admissions_are_charged_and_the_delta_acknowledged() {
        let fleet = Fleet::new();
        fleet.shared.mode.store(3, Ordering::Relaxed);
        let key = fleet.key(id(3), CELL, true, None);
        let delta = |d: u64| KeyDelta { id: key.id, delta: d, quota: None };
        key.settle(SECOND, &delta(0), KeyTotals { rate: 100, quota: None });
        assert_eq!(
            key.gcra.used(SECOND),
            4 * CELL.interval,
            "a first sync charges at most the others' shares of the burst (6 - 6/3)"
        );
        let later = 10 * SECOND;
        key.unsent.store(2, Ordering::Relaxed);
        key.settle(later, &delta(2), KeyTotals { rate: 107, quota: None });
        assert_eq!(key.gcra.used(later), 5 * CELL.interval, "107 - 100 - our 2 = 5 the others'");
        assert_eq!(key.unsent.load(Ordering::Relaxed), 0);
        // The counter expired meanwhile and began again at our delta plus the others' 1.
        key.settle(later, &delta(3), KeyTotals { rate: 4, quota: None });
        assert_eq!(key.gcra.used(later), 6 * CELL.interval);
    }

    #[tokio::test]
    async fn alone_on_a_store_nobody_shares_the_quota_is_counted_here() {
        let fleet = Fleet::new();
        let store = MemoryStore::default();
        let quota = Quota { limit: 3, period: QuotaPeriod::Day };
        let key = fleet.key(id(4), CELL, false, Some(quota));
        let local = Gcra::default();
        for _ in 0..3 {
            key.admit(SECOND, CELL, &local).unwrap();
        }
        let refused = key.admit(SECOND, CELL, &local).unwrap_err();
        assert!(matches!(refused, Refused::Quota { quota: 3, retry_after: 1..=86_400 }), "{refused:?}");
        let period = Duration::from_millis(100);
        fleet.sync(&store, period, period).await.unwrap();
        assert_eq!(key.quota_used.load(Ordering::Relaxed), 3);
        assert_eq!(key.unsent.load(Ordering::Relaxed), 0);
        assert!(key.admit(SECOND, CELL, &local).is_err(), "still over after the sync");
        assert_eq!(fleet.members(), (1, false));
    }

    #[tokio::test]
    async fn a_failed_sync_keeps_the_deltas_and_degrades() {
        let fleet = Fleet::new();
        let store = MemoryStore::default();
        let key = fleet.key(id(5), CELL, true, None);
        assert_eq!(admitted(&key, 10 * SECOND), 6);
        let period = Duration::from_millis(100);
        let failing = FailingStore;
        assert!(fleet.sync(&failing, period, period).await.is_err());
        assert_eq!((key.unsent.load(Ordering::Relaxed), fleet.members()), (6, (1, true)));
        fleet.sync(&store, period, period).await.unwrap();
        assert_eq!((key.unsent.load(Ordering::Relaxed), fleet.members()), (0, (1, false)));
        assert_eq!(fleet.active_keys(), 1);
        // Idle for longer than it lingers: dropped from the syncs.
        for _ in 0..=LINGER_SYNCS {
            fleet.sync(&store, period, period).await.unwrap();
        }
        assert_eq!(fleet.active_keys(), 0);
        // The registry gives the same counters back while a grant holds them.
        assert!(Arc::ptr_eq(&key, &fleet.key(id(5), CELL, true, None)));
    }

    struct FailingStore;

    #[async_trait::async_trait]
    impl KeyStore for FailingStore {
        async fn fetch(&self, _: &KeyId) -> Result<Option<crate::store::KeyRecord>, StoreError> {
            Err(StoreError::Timeout)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Err(StoreError::Timeout)
        }
        async fn count_hint(&self) -> Result<usize, StoreError> {
            Err(StoreError::Timeout)
        }
        async fn scan_ids(&self, _: &mut (dyn FnMut(KeyId) + Send)) -> Result<usize, StoreError> {
            Err(StoreError::Timeout)
        }
        async fn exchange(&self, _: &Exchange<'_>) -> Result<Option<Exchanged>, StoreError> {
            Err(StoreError::Timeout)
        }
    }
}
