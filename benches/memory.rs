//! Bytes per cached key: resident memory before and after filling the caches with a million
//! entries each. `cargo bench --bench memory` (part of `make bench`).

use keygate::config::{CacheConfig, Rate};
use keygate::key::ApiKey;
use keygate::testing::Grant;
use keygate::testing::KeyCache;
use keygate::testing::KeyRecord;
use std::sync::Arc;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux");
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

fn main() {
    const KEYS: usize = 1_000_000;
    let ids: Vec<_> = (0..KEYS).map(|n| ApiKey::from_cli(&format!("memory-key-{n}")).id()).collect();
    let rate = Rate { per_second: 100.0, burst: 200 };
    // The TTLs do not change what an entry costs; filling the caches takes well under them.
    let config = CacheConfig::for_tests(KEYS);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _in_runtime = runtime.enter();

    let before = resident_bytes();
    let unknown_cache = KeyCache::new(&config);
    ids.iter().for_each(|id| unknown_cache.remember_unknown(*id));
    let unknown = resident_bytes() - before;

    let before = resident_bytes();
    let cache = KeyCache::new(&config);
    // Lookups intern app names, so the keys of one app share its name, as here.
    let app: Arc<str> = "an-app-name".into();
    for id in &ids {
        let record = KeyRecord { app: Arc::clone(&app), ..KeyRecord::active("-") };
        cache.remember_known(*id, Grant::for_record(&record, rate, None));
    }
    let known = resident_bytes() - before;
    println!(
        "known keys: {:.0} bytes per cached key ({} cached)",
        known as f64 / KEYS as f64,
        cache.known_len()
    );
    println!(
        "unknown keys: {:.0} bytes per cached key ({} cached)",
        unknown as f64 / KEYS as f64,
        unknown_cache.unknown_len()
    );
}
