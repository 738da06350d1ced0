//! Rate limits from the outside: per key (the config's, or the record's own), and per client
//! address for requests without a usable key, charged before the store is asked.

use crate::support::http::Response;
use crate::support::{eventually, Gateway, Redis, Setup, Upstream};
use std::time::{Duration, Instant};

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

/// `requests` requests for `key`, one after the other; their answers, and the most a limit of
/// `burst` then `per_second` may let through in the time they took: the burst, what refilled
/// meanwhile, and one for rounding. Measured, not assumed: a busy machine takes longer, and
/// the limit rightly lets more through.
fn burst_of(
    gateway: &Gateway,
    key: &str,
    requests: usize,
    per_second: f64,
    burst: usize,
) -> (Vec<Response>, usize) {
    let started = Instant::now();
    let answers = (0..requests).map(|_| gateway.with_key(key)).collect();
    let refilled = (per_second * started.elapsed().as_secs_f64()).floor() as usize;
    (answers, burst + refilled + 1)
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
    // Its own rate and burst, both unlike the default's.
    redis.put_key("own-limit-key", &[("app", "acme"), ("rate", "2"), ("burst", "12")]);
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&limits("per_second: 5\n  burst: 5", "{per_second: 1000, burst: 1000}"))
        .start();
    let mut limited_seen = 0;

    let (answers, most) = burst_of(&gateway, "busy-key", 40, 5.0, 5);
    let passed = answers.iter().filter(|r| r.status == 200).count();
    assert!((5..=most).contains(&passed), "{passed} of 40 passed, where at most {most} may");
    for limited in answers.iter().filter(|r| r.status != 200) {
        assert_limited(limited);
        assert_eq!(limited.header("ratelimit-limit"), Some("5"));
        limited_seen += 1;
    }
    assert_eq!(gateway.with_key("quiet-key").status, 200, "another key is unaffected");

    let (own, most) = burst_of(&gateway, "own-limit-key", 40, 2.0, 12);
    let passed = own.iter().filter(|r| r.status == 200).count();
    assert!((12..=most).contains(&passed), "the record's burst of 12 let {passed} through, not 12 to {most}");
    for limited in own.iter().filter(|r| r.status != 200) {
        assert_limited(limited);
        assert_eq!(limited.header("ratelimit-limit"), Some("12"), "the record's own burst");
        limited_seen += 1;
    }

    let recovered = eventually(Duration::from_secs(3), || match gateway.with_key("busy-key").status {
        429 => {
            limited_seen += 1;
            false
        }
        status => status == 200,
    });
    assert!(recovered.is_some(), "the limited key never recovered");
    assert!(limited_seen >= 50);
    let series = r#"keygate_requests_total{outcome="rate_limited"}"#;
    assert_eq!(gateway.settled_metric(series, limited_seen as f64), limited_seen as f64);
}

#[test]
fn malformed_keys_from_one_address_get_401_up_to_the_burst_then_429_each_counted() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&limits("per_second: 1000\n  burst: 1000", "{per_second: 0.1, burst: 8}"))
        .extra("trusted_proxies: [127.0.0.1/32]")
        .start();
    redis.reset_stats();
    let too_long = "k".repeat(129);
    let answers: Vec<Response> = (0..30).map(|_| from(&gateway, "203.0.113.50", Some(&too_long))).collect();
    // The first 8 use up the burst; the next token is ten seconds away.
    let malformed = answers.iter().take_while(|r| r.status == 401).count();
    assert_eq!(malformed, 8, "answered 401 before the first 429");
    answers[..malformed].iter().for_each(|r| r.assert_rejected(401, "malformed_api_key"));
    let limited = answers.iter().filter(|r| r.status == 429).count();
    answers[malformed..].iter().for_each(assert_limited);
    assert_eq!(answers[malformed].header("ratelimit-limit"), Some("8"));
    assert_eq!(redis.reads(), 0, "a malformed key cost a store read");

    // A 128-character key is not malformed: it is looked up (and unknown), from another address.
    from(&gateway, "203.0.113.51", Some(&"k".repeat(128))).assert_rejected(403, "unknown_api_key");
    let series = |outcome: &str| format!("keygate_requests_total{{outcome=\"{outcome}\"}}");
    assert_eq!(gateway.settled_metric(&series("rate_limited"), limited as f64), limited as f64);
    assert_eq!(gateway.settled_metric(&series("malformed_key"), malformed as f64), malformed as f64);
    gateway.assert_no_key_in_logs(&[&too_long]);
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

#[test]
fn while_the_filter_answers_an_address_over_its_limit_gets_no_store_read_even_for_its_false_positives() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_keys((0..2000).map(|n| format!("stored-key-{n}")), "acme");
    // A filter of 4 bits per key lets a good share of junk through, as if it were a valid key.
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&limits("per_second: 1000\n  burst: 1000", "{per_second: 0.1, burst: 10}"))
        .extra("trusted_proxies: [127.0.0.1/32]\nfilter: {bits_per_key: 4}")
        .start();
    redis.reset_stats();

    let (mut unknown, mut limited) = (0, 0);
    for n in 0..400 {
        let response = from(&gateway, "198.51.100.7", Some(&format!("junk-key-{n}")));
        match response.status {
            403 => unknown += 1,
            _ => {
                assert_limited(&response);
                limited += 1;
            }
        }
    }
    assert_eq!(unknown, 10, "the address's burst");
    assert_eq!(limited, 390);
    let filtered = gateway.metric("keygate_filter_rejections_total");
    let passed_the_filter = 400.0 - filtered;
    assert!(passed_the_filter >= 40.0, "only {passed_the_filter} false positives: the test shows nothing");
    // Only false positives within the burst were read; the refused address got none after it.
    let reads = redis.reads();
    assert!(reads <= 10, "{reads} store reads for an address over its limit");
    // A valid key from another address is untouched, and from this one it waits like junk
    // would (429, which clients retry), until the address recovers.
    assert_eq!(from(&gateway, "198.51.100.8", Some("stored-key-1")).status, 200);
    assert_limited(&from(&gateway, "198.51.100.7", Some("stored-key-2")));
}

#[test]
fn the_per_ip_limiter_forgets_idle_addresses() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&limits("per_second: 1000\n  burst: 1000", "{per_second: 10, burst: 5}"))
        .extra("trusted_proxies: [127.0.0.1/32]")
        .start();
    for n in 0..50 {
        let client = format!("198.51.100.{n}");
        from(&gateway, &client, None).assert_rejected(401, "missing_api_key");
    }
    let addresses = || gateway.try_metric("keygate_ip_limiter_addresses");
    assert_eq!(addresses(), Some(50.0));
    // A tenth of a second later each is back to a full burst; the sweep runs every 10 s.
    let forgotten = eventually(Duration::from_secs(25), || addresses() == Some(0.0));
    assert!(forgotten.is_some(), "{:?} idle addresses still held", addresses());
    assert!(gateway.metrics().lines().all(|line| !line.contains("198.51.100.")), "an address in a metric");
}
