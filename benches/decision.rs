//! The request path's decision, without the network: extract the key, hash it to its id, ask
//! the cache, check the limiter; then each stage alone, and the membership filter. The decision
//! and the key's limiter are timed twice: with `rate_limit.scope: local` and `fleet`.
//! `cargo bench --bench decision` (or `make bench`).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use keygate::config::FilterConfig;
use keygate::config::{CacheConfig, LimitScope, Rate};
use keygate::extract::{Extracted, KeyExtractor, KeySource};
use keygate::key::ApiKey;
use keygate::testing::{
    Bloom, Fleet, FleetLimits, IpLimiter, KeyLookup, KeyRecord, LookupSettings, MemoryStore, Metrics, Verdict,
};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The lookup and the settings it runs under.
struct Lookup {
    lookup: Arc<KeyLookup>,
    settings: Arc<LookupSettings>,
}

impl Lookup {
    fn cached(&self, id: &keygate::key::KeyId) -> Option<Verdict> {
        self.lookup.cached(&self.settings, id)
    }
}

fn setup(scope: LimitScope) -> (KeyExtractor, Lookup) {
    let extractor = KeyExtractor {
        sources: vec![
            KeySource::Header(HeaderName::from_static("x-apikey")),
            KeySource::Query("apikey".into()),
        ],
        max_length: 128,
        forward: true,
    };
    let store = Arc::new(MemoryStore::default());
    store.insert(ApiKey::from_cli("bench-known-key-0001").id(), KeyRecord::active("bench"));
    // Both entries outlive any measurement: an expired unknown entry would time a miss, and a
    // stale known one would start a refresh outside the runtime.
    let hour = Duration::from_secs(3600);
    let cache = CacheConfig { ttl: hour, negative_ttl: hour, ..CacheConfig::for_tests(100_000) };
    // A rate no benchmark loop reaches, so every check is the allowed path.
    let default_rate = Rate { per_second: 1e9, burst: 1_000_000_000 };
    let lookup = Arc::new(KeyLookup::new(&cache, FilterConfig::default(), Arc::new(Metrics::new())));
    let settings = Arc::new(LookupSettings {
        store,
        timeout: Duration::from_secs(1),
        max_inflight: 64,
        default_rate,
        cache,
        fleet: Some(FleetLimits { fleet: Arc::new(Fleet::new()), scope }),
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        lookup.fetch(&settings, ApiKey::from_cli("bench-known-key-0001").id()).await.unwrap();
        lookup.fetch(&settings, ApiKey::from_cli("bench-unknown-key-01").id()).await.unwrap();
    });
    (extractor, Lookup { lookup, settings })
}

/// The whole decision for one request's headers; true when it would be forwarded.
fn decide(extractor: &KeyExtractor, lookup: &Lookup, headers: &HeaderMap) -> bool {
    let Extracted::Key(key) = extractor.extract(headers, None) else { return false };
    match lookup.cached(&key.id()) {
        Some(Verdict::Known(grant)) => grant.is_enabled() && grant.limiter.check().is_ok(),
        _ => false,
    }
}

fn headers(key: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("ingest.example.com"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-apikey", HeaderValue::from_static(key));
    headers
}

fn decision(c: &mut Criterion) {
    let (extractor, lookup) = setup(LimitScope::Local);
    let (_, fleet_lookup) = setup(LimitScope::Fleet);
    let known = headers("bench-known-key-0001");
    let unknown = headers("bench-unknown-key-01");
    assert!(decide(&extractor, &lookup, &known));
    assert!(decide(&extractor, &fleet_lookup, &known));
    assert!(!decide(&extractor, &lookup, &unknown));
    c.bench_function("decision/cached_known_key", |b| {
        b.iter(|| decide(&extractor, &lookup, black_box(&known)))
    });
    c.bench_function("decision/cached_known_key_fleet", |b| {
        b.iter(|| decide(&extractor, &fleet_lookup, black_box(&known)))
    });
    c.bench_function("decision/cached_unknown_key", |b| {
        b.iter(|| decide(&extractor, &lookup, black_box(&unknown)))
    });
    c.bench_function("stage/extract", |b| {
        b.iter(|| matches!(extractor.extract(black_box(&known), None), Extracted::Key(_)))
    });
    let key = ApiKey::from_cli("bench-known-key-0001");
    c.bench_function("stage/key_id_sha256", |b| b.iter(|| black_box(&key).id()));
    let id = key.id();
    c.bench_function("stage/cache_lookup", |b| b.iter(|| lookup.cached(black_box(&id)).is_some()));
    let Some(Verdict::Known(grant)) = lookup.cached(&id) else { panic!("the known key is cached") };
    c.bench_function("stage/key_limiter", |b| b.iter(|| black_box(&grant).limiter.check().is_ok()));
    let Some(Verdict::Known(shared)) = fleet_lookup.cached(&id) else { panic!("the known key is cached") };
    c.bench_function("stage/key_limiter_fleet", |b| b.iter(|| black_box(&shared).limiter.check().is_ok()));
    let per_ip = IpLimiter::new(Rate { per_second: 1e9, burst: 1_000_000_000 }, 1_000_000);
    let client: IpAddr = "203.0.113.9".parse().unwrap();
    c.bench_function("stage/ip_limiter", |b| b.iter(|| per_ip.check(black_box(client)).is_ok()));
}

/// The membership filter at a million keys: a lookup, present and absent, and its size.
fn filter(c: &mut Criterion) {
    let keys = 1_000_000;
    let ids: Vec<_> = (0..keys * 2).map(|n| ApiKey::from_cli(&format!("filter-key-{n}")).id()).collect();
    // The trade `filter.bits_per_key` offers, then the default's lookups timed.
    for bits_per_key in [8, 12, 16, 25] {
        let bloom = Bloom::new(keys, bits_per_key);
        ids[..keys].iter().for_each(|id| bloom.insert(id));
        let false_positives = ids[keys..].iter().filter(|id| bloom.contains(id)).count();
        eprintln!(
            "filter at {keys} keys, bits_per_key {bits_per_key}: {:.2} bytes per key, false-positive rate {:.3}%",
            bloom.bytes() as f64 / keys as f64,
            false_positives as f64 * 100.0 / keys as f64
        );
    }
    let bloom = Bloom::new(keys, FilterConfig::default().bits_per_key);
    ids[..keys].iter().for_each(|id| bloom.insert(id));
    let mut n = 0;
    c.bench_function("filter/contains_present", |b| {
        b.iter(|| {
            n = (n + 7919) % keys;
            bloom.contains(black_box(&ids[n]))
        })
    });
    c.bench_function("filter/contains_absent", |b| {
        b.iter(|| {
            n = (n + 7919) % keys;
            bloom.contains(black_box(&ids[keys + n]))
        })
    });
}

criterion_group!(benches, decision, filter);
criterion_main!(benches);
