use super::*;
use crate::config::{CacheConfig, Rate};
use crate::key::ApiKey;
use crate::store::KeyRecord;

fn cache(capacity: usize, negative_capacity: usize) -> KeyCache {
    KeyCache::new(&CacheConfig { negative_capacity, ..CacheConfig::for_tests(capacity) })
}

fn id(n: usize) -> KeyId {
    ApiKey::from_cli(&format!("key-{n}")).id()
}

/// What `c` says about `id`, under the TTLs of `CacheConfig::for_tests`.
fn get(c: &KeyCache, id: &KeyId) -> Cached {
    c.get(id, &CacheConfig::for_tests(1))
}

fn grant() -> Arc<Grant> {
    Grant::for_record(&KeyRecord::active("app"), Rate { per_second: 1.0, burst: 1 }, None)
}

fn kind(c: &Cached) -> &'static str {
    match c {
        Cached::Fresh(_) => "fresh",
        Cached::Stale { refresh: true, .. } => "stale-refresh",
        Cached::Stale { refresh: false, .. } => "stale",
        Cached::Unknown => "unknown",
        Cached::Miss => "miss",
    }
}

#[tokio::test(start_paused = true)]
async fn a_known_key_is_fresh_then_stale_then_gone() {
    let c = cache(10, 10);
    let g = grant();
    c.remember_known(id(1), Arc::clone(&g));
    assert_eq!(kind(&get(&c, &id(1))), "fresh");
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(kind(&get(&c, &id(1))), "stale-refresh");
    c.postpone_refresh(&id(1), &g);
    assert_eq!(kind(&get(&c, &id(1))), "stale");
    tokio::time::advance(REFRESH_RETRY).await;
    assert_eq!(kind(&get(&c, &id(1))), "stale-refresh");
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(kind(&get(&c, &id(1))), "miss");
    assert!(c.grant_of(&id(1)).is_some(), "the limiter outlives the entry's usefulness");
}

#[tokio::test(start_paused = true)]
async fn postponing_a_refresh_never_brings_back_a_forgotten_key() {
    let c = cache(10, 10);
    let g = grant();
    c.remember_known(id(1), Arc::clone(&g));
    c.forget(&id(1));
    c.postpone_refresh(&id(1), &g);
    assert_eq!(kind(&get(&c, &id(1))), "miss");
    let newer = grant();
    c.remember_known(id(1), Arc::clone(&newer));
    c.postpone_refresh(&id(1), &g);
    assert!(Arc::ptr_eq(&c.grant_of(&id(1)).unwrap(), &newer), "an older grant replaced a newer one");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_key_expires_after_its_own_ttl() {
    let c = cache(10, 10);
    c.remember_unknown(id(1));
    assert_eq!(kind(&get(&c, &id(1))), "unknown");
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(kind(&get(&c, &id(1))), "miss");
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_unknown_keys_never_evicts_a_known_one() {
    let c = cache(100, 100);
    for n in 0..50 {
        c.remember_known(id(n), grant());
    }
    for n in 1000..21_000 {
        c.remember_unknown(id(n));
    }
    assert!(c.unknown_len() <= 100);
    for n in 0..50 {
        assert_eq!(kind(&get(&c, &id(n))), "fresh", "known key {n} was evicted");
    }
}

#[tokio::test(start_paused = true)]
async fn announcements_forget_and_a_resubscribe_distrusts() {
    let c = cache(10, 10);
    c.remember_known(id(1), grant());
    c.remember_unknown(id(2));
    c.forget(&id(1));
    c.forget(&id(2));
    assert_eq!((kind(&get(&c, &id(1))), kind(&get(&c, &id(2)))), ("miss", "miss"));

    c.remember_known(id(1), grant());
    c.remember_unknown(id(2));
    c.distrust_all();
    assert_eq!(kind(&get(&c, &id(1))), "stale-refresh", "known keys are still served, but confirmed");
    assert_eq!(kind(&get(&c, &id(2))), "miss", "nothing unverified is trusted as unknown");
    c.remember_known(id(1), grant());
    assert_eq!(kind(&get(&c, &id(1))), "fresh");

    c.forget_all();
    assert_eq!((c.known_len(), c.unknown_len()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn learning_a_key_replaces_its_other_entry() {
    let c = cache(10, 10);
    c.remember_unknown(id(1));
    c.remember_known(id(1), grant());
    assert_eq!((kind(&get(&c, &id(1))), c.unknown_len()), ("fresh", 0));
    c.remember_unknown(id(1));
    assert_eq!((kind(&get(&c, &id(1))), c.known_len()), ("unknown", 0));
}

#[tokio::test(start_paused = true)]
async fn known_keys_and_their_limiters_are_bounded_by_capacity() {
    let c = cache(100, 100);
    let limiters: Vec<_> = (0..1000)
        .map(|n| {
            let g = grant();
            let weak = Arc::downgrade(&g);
            c.remember_known(id(n), g);
            weak
        })
        .collect();
    assert!(c.known_len() <= 100, "{} known entries", c.known_len());
    // An evicted key's grant, limiter state included, goes with its entry: limiter memory
    // follows capacity.
    let alive = limiters.iter().filter(|l| l.upgrade().is_some()).count();
    assert!(alive <= 100, "{alive} limiters alive for 100 entries");
}

#[test]
fn claiming_a_refresh_never_undoes_a_confirmation_that_lands_meanwhile() {
    let c = Arc::new(cache(10, 10));
    let g = grant();
    c.remember_known(id(1), Arc::clone(&g));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let claimer = {
        let (c, g, done) = (Arc::clone(&c), Arc::clone(&g), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Cached::Stale { refresh: true, .. } = get(&c, &id(1)) {
                    c.claim_refresh(&id(1), &g);
                }
            }
        })
    };
    // Each round makes the entry stale (a new epoch), then confirms it: right after, it must
    // be fresh, whatever the claimer did in between.
    let undone = (0..100_000)
        .filter(|_| {
            c.reconfirm_known();
            c.remember_known(id(1), Arc::clone(&g));
            kind(&get(&c, &id(1))) != "fresh"
        })
        .count();
    done.store(true, Ordering::Relaxed);
    claimer.join().unwrap();
    assert_eq!(undone, 0, "confirmations undone by a concurrent claim");
}

#[tokio::test(start_paused = true)]
async fn keys_confirmed_together_come_up_for_refresh_spread_over_a_tenth_of_the_ttl() {
    let c = cache(10_000, 10);
    (0..1000).for_each(|n| c.remember_known(id(n), grant()));
    let fresh = |c: &KeyCache| (0..1000).filter(|n| kind(&get(c, &id(*n))) == "fresh").count();
    // ttl 300 s: all fresh until 270 s, all stale from 300 s, and in between a share that
    // falls evenly (about half at 285 s).
    tokio::time::advance(Duration::from_millis(269_900)).await;
    assert_eq!(fresh(&c), 1000);
    tokio::time::advance(Duration::from_millis(15_100)).await;
    let halfway = fresh(&c);
    assert!((400..=600).contains(&halfway), "{halfway} of 1000 still fresh at 285 s");
    tokio::time::advance(Duration::from_secs(15)).await;
    assert_eq!(fresh(&c), 0);
}

/// Guarantee 5's bound is exact: the unknown keys held never exceed `negative_capacity`, for
/// any capacity (the cache splits it over its shards).
#[test]
fn unknown_keys_held_never_exceed_negative_capacity() {
    for negative_capacity in [1, 7, 50, 100, 999, 1000, 4097, 100_000, 1_000_000] {
        let c = cache(10, negative_capacity);
        let held = c.unknown.capacity();
        assert!(
            held <= negative_capacity as u64,
            "{held} held for a negative_capacity of {negative_capacity}"
        );
        for n in 0..negative_capacity.min(5000) * 3 {
            c.remember_unknown(id(n));
        }
        assert!(c.unknown_len() <= negative_capacity, "{} held of {negative_capacity}", c.unknown_len());
    }
}
