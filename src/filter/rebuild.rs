//! Keeps the membership filter current: built at start, rebuilt on an interval, at once after
//! the announcement channel resumes or `*` is announced, and retried with backoff after a
//! failure. A rebuild scans the store in paced batches on the background runtime, so it never
//! stalls request handling nor hammers the store.

use super::Bloom;
use crate::lookup::KeyLookup;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::{KeyStore, StoreError};
use arc_swap::ArcSwap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between attempts after failures (the backoff doubles up to it).
const MAX_RETRY: Duration = Duration::from_secs(15);
/// How long the first build waits for the announcement channel to come up: a build begun
/// before it cannot be trusted, and would only be scanned again once it is up.
const FIRST_BUILD_WAITS_FOR_CHANNEL: Duration = Duration::from_secs(2);

/// Runs for ever, scanning the store of the settings in force at each rebuild.
pub async fn maintain(lookup: Arc<KeyLookup>, settings: Arc<ArcSwap<Settings>>, metrics: Arc<Metrics>) {
    let filter = &lookup.filter;
    if !filter.is_listening() {
        let _ = tokio::time::timeout(FIRST_BUILD_WAITS_FOR_CHANNEL, filter.rebuild_now.notified()).await;
    }
    let mut retry = FIRST_RETRY;
    // The store the last successful build scanned: a filter of the same store is sized from
    // what it holds now.
    let mut last_built: Option<Arc<dyn KeyStore>> = None;
    loop {
        // A wake-up that came before this build begins is answered by it (tokio's timeout polls
        // the wake-up once before its deadline); one that comes during the build starts another.
        let _ = tokio::time::timeout(Duration::ZERO, filter.rebuild_now.notified()).await;
        let store = Arc::clone(&settings.load().lookup.store);
        let same_store = last_built.as_ref().is_some_and(|last| Arc::ptr_eq(last, &store));
        let wait = match rebuild(&lookup, &store, same_store).await {
            Ok(count) => {
                log::info!("membership filter built: {count} key ids, trusted: {}", filter.is_trusted());
                metrics.filter_rebuild(true);
                retry = FIRST_RETRY;
                last_built = Some(store);
                spread(filter.config.rebuild_interval)
            }
            Err(e) => {
                log::warn!(
                    "membership filter rebuild failed ({}); the last one stays, trusted: {}",
                    e.with_cause(),
                    filter.is_trusted()
                );
                metrics.filter_rebuild(false);
                let wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = filter.rebuild_now.notified() => {}
        }
    }
}

/// `interval` give or take a tenth, at random: gateways started together (a deploy, a store
/// restart) do not go on scanning the store all at the same moment.
fn spread(interval: Duration) -> Duration {
    let unit = RandomState::new().hash_one(std::time::Instant::now()) as f64 / u64::MAX as f64;
    interval.mul_f64(0.9 + 0.2 * unit)
}

/// Scans `store` into a new filter. A rebuild of the store the current filter was built from is
/// sized for the ids that filter holds (its build's and those announced since); the first build
/// of a store, for the store's own count (Redis's `DBSIZE`, which may include other data).
async fn rebuild(
    lookup: &KeyLookup,
    store: &Arc<dyn KeyStore>,
    same_store: bool,
) -> Result<usize, StoreError> {
    let filter = &lookup.filter;
    let ticket = filter.begin_rebuild();
    let scanned = async {
        let expected = match same_store {
            true => filter.stats().0 as usize,
            false => store.count_hint().await?,
        };
        let bloom = Bloom::new(expected, filter.config.bits_per_key);
        let count = store.scan_ids(&mut |id| bloom.insert(&id)).await?;
        Ok((bloom, count))
    };
    match scanned.await {
        Ok((bloom, count)) => {
            filter.finish_rebuild(ticket, bloom);
            Ok(count)
        }
        Err(e) => {
            filter.abandon_rebuild();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use crate::filter::FilterConfig;
    use crate::key::{ApiKey, KeyId};
    use crate::store::memory::MemoryStore;
    use crate::store::KeyRecord;

    fn id(n: usize) -> KeyId {
        ApiKey::from_cli(&format!("key-{n}")).id()
    }

    fn rebuilds(metrics: &Metrics, result: &str) -> u64 {
        let index = match result {
            "ok" => 0,
            "error" => 1,
            other => panic!("no result {other}"),
        };
        metrics.filter_rebuilds[index].get()
    }

    #[tokio::test(start_paused = true)]
    async fn failed_rebuilds_keep_the_last_view_back_off_and_recover_and_the_interval_rebuilds() {
        let store = Arc::new(MemoryStore::default());
        (0..10).for_each(|n| store.insert(id(n), KeyRecord::active("a")));
        let config = FilterConfig { rebuild_interval: Duration::from_secs(300), ..FilterConfig::default() };
        let metrics = Arc::new(Metrics::new());
        let lookup = Arc::new(KeyLookup::new(&CacheConfig::for_tests(100), config, Arc::clone(&metrics)));
        let settings = Arc::new(ArcSwap::from_pointee(Settings::for_tests(store.clone())));
        lookup.announcements_resumed();
        tokio::spawn(maintain(Arc::clone(&lookup), settings, Arc::clone(&metrics)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(lookup.filter.excludes(&id(99)), "built and trusted");
        assert_eq!(rebuilds(&metrics, "ok"), 1);

        // The store fails when the interval comes round (270 to 330 s): the channel had no gap,
        // so the last filter still answers (with a key announced meanwhile in it), and the
        // attempts back off: 1, 2, 4, 8, 15, 15 s apart.
        store.set_failing(true);
        store.insert(id(60), KeyRecord::active("a"));
        lookup.announce(crate::lookup::Announcement::Key(id(60)));
        tokio::time::sleep(Duration::from_secs(331)).await;
        assert_eq!(rebuilds(&metrics, "ok"), 1);
        let first_failures = rebuilds(&metrics, "error");
        assert!(first_failures >= 1);
        assert!(lookup.filter.excludes(&id(99)), "a failed rebuild stopped the last view's rejections");
        assert!(!lookup.filter.excludes(&id(60)), "an announced key was lost");
        tokio::time::sleep(Duration::from_secs(60)).await;
        let failures = rebuilds(&metrics, "error") - first_failures;
        assert!((4..=7).contains(&failures), "{failures} attempts in a minute: no backoff");

        // Back: the next attempt, at most 15 s away, builds a trusted filter again, with a key
        // added meanwhile without an announcement (which the last view could not know).
        store.insert(id(50), KeyRecord::active("a"));
        assert!(lookup.filter.excludes(&id(50)));
        store.set_failing(false);
        tokio::time::sleep(Duration::from_secs(16)).await;
        assert_eq!(rebuilds(&metrics, "ok"), 2);
        assert!(lookup.filter.excludes(&id(99)) && !lookup.filter.excludes(&id(50)));
    }

    #[test]
    fn the_interval_is_spread_by_a_tenth_either_way() {
        let interval = Duration::from_secs(300);
        let waits: Vec<Duration> = (0..200).map(|_| spread(interval)).collect();
        assert!(waits.iter().all(|w| (270.0..=330.0).contains(&w.as_secs_f64())));
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*max - *min > Duration::from_secs(20), "not spread: {min:?}..{max:?}");
    }
}
