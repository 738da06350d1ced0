use super::*;
use crate::config::CacheConfig;
use crate::filter::FilterConfig;
use crate::key::ApiKey;
use crate::store::memory::MemoryStore;
use crate::store::KeyRecord;
use crate::store::KeyStore;

const TIMEOUT: Duration = Duration::from_millis(50);

/// A lookup and its settings: `store`, at most `max_inflight` queries, TIMEOUT.
#[derive(Clone)]
struct Lookup {
    lookup: Arc<KeyLookup>,
    settings: Arc<LookupSettings>,
}

fn lookup(store: Arc<MemoryStore>, max_inflight: usize) -> Lookup {
    let cache = CacheConfig::for_tests(100);
    let lookup = Arc::new(KeyLookup::new(&cache, FilterConfig::default(), Arc::new(Metrics::new())));
    let store: Arc<dyn KeyStore> = store;
    let default_rate = Rate { per_second: 100.0, burst: 100 };
    let settings =
        Arc::new(LookupSettings { store, timeout: TIMEOUT, max_inflight, default_rate, cache, fleet: None });
    Lookup { lookup, settings }
}

impl Lookup {
    fn cached(&self, id: &KeyId) -> Option<Verdict> {
        self.lookup.cached(&self.settings, id)
    }

    async fn fetch(&self, id: KeyId) -> Result<Verdict, LookupError> {
        self.lookup.fetch(&self.settings, id).await
    }

    /// The lookup with a new default rate, as after a reload.
    fn with_default_rate(&self, default_rate: Rate) -> Lookup {
        let settings = LookupSettings {
            store: Arc::clone(&self.settings.store),
            default_rate,
            cache: self.settings.cache.clone(),
            fleet: None,
            ..*self.settings
        };
        self.lookup.default_rate_changed();
        Lookup { lookup: Arc::clone(&self.lookup), settings: Arc::new(settings) }
    }
}

impl std::ops::Deref for Lookup {
    type Target = KeyLookup;

    fn deref(&self) -> &KeyLookup {
        &self.lookup
    }
}

fn id(name: &str) -> KeyId {
    ApiKey::from_cli(name).id()
}

fn is_known(v: &Result<Verdict, LookupError>) -> bool {
    matches!(v, Ok(Verdict::Known(_)))
}

fn is_unknown(v: &Result<Verdict, LookupError>) -> bool {
    matches!(v, Ok(Verdict::Unknown))
}

#[tokio::test(start_paused = true)]
async fn an_unknown_key_is_asked_for_once_per_negative_ttl() {
    let store = Arc::new(MemoryStore::default());
    let l = lookup(store.clone(), 8);
    assert!(l.cached(&id("nope")).is_none());
    assert!(is_unknown(&l.fetch(id("nope")).await));
    for _ in 0..300 {
        assert!(matches!(l.cached(&id("nope")), Some(Verdict::Unknown)));
    }
    assert_eq!(store.fetch_count(), 1);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(l.cached(&id("nope")).is_none());
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_requests_share_one_query() {
    let store = Arc::new(MemoryStore::default());
    store.insert(id("k"), KeyRecord::active("a"));
    store.set_delay(Duration::from_millis(10));
    let l = lookup(store.clone(), 8);
    let asks: Vec<_> = (0..64)
        .map(|_| {
            tokio::spawn({
                let l = l.clone();
                async move { l.fetch(id("k")).await }
            })
        })
        .collect();
    for ask in asks {
        assert!(is_known(&ask.await.unwrap()));
    }
    assert_eq!(store.fetch_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_store_error_or_timeout_is_never_cached_as_unknown() {
    let store = Arc::new(MemoryStore::default());
    store.set_failing(true);
    let l = lookup(store.clone(), 8);
    assert_eq!(l.fetch(id("k")).await.err(), Some(LookupError::Unavailable));
    assert!(l.cached(&id("k")).is_none());

    store.set_failing(false);
    store.set_delay(TIMEOUT * 2);
    assert_eq!(l.fetch(id("k")).await.err(), Some(LookupError::Unavailable));
    assert!(l.cached(&id("k")).is_none());
    assert_eq!(l.cache.unknown_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn lookups_beyond_the_bound_are_shed() {
    let store = Arc::new(MemoryStore::default());
    store.set_delay(Duration::from_millis(40));
    let l = lookup(store.clone(), 2);
    let asks: Vec<_> = (0..6)
        .map(|n| {
            tokio::spawn({
                let l = l.clone();
                async move { l.fetch(id(&format!("k{n}"))).await }
            })
        })
        .collect();
    let mut shed = 0;
    for ask in asks {
        if ask.await.unwrap().err() == Some(LookupError::Overloaded) {
            shed += 1;
        }
    }
    assert_eq!((shed, store.fetch_count()), (4, 2));
}

/// Key `k` looked up once, then past its TTL with the store failing.
async fn stale_key_k_with_the_store_down() -> (Arc<MemoryStore>, Lookup) {
    let store = Arc::new(MemoryStore::default());
    store.insert(id("k"), KeyRecord::active("a"));
    let l = lookup(store.clone(), 8);
    assert!(is_known(&l.fetch(id("k")).await));
    store.set_failing(true);
    tokio::time::advance(Duration::from_secs(301)).await;
    (store, l)
}

#[tokio::test(start_paused = true)]
async fn a_known_key_is_served_stale_while_the_store_is_down() {
    let (store, l) = stale_key_k_with_the_store_down().await;
    for _ in 0..20 {
        assert!(matches!(l.cached(&id("k")), Some(Verdict::Known(_))));
        tokio::task::yield_now().await;
    }
    // One background refresh, then it waits a second before the next.
    assert_eq!(store.fetch_count(), 2);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(l.cached(&id("k")).is_none(), "past stale_s the key is no longer vouched for");
}

#[tokio::test(start_paused = true)]
async fn a_busy_stale_key_starts_one_refresh_not_one_per_request() {
    let (store, l) = stale_key_k_with_the_store_down().await;
    // All before any refresh has run (one thread): each could have started its own.
    for _ in 0..50 {
        assert!(matches!(l.cached(&id("k")), Some(Verdict::Known(_))));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(store.fetch_count(), 2, "one fetch, then one refresh");
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..50 {
        l.cached(&id("k"));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(store.fetch_count(), 3, "a second later, one more");
}

#[tokio::test(start_paused = true)]
async fn an_announcement_during_a_query_keeps_its_answer_out_of_the_negative_cache() {
    let store = Arc::new(MemoryStore::default());
    store.set_delay(Duration::from_millis(20));
    let l = lookup(store.clone(), 8);
    let ask = tokio::spawn({
        let l = l.clone();
        async move { l.fetch(id("new")).await }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.insert(id("new"), KeyRecord::active("a"));
    l.announce(Announcement::Key(id("new")));
    assert!(is_unknown(&ask.await.unwrap()), "the query began before the key existed");
    assert!(l.cached(&id("new")).is_none(), "but its answer is not remembered");
    assert!(is_known(&l.fetch(id("new")).await));
}

#[tokio::test(start_paused = true)]
async fn a_new_default_limit_reaches_keys_that_use_it_and_spares_the_others() {
    let store = Arc::new(MemoryStore::default());
    store.insert(id("default"), KeyRecord::active("a"));
    store.insert(id("own"), KeyRecord { rate: Some(7.0), burst: Some(7), ..KeyRecord::active("a") });
    let l = lookup(store.clone(), 8);
    let grant = |name: &str| match l.cache.grant_of(&id(name)) {
        Some(g) => g,
        None => panic!("{name} not cached"),
    };
    l.fetch(id("default")).await.unwrap();
    l.fetch(id("own")).await.unwrap();
    let (before_default, before_own) = (grant("default"), grant("own"));

    let l = l.with_default_rate(Rate { per_second: 1.0, burst: 1 });
    // Served as known meanwhile, and refreshed in the background.
    assert!(matches!(l.cached(&id("default")), Some(Verdict::Known(_))));
    assert!(matches!(l.cached(&id("own")), Some(Verdict::Known(_))));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(store.fetch_count(), 4);
    assert!(!Arc::ptr_eq(&before_default, &grant("default")), "the new limit applies");
    assert!(grant("default").limiter.check().is_ok() && grant("default").limiter.check().is_err());
    assert!(Arc::ptr_eq(&before_own, &grant("own")), "an unchanged limit keeps its state");
}

#[tokio::test(start_paused = true)]
async fn the_keys_of_one_app_share_its_name() {
    let store = Arc::new(MemoryStore::default());
    store.insert(id("a"), KeyRecord::active("acme"));
    store.insert(id("b"), KeyRecord::active("acme"));
    let l = lookup(store.clone(), 8);
    let (Ok(Verdict::Known(a)), Ok(Verdict::Known(b))) = (l.fetch(id("a")).await, l.fetch(id("b")).await)
    else {
        panic!("both keys are known");
    };
    assert!(Arc::ptr_eq(&a.app, &b.app));
}
