//! Bytes per cached key: resident memory before and after filling the caches with a million
//! entries each; then the per-IP limiter through three floods of new addresses, each twice its
//! bound: bytes per held address, and resident memory after each flood and its sweep.
//! `cargo bench --bench memory` (part of `make bench`). Same allocator as the binary (mimalloc,
//! without transparent huge pages), so the bytes per key are the shipped binary's.

use keygate::config::{CacheConfig, Rate};
use keygate::key::ApiKey;
use keygate::testing::Grant;
use keygate::testing::KeyCache;
use keygate::testing::{IpLimiter, KeyRecord};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux");
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

fn main() {
    const KEYS: usize = 1_000_000;
    let allocator =
        if cfg!(feature = "mimalloc") { "mimalloc, as the keygate binary" } else { "the system's" };
    println!("allocator: {allocator}");
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
    per_ip_limiter();
}

/// Three floods of 2 million new addresses against a bound of 1 million, each followed by the
/// sweep that runs every 10 s (the addresses are idle by then: a millisecond's rate, burst 1).
fn per_ip_limiter() {
    const BOUND: usize = 1_000_000;
    let limiter = IpLimiter::new(Rate { per_second: 1000.0, burst: 1 }, BOUND);
    let idle = resident_bytes();
    for flood in 0..3u32 {
        for n in 0..2 * BOUND as u32 {
            let _ = limiter.check(IpAddr::from((flood * 2 * BOUND as u32 + n).to_be_bytes()));
        }
        let (peak, held) = (resident_bytes(), limiter.addresses());
        std::thread::sleep(Duration::from_millis(10));
        limiter.forget_idle();
        // mimalloc hands freed memory back to the system a moment later, on a later call: as
        // a gateway's next requests would make.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(50));
            (0..1000).for_each(|_| drop(Vec::<u8>::with_capacity(4096)));
        }
        let after = resident_bytes();
        println!(
            "per-IP limiter, flood {}: {held} addresses held (bound {BOUND}), {:.0} bytes per held address, \
             RSS +{:.1} MiB at the peak, +{:.1} MiB after the sweep, {} forgotten early so far",
            flood + 1,
            (peak - idle) as f64 / held as f64,
            (peak - idle) as f64 / 1048576.0,
            after.saturating_sub(idle) as f64 / 1048576.0,
            limiter.forgotten_early()
        );
    }
}
