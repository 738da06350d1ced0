//! The request path's decision, without the network: the real `decide` the proxy and the auth
//! listener call, on a gateway built from a config over the in-memory store, for each way a
//! request ends (forwarded, unknown, missing, malformed, rate limited); then each stage alone,
//! and the membership filter. The valid key's decision and its limiter are timed twice: with
//! `rate_limit.scope: local` and `fleet`. `cargo bench --bench decision` (or `make bench`).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue};
use keygate::config::FilterConfig;
use keygate::extract::Extracted;
use keygate::key::ApiKey;
use keygate::testing::{decide, Bloom, DecisionFixture, KeyRecord, Rejection, RequestFacts, Verdict};
use std::net::IpAddr;
use std::time::Instant;

/// A gateway as `keygate -c` would build it from this file, its store swapped for memory. The
/// TTLs outlive any measurement (an expired entry would time a store read, and a stale known
/// one a refresh); the default and per-IP rates are ones no benchmark loop reaches, so only the
/// key that sets its own rate is ever limited.
const CONFIG: &str = "
listen: [127.0.0.1:1]
upstream: {peers: [127.0.0.1:2]}
store: {file: never-read.yaml}
cache: {ttl_s: 3600, negative_ttl_s: 3600}
rate_limit:
  per_second: 1000000000
  burst: 1000000000
  unauthenticated_per_ip: {per_second: 1000000000, burst: 1000000000}
";

const KNOWN: &str = "bench-known-key-0001";
const UNKNOWN: &str = "bench-unknown-key-01";
/// A key whose record allows one request a thousand seconds: every request after the first is
/// over its rate.
const LIMITED: &str = "bench-limited-key-01";

fn headers(key: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("ingest.example.com"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(key) = key {
        headers.insert("x-apikey", HeaderValue::from_str(key).unwrap());
    }
    headers
}

fn decision(c: &mut Criterion) {
    let fixture = DecisionFixture::from_yaml(CONFIG);
    fixture.insert(KNOWN, KeyRecord::active("bench"));
    fixture.insert(LIMITED, KeyRecord { rate: Some(0.001), burst: Some(1), ..KeyRecord::active("bench") });
    let (gateway, settings) = (&*fixture.gateway, fixture.settings());
    let peer: IpAddr = "203.0.113.9".parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // A cached answer may start a refresh on the runtime; none should here (see CONFIG).
    let _in_runtime = runtime.enter();

    let malformed = "k".repeat(settings.config.api_key.max_length + 1);
    let cases = [
        ("decision/cached_known_key", headers(Some(KNOWN))),
        ("decision/cached_unknown_key", headers(Some(UNKNOWN))),
        ("decision/missing_key", headers(None)),
        ("decision/malformed_key", headers(Some(&malformed))),
        ("decision/rate_limited", headers(Some(LIMITED))),
    ];
    // The first request for each key reads the store (and the limited key spends its burst);
    // every one after is answered from the cache, as measured below.
    // A request's facts as the proxy gathers them, its start time read once (as it is there).
    let facts = |headers| RequestFacts { headers, query: None, peer, now: Instant::now() };
    for (_, headers) in &cases {
        let _ = runtime.block_on(decide(gateway, &settings, &facts(headers)));
    }
    let fetches = fixture.store.fetch_count();
    for (name, headers) in &cases {
        // Decided at once (a store read would have to wait), and as the name says.
        let decided = || {
            decide(gateway, &settings, black_box(&facts(headers))).now_or_never().expect("decided at once")
        };
        let answer = decided();
        let expected = match *name {
            "decision/cached_known_key" => answer.as_ref().is_ok_and(|admitted| admitted.grant.is_enabled()),
            "decision/cached_unknown_key" => matches!(answer, Err(Rejection::UnknownKey)),
            "decision/missing_key" => matches!(answer, Err(Rejection::MissingKey)),
            "decision/malformed_key" => matches!(answer, Err(Rejection::MalformedKey)),
            "decision/rate_limited" => matches!(answer, Err(Rejection::RateLimited(_))),
            _ => unreachable!(),
        };
        assert!(expected, "{name}: {:?}", answer.err());
        c.bench_function(name, |b| b.iter(decided));
    }
    assert_eq!(fixture.store.fetch_count(), fetches, "a measured decision read the store");

    let known = &cases[0].1;
    let extractor = &settings.config.api_key;
    c.bench_function("stage/extract", |b| {
        b.iter(|| matches!(extractor.extract(black_box(known), None), Extracted::Key(_)))
    });
    let key = ApiKey::from_cli(KNOWN);
    c.bench_function("stage/key_id_sha256", |b| b.iter(|| black_box(&key).id()));
    let id = key.id();
    let cached = || gateway.lookup.cached(&settings.lookup, black_box(&id));
    c.bench_function("stage/cache_lookup", |b| b.iter(|| cached().is_some()));
    let Some(Verdict::Known(grant)) = cached() else { panic!("the known key is cached") };
    c.bench_function("stage/key_limiter", |b| b.iter(|| black_box(&grant).limiter.check().is_ok()));
    let per_ip = &settings.ip_limiter;
    c.bench_function("stage/ip_limiter", |b| b.iter(|| per_ip.check(black_box(peer)).is_ok()));

    // The same valid key on a gateway whose key limits hold for the fleet: the hot path is the
    // local limiter either way; the exchange with the other gateways runs in the background.
    let fleet = DecisionFixture::from_yaml(&format!("{CONFIG}  scope: fleet\n"));
    fleet.insert(KNOWN, KeyRecord::active("bench"));
    let fleet_settings = fleet.settings();
    let _ = runtime.block_on(decide(&fleet.gateway, &fleet_settings, &facts(known)));
    let decided = || decide(&fleet.gateway, &fleet_settings, black_box(&facts(known))).now_or_never();
    assert!(matches!(decided(), Some(Ok(_))), "the fleet key is forwarded at once");
    c.bench_function("decision/cached_known_key_fleet", |b| b.iter(decided));
    let Some(Verdict::Known(shared)) = fleet.gateway.lookup.cached(&fleet_settings.lookup, &id) else {
        panic!("the fleet key is cached")
    };
    c.bench_function("stage/key_limiter_fleet", |b| b.iter(|| black_box(&shared).limiter.check().is_ok()));
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
