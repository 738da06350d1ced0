//! Rate limits from the outside: per key (the config's, or the record's own), and per client
//! address for requests without a usable key, charged before the store is asked.

mod common;

use common::http::Response;
use common::{eventually, Gateway, Redis, Setup, Upstream};
use std::time::Duration;

fn limits(per_key: &str, per_ip: &str) -> String {
    format!("rate_limit:\n  {per_key}\n  unauthenticated_per_ip: {per_ip}")
}

fn from(gateway: &Gateway, client: &str, key: Option<&str>) -> Response {
    let mut headers = vec![("X-Forwarded-For", client)];
    if let Some(key) = key {
        headers.push(("X-ApiKey", key));
    }
    gateway.get("/ingest", &headers)
}

fn assert_limited(response: &Response) {
    response.assert_rejected(429, "rate_limited");
    let retry_after = response.retry_after();
    assert!(retry_after >= 1);
    assert_eq!(response.header("ratelimit-remaining"), Some("0"));
    assert_eq!(response.header("ratelimit-reset"), Some(retry_after.to_string().as_str()));
    assert!(response.header("ratelimit-limit").is_some());
}

#[test]
fn a_key_gets_its_burst_then_429_and_recovers_after_its_window() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("busy-key", &[("app", "acme")]);
    redis.put_key("quiet-key", &[("app", "acme")]);
    redis.put_key("own-limit-key", &[("app", "acme"), ("rate", "5"), ("burst", "12")]);
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&limits("per_second: 5\n  burst: 5", "{per_second: 1000, burst: 1000}"))
        .start();

    let answers: Vec<Response> = (0..40).map(|_| gateway.with_key("busy-key")).collect();
    let passed = answers.iter().filter(|r| r.status == 200).count();
    assert!((5..=8).contains(&passed), "{passed} of 40 passed");
    for limited in answers.iter().filter(|r| r.status != 200) {
        assert_limited(limited);
        assert_eq!(limited.header("ratelimit-limit"), Some("5"));
    }
    assert_eq!(gateway.with_key("quiet-key").status, 200, "another key is unaffected");

    let own = (0..40).filter(|_| gateway.with_key("own-limit-key").status == 200).count();
    assert!((12..=15).contains(&own), "the record's burst of 12 let {own} through");

    let recovered = eventually(Duration::from_secs(3), || gateway.with_key("busy-key").status == 200);
    assert!(recovered.is_some(), "the limited key never recovered");
    let counted = eventually(Duration::from_secs(2), || {
        gateway.metric(r#"keygate_requests_total{outcome="rate_limited"}"#) >= 50.0
    });
    assert!(counted.is_some(), "rate-limited requests are counted");
}

#[test]
fn junk_from_one_address_runs_out_before_it_can_work_the_store() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&limits("per_second: 1000\n  burst: 1000", "{per_second: 0.5, burst: 10}"))
        .extra("trusted_proxies: [127.0.0.1/32]")
        .start();
    // The valid key is known (cached) before the junk starts.
    assert_eq!(from(&gateway, "198.51.100.1", Some("valid-key")).status, 200);
    redis.reset_stats();

    let answers: Vec<Response> =
        (0..40).map(|n| from(&gateway, "203.0.113.7", Some(&format!("junk-{n}")))).collect();
    let refused = answers.iter().filter(|r| r.status == 403).count();
    assert_eq!(refused, 10, "the burst of unknown keys is answered 403");
    answers.iter().filter(|r| r.status != 403).for_each(assert_limited);
    assert!(redis.reads() <= 12, "Redis served {} reads for junk", redis.reads());

    assert_eq!(from(&gateway, "203.0.113.7", Some("valid-key")).status, 200, "a known key is not charged");
    assert_limited(&from(&gateway, "203.0.113.7", None));
    assert_eq!(from(&gateway, "203.0.113.8", Some("junk-x")).status, 403, "another address is not limited");
    assert_eq!(from(&gateway, "203.0.113.8", None).status, 401);
}

#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&limits("per_second: 1000\n  burst: 1000", "{per_second: 0.5, burst: 5}"))
        .extra("trusted_proxies: []")
        .start();
    for n in 0..5 {
        assert_eq!(from(&gateway, &format!("203.0.113.{n}"), None).status, 401);
    }
    // Every forged address was charged to the real peer, 127.0.0.1.
    assert_limited(&from(&gateway, "203.0.113.99", None));
}

#[test]
fn ipv6_clients_are_charged_per_64() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&limits("per_second: 1000\n  burst: 1000", "{per_second: 0.5, burst: 3}"))
        .extra("trusted_proxies: [127.0.0.1/32]")
        .start();
    for host in ["2001:db8:0:7::1", "2001:db8:0:7::2", "2001:db8:0:7:ffff::3"] {
        assert_eq!(from(&gateway, host, None).status, 401);
    }
    assert_limited(&from(&gateway, "2001:db8:0:7::4", None));
    assert_eq!(from(&gateway, "2001:db8:0:8::1", None).status, 401, "the next /64 is someone else");
}

#[test]
fn without_the_filter_junk_is_charged_before_the_store_is_asked() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&limits("per_second: 1000\n  burst: 1000", "{per_second: 0.5, burst: 10}"))
        .extra("trusted_proxies: [127.0.0.1/32]\nfilter: {enabled: false}")
        .start();
    redis.reset_stats();
    let answers: Vec<Response> =
        (0..40).map(|n| from(&gateway, "203.0.113.7", Some(&format!("junk-{n}")))).collect();
    assert_eq!(answers.iter().filter(|r| r.status == 403).count(), 10);
    answers.iter().filter(|r| r.status != 403).for_each(assert_limited);
    assert_eq!(redis.reads(), 10, "Redis was asked past the sender's burst");
    assert_eq!(from(&gateway, "203.0.113.8", Some("valid-key")).status, 200);
}
