//! The store is asked as little as the README's guarantees allow: once per unknown key per negative TTL,
//! once for many concurrent first requests, and again only when an announcement says so.

use crate::support::http;
use crate::support::{eventually, Redis, Setup, Upstream};
use std::time::Duration;

#[test]
fn three_hundred_repeats_of_one_unknown_key_cost_one_read() {
    // The negative cache alone, with the membership filter off.
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).extra("filter: {enabled: false}").start();
    redis.reset_stats();
    for _ in 0..300 {
        gateway.with_key("bogus-key").assert_rejected(403, "unknown_api_key");
    }
    assert_eq!(redis.reads(), 1, "Redis served {} reads", redis.reads());
    assert_eq!(gateway.metric(r#"keygate_cache_lookups_total{result="negative_hit"}"#), 299.0);
    assert_eq!(gateway.metric(r#"keygate_cache_lookups_total{result="miss"}"#), 1.0);
    assert_eq!(gateway.metric(r#"keygate_store_queries_total{result="not_found"}"#), 1.0);
    assert_eq!(gateway.metric(r#"keygate_cache_entries{kind="negative"}"#), 1.0);
    assert_eq!(gateway.metric(r#"keygate_cache_entries{kind="positive"}"#), 0.0);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn with_the_filter_an_unknown_key_costs_no_read_at_all() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    redis.reset_stats();
    for _ in 0..300 {
        gateway.with_key("bogus-key").assert_rejected(403, "unknown_api_key");
    }
    assert_eq!(redis.reads(), 0, "Redis served {} reads", redis.reads());
    assert_eq!(gateway.with_key("valid-key").status, 200);
}

#[test]
fn sixty_four_concurrent_first_requests_cost_one_read() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("popular-key", &[("app", "acme")]);
    redis.put_key("second-key", &[("app", "acme")]);
    let mut setup = Setup::redis(&redis, &upstream);
    // Generous, so the one lookup outlives the wait for all 64 requests on a loaded machine:
    // every one of them must then be answered 200.
    setup.store = format!("  redis:\n    url: {}\n    timeout_ms: 5000\n", redis.url());
    let gateway = setup.start();
    redis.reset_stats();
    // Redis is frozen until all 64 requests have missed the cache: they are then truly
    // concurrent, every one waiting on the one lookup when it thaws.
    redis.freeze();
    let mut setup = Vec::new();
    for _ in 0..64 {
        let addr = gateway.addr;
        setup.push(std::thread::spawn(move || {
            http::request(addr, "GET", "/ingest", &[("X-ApiKey", "popular-key")], b"").unwrap().status
        }));
    }
    let all_waiting = eventually(Duration::from_secs(4), || {
        gateway.try_metric(r#"keygate_cache_lookups_total{result="miss"}"#).is_some_and(|n| n >= 64.0)
    });
    let in_flight = gateway.metric("keygate_store_lookups_in_flight");
    redis.thaw();
    assert!(all_waiting.is_some(), "not all 64 requests reached the lookup while Redis was frozen");
    assert_eq!(in_flight, 1.0, "64 requests for one key, lookups in flight");
    let statuses: Vec<u16> = setup.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(redis.reads(), 1, "Redis served {} reads", redis.reads());
    assert_eq!(gateway.metric(r#"keygate_store_queries_total{result="found"}"#), 1.0);
    assert_eq!(gateway.metric(r#"keygate_cache_lookups_total{result="miss"}"#), 64.0);
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="forwarded"}"#, 64.0), 64.0);

    // And with Redis answering at once.
    redis.reset_stats();
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let addr = gateway.addr;
            std::thread::spawn(move || {
                http::request(addr, "GET", "/", &[("X-ApiKey", "second-key")], b"").unwrap().status
            })
        })
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap() == 200));
    assert_eq!(redis.reads(), 1, "Redis served {} reads", redis.reads());
    assert_eq!(gateway.metric(r#"keygate_store_queries_total{result="found"}"#), 2.0);
    assert_eq!(upstream.count(), 128);
}

#[test]
fn a_revoked_key_is_refused_within_a_second_of_its_announcement() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("soon-revoked", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    assert_eq!(gateway.with_key("soon-revoked").status, 200);
    wait_subscribed(&redis);
    redis.put_key("soon-revoked", &[("app", "acme"), ("status", "revoked")]);
    assert_eq!(gateway.with_key("soon-revoked").status, 200, "cached until announced");
    redis.announce("soon-revoked");
    let took = eventually(Duration::from_secs(1), || gateway.with_key("soon-revoked").status == 403);
    assert!(took.is_some(), "still accepted a second after the announcement");
    gateway.with_key("soon-revoked").assert_rejected(403, "disabled_api_key");
}

#[test]
fn a_key_created_after_being_cached_unknown_is_accepted_within_a_second() {
    // The negative cache alone, with the membership filter off: the first answer is a store
    // "not found", remembered, and only the announcement makes the gateway ask again.
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).extra("filter: {enabled: false}").start();
    gateway.with_key("late-key").assert_rejected(403, "unknown_api_key");
    assert_eq!(gateway.metric(r#"keygate_cache_entries{kind="negative"}"#), 1.0, "not cached unknown");
    assert_eq!(gateway.metric(r#"keygate_store_queries_total{result="not_found"}"#), 1.0);
    wait_subscribed(&redis);
    redis.put_key("late-key", &[("app", "acme")]);
    redis.reset_stats();
    gateway.with_key("late-key").assert_rejected(403, "unknown_api_key");
    assert_eq!(redis.reads(), 0, "the unknown answer did not come from the negative cache");
    assert_eq!(gateway.metric(r#"keygate_cache_lookups_total{result="negative_hit"}"#), 1.0);
    redis.announce("late-key");
    let took = eventually(Duration::from_secs(1), || gateway.with_key("late-key").status == 200);
    assert!(took.is_some(), "still unknown a second after the announcement");
    assert_eq!(gateway.metric(r#"keygate_cache_entries{kind="negative"}"#), 0.0);
    assert_eq!(gateway.metric(r#"keygate_cache_entries{kind="positive"}"#), 1.0);
}

#[test]
fn a_key_created_after_the_filter_refused_it_is_accepted_within_a_second() {
    // With the filter on, the first "unknown" is the filter's (no store read, nothing cached):
    // the announcement must add the id to the filter.
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    redis.reset_stats();
    gateway.with_key("late-key").assert_rejected(403, "unknown_api_key");
    assert_eq!(redis.reads(), 0);
    assert_eq!(gateway.metric("keygate_filter_rejections_total"), 1.0);
    wait_subscribed(&redis);
    redis.put_key("late-key", &[("app", "acme")]);
    gateway.with_key("late-key").assert_rejected(403, "unknown_api_key");
    redis.announce("late-key");
    let took = eventually(Duration::from_secs(1), || gateway.with_key("late-key").status == 200);
    assert!(took.is_some(), "still unknown a second after the announcement");
}

#[test]
fn an_announcement_of_everything_forgets_everything() {
    // Filter off: key-b's "unknown" is a negative cache entry, which `*` must forget too.
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("key-a", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).extra("filter: {enabled: false}").start();
    assert_eq!(gateway.with_key("key-a").status, 200);
    gateway.with_key("key-b").assert_rejected(403, "unknown_api_key");
    assert_eq!(gateway.metric(r#"keygate_cache_entries{kind="positive"}"#), 1.0);
    assert_eq!(gateway.metric(r#"keygate_cache_entries{kind="negative"}"#), 1.0, "key-b not cached unknown");
    wait_subscribed(&redis);
    redis.put_key("key-a", &[("app", "acme"), ("status", "revoked")]);
    redis.put_key("key-b", &[("app", "acme")]);
    redis.reset_stats();
    assert_eq!(gateway.with_key("key-a").status, 200, "cached until announced");
    gateway.with_key("key-b").assert_rejected(403, "unknown_api_key");
    assert_eq!(redis.reads(), 0, "the answers did not come from the cache");
    publish_everything(&redis);
    assert!(eventually(Duration::from_secs(1), || gateway.with_key("key-a").status == 403).is_some());
    gateway.with_key("key-a").assert_rejected(403, "disabled_api_key");
    assert_eq!(gateway.with_key("key-b").status, 200);
}

#[test]
fn an_announcement_of_everything_also_reaches_the_filter() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("key-a", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    assert_eq!(gateway.with_key("key-a").status, 200);
    gateway.with_key("key-b").assert_rejected(403, "unknown_api_key");
    assert_eq!(gateway.metric("keygate_filter_rejections_total"), 1.0, "key-b was refused by the filter");
    wait_subscribed(&redis);
    redis.put_key("key-a", &[("app", "acme"), ("status", "revoked")]);
    redis.put_key("key-b", &[("app", "acme")]);
    publish_everything(&redis);
    assert!(eventually(Duration::from_secs(1), || gateway.with_key("key-a").status == 403).is_some());
    assert_eq!(gateway.with_key("key-b").status, 200);
}

fn publish_everything(redis: &Redis) {
    let _: () =
        redis::cmd("PUBLISH").arg("keygate:invalidate").arg("*").query(&mut redis.connection()).unwrap();
}

/// Waits until the gateway's subscription to the invalidation channel is in place.
pub fn wait_subscribed(redis: &Redis) {
    let subscribed = eventually(Duration::from_secs(5), || {
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("keygate:invalidate")
            .query(&mut redis.connection())
            .unwrap();
        counts.first().is_some_and(|(_, n)| *n > 0)
    });
    assert!(subscribed.is_some(), "the gateway never subscribed to keygate:invalidate");
}
