//! The store misbehaves (frozen, killed, restarted): known keys keep flowing, uncached keys get
//! a fast 503 with Retry-After (never 401 or 403), and all is well again once it is back.

mod common;

use common::{eventually, Redis, Setup, Upstream};
use std::time::{Duration, Instant};

/// `timeout_ms` (50) plus room for a loaded two-core machine.
const FAST_ANSWER: Duration = Duration::from_millis(400);

fn timed(gateway: &common::Gateway, key: &str) -> (common::http::Response, Duration) {
    let started = Instant::now();
    let response = gateway.with_key(key);
    (response, started.elapsed())
}

#[test]
fn a_frozen_store_keeps_known_keys_flowing_and_answers_the_rest_fast() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("known-key", &[("app", "acme")]);
    redis.put_key("uncached-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    assert_eq!(gateway.with_key("known-key").status, 200);

    redis.freeze();
    for _ in 0..20 {
        assert_eq!(gateway.with_key("known-key").status, 200);
    }
    for _ in 0..3 {
        let (response, took) = timed(&gateway, "uncached-key");
        response.assert_rejected(503, "key_store_unavailable");
        assert!(response.retry_after() >= 1);
        assert!(took < FAST_ANSWER, "answered after {took:?}");
    }
    redis.thaw();
    assert!(eventually(Duration::from_secs(3), || gateway.with_key("uncached-key").status == 200).is_some());
    assert!(gateway.settled_metric(r#"keygate_store_queries_total{result="timeout"}"#, 3.0) >= 3.0);
    assert_eq!(
        gateway.metric(r#"keygate_cache_entries{kind="negative"}"#),
        0.0,
        "no error became an unknown"
    );
    gateway.assert_no_key_in_logs(&["known-key", "uncached-key"]);
}

#[test]
fn a_killed_and_restarted_store_loses_nothing_valid_and_is_heard_again() {
    let (mut redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("known-key", &[("app", "acme")]);
    redis.put_key("uncached-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    assert_eq!(gateway.with_key("known-key").status, 200);

    redis.kill();
    for _ in 0..10 {
        assert_eq!(gateway.with_key("known-key").status, 200);
        let (response, took) = timed(&gateway, "uncached-key");
        response.assert_rejected(503, "key_store_unavailable");
        assert!(took < FAST_ANSWER, "answered after {took:?}");
    }

    redis.restart();
    redis.put_key("known-key", &[("app", "acme")]);
    redis.put_key("uncached-key", &[("app", "acme")]);
    assert!(eventually(Duration::from_secs(3), || gateway.with_key("uncached-key").status == 200).is_some());
    assert_eq!(gateway.with_key("known-key").status, 200);

    // The subscription came back by itself: a revocation is heard within a second.
    assert!(eventually(Duration::from_secs(5), || subscribers(&redis) > 0).is_some());
    redis.put_key("known-key", &[("app", "acme"), ("status", "revoked")]);
    redis.announce("known-key");
    assert!(eventually(Duration::from_secs(1), || gateway.with_key("known-key").status == 403).is_some());
    gateway.assert_no_key_in_logs(&["known-key", "uncached-key"]);
}

#[test]
fn an_unknown_key_cached_before_an_outage_is_checked_again_after_it() {
    let (mut redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    gateway.with_key("created-during-outage").assert_rejected(403, "unknown_api_key");
    redis.kill();
    redis.restart();
    // Written, and announced, while the gateway could not hear it: no announcement reaches it,
    // and the negative TTL (60 s) is far away. Only distrusting the negative cache when the
    // subscription resumes lets the key in.
    redis.put_key("created-during-outage", &[("app", "acme")]);
    let accepted =
        eventually(Duration::from_secs(3), || gateway.with_key("created-during-outage").status == 200);
    assert!(accepted.is_some(), "an announcement missed in the gap left the key unknown");
}

#[test]
fn store_errors_are_never_answered_401_or_403() {
    let (mut redis, upstream) = (Redis::start(), Upstream::start());
    for n in 0..20 {
        redis.put_key(&format!("valid-{n}"), &[("app", "acme")]);
    }
    let gateway = Setup::redis(&redis, &upstream).start();
    redis.kill();
    for n in 0..20 {
        let status = gateway.with_key(&format!("valid-{n}")).status;
        assert_eq!(status, 503, "an uncached valid key during an outage is retryable, not refused");
    }
    // Once the gateway has seen the store fail, even keys outside the filter are not refused:
    // the filter only speaks while the store does.
    for n in 0..20 {
        assert_eq!(gateway.with_key(&format!("never-written-{n}")).status, 503);
    }
}

fn subscribers(redis: &Redis) -> u64 {
    let counts: Vec<(String, u64)> =
        redis::cmd("PUBSUB").arg("NUMSUB").arg("keygate:invalidate").query(&mut redis.connection()).unwrap();
    counts.first().map_or(0, |(_, n)| *n)
}
