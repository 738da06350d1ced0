//! Every row of the contract's answer table, seen by a client of the real gateway, and what the
//! upstream receives for a forwarded request.

mod common;

use common::http::{self, Connection};
use common::{Redis, Setup, Upstream};
use std::time::Duration;

#[test]
fn a_valid_key_is_forwarded_with_its_app_and_without_client_keygate_headers() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key-1", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();

    let response = gateway.get(
        "/ingest?x=1",
        &[
            ("X-ApiKey", "valid-key-1"),
            ("X-Keygate-App", "forged"),
            ("x-KEYGATE-Other", "1"),
            ("X-Forwarded-For", "9.9.9.9"),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), r#"{"app":"acme","bytes":0}"#);

    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/ingest?x=1");
    assert_eq!(seen[0].header_values("x-keygate-app"), ["acme"]);
    assert!(seen[0].header_values("x-keygate-other").is_empty());
    assert_eq!(seen[0].header_values("x-forwarded-for"), ["9.9.9.9, 127.0.0.1"]);
    assert_eq!(seen[0].header_values("x-apikey"), ["valid-key-1"], "forward: true passes the key on");
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="forwarded"}"#, 1.0), 1.0);
}

#[test]
fn a_missing_key_is_401() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    gateway.get("/ingest", &[]).assert_rejected(401, "missing_api_key");
    gateway.get("/ingest?other=1", &[("X-Other", "x")]).assert_rejected(401, "missing_api_key");
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="missing_key"}"#, 2.0), 2.0);
    assert_eq!(redis.reads(), 0);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn malformed_keys_are_401_and_cost_no_store_read() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    let long = "k".repeat(129);
    gateway.with_key(&long).assert_rejected(401, "malformed_api_key");
    gateway
        .get(&format!("/ingest?apikey={}", "q".repeat(10_000)), &[])
        .assert_rejected(401, "malformed_api_key");
    gateway.get("/ingest?apikey=", &[]).assert_rejected(401, "malformed_api_key");
    gateway.get("/ingest?apikey=%C3%A9t%C3%A9", &[]).assert_rejected(401, "malformed_api_key");
    gateway.get("/ingest?apikey=a%20b", &[]).assert_rejected(401, "malformed_api_key");
    gateway
        .get("/ingest", &[("X-ApiKey", "aaa"), ("X-ApiKey", "bbb")])
        .assert_rejected(401, "malformed_api_key");
    gateway.get("/ingest?apikey=a&apikey=b", &[]).assert_rejected(401, "malformed_api_key");
    let raw = b"GET /ingest HTTP/1.1\r\nHost: t\r\nX-ApiKey: caf\xc3\xa9\r\n\r\n";
    Connection::open(gateway.addr).unwrap().send_raw(raw).unwrap().assert_rejected(401, "malformed_api_key");
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="malformed_key"}"#, 8.0), 8.0);
    assert_eq!(redis.reads(), 0);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn an_unknown_key_is_403_and_a_disabled_one_too() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("revoked-key", &[("app", "acme"), ("status", "revoked")]);
    redis.put_key("expired-key", &[("app", "acme"), ("expires", "1000")]);
    redis.put_key("query-key", &[("app", "q")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    gateway.with_key("never-seen").assert_rejected(403, "unknown_api_key");
    gateway.with_key("revoked-key").assert_rejected(403, "disabled_api_key");
    gateway.with_key("expired-key").assert_rejected(403, "disabled_api_key");
    assert_eq!(gateway.get("/ingest?apikey=query%2Dkey", &[]).status, 200, "a query key is decoded once");
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="unknown_key"}"#, 1.0), 1.0);
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="disabled_key"}"#, 2.0), 2.0);
    assert_eq!(upstream.count(), 1);
}

#[test]
fn over_the_keys_rate_is_429_with_retry_after() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("limited-key", &[("app", "acme"), ("rate", "0.2"), ("burst", "3")]);
    redis.put_key("other-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream)
        .extra("rate_limit:\n  per_second: 1000\n  burst: 1000\n  unauthenticated_per_ip: {per_second: 1000, burst: 1000}")
        .start();
    let statuses: Vec<u16> = (0..5).map(|_| gateway.with_key("limited-key").status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let limited = gateway.with_key("limited-key");
    limited.assert_rejected(429, "rate_limited");
    assert!((1..=5).contains(&limited.retry_after()), "Retry-After {}", limited.retry_after());
    assert_eq!(gateway.with_key("other-key").status, 200, "another key has its own limit");
}

#[test]
fn over_the_per_ip_rate_without_a_usable_key_is_429() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("good-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream)
        .extra("rate_limit:\n  per_second: 1000\n  burst: 1000\n  unauthenticated_per_ip: {per_second: 0.1, burst: 3}")
        .start();
    // A valid key is never charged, not even its first, uncached request.
    assert_eq!(gateway.with_key("good-key").status, 200);
    let statuses: Vec<u16> = (0..6).map(|n| gateway.with_key(&format!("junk-{n}")).status).collect();
    assert_eq!(statuses, [403, 403, 403, 429, 429, 429]);
    gateway.get("/ingest", &[]).assert_rejected(429, "rate_limited");
    assert!(gateway.get("/ingest", &[]).retry_after() >= 1);
    assert!(redis.reads() <= 4, "Redis read {} times for junk", redis.reads());
    assert_eq!(gateway.with_key("good-key").status, 200, "a valid cached key is not charged");
}

#[test]
fn an_uncached_key_while_the_store_is_down_is_503_with_retry_after() {
    let (mut redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("some-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    redis.kill();
    let response = gateway.with_key("some-key");
    response.assert_rejected(503, "key_store_unavailable");
    assert!(response.retry_after() >= 1);
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="store_unavailable"}"#, 1.0), 1.0);
}

#[test]
fn store_lookups_over_max_inflight_are_503_overloaded() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    // Valid keys, none cached yet: each needs a store lookup.
    for n in 0..24 {
        redis.put_key(&format!("distinct-{n}"), &[("app", "acme")]);
    }
    let mut setup = Setup::redis(&redis, &upstream);
    setup.store = format!("  redis:\n    url: {}\n    timeout_ms: 1000\n    max_inflight: 2\n", redis.url());
    let gateway = setup.start();
    redis.freeze();
    let started = std::time::Instant::now();
    let answers: Vec<_> = (0..24)
        .map(|n| {
            let addr = gateway.addr;
            std::thread::spawn(move || {
                http::request(addr, "GET", "/ingest", &[("X-ApiKey", &format!("distinct-{n}"))], b"").unwrap()
            })
        })
        .collect();
    let answers: Vec<_> = answers.into_iter().map(|a| a.join().unwrap()).collect();
    redis.thaw();
    let overloaded = answers.iter().filter(|r| r.text().contains("overloaded")).count();
    for r in &answers {
        assert_eq!(r.status, 503);
        assert!(r.retry_after() >= 1);
    }
    assert!(overloaded >= 20, "only {overloaded} of 24 were shed");
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
}

#[test]
fn no_reachable_upstream_is_502() {
    let redis = Redis::start();
    redis.put_key("valid-key", &[("app", "acme")]);
    let dead = format!("127.0.0.1:{}", common::free_port());
    let mut setup = Setup::redis(&redis, &Upstream::start());
    setup.peers = vec![dead];
    let gateway = setup.start();
    let started = std::time::Instant::now();
    assert_eq!(gateway.with_key("valid-key").status, 502);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(common::eventually(Duration::from_secs(3), || {
        gateway.metric(r#"keygate_requests_total{outcome="upstream_error"}"#) >= 1.0
    })
    .is_some());
}

#[test]
fn a_connect_failure_is_retried_on_another_peer() {
    let redis = Redis::start();
    redis.put_key("valid-key", &[("app", "acme")]);
    let upstream = Upstream::start();
    let mut setup = Setup::redis(&redis, &upstream);
    setup.peers = vec![format!("127.0.0.1:{}", common::free_port()), upstream.addr.to_string()];
    let gateway = setup.start();
    // Before the health check marks the dead peer, round robin sends half the requests there.
    for _ in 0..6 {
        assert_eq!(gateway.with_key("valid-key").status, 200);
    }
    assert_eq!(upstream.count(), 6);
}

#[test]
fn a_rejection_keeps_the_connection_open_after_reading_the_body() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    let mut connection = Connection::open(gateway.addr).unwrap();
    let body = vec![b'x'; 4096];
    for _ in 0..3 {
        connection
            .request("POST", "/ingest", &[("X-ApiKey", "unknown-key")], &body)
            .unwrap()
            .assert_rejected(403, "unknown_api_key");
    }
    let forwarded =
        connection.request("POST", "/ingest", &[("X-ApiKey", "valid-key")], b"{\"e\":1}").unwrap();
    assert_eq!(forwarded.status, 200);
    assert_eq!(upstream.received()[0].body, b"{\"e\":1}");
    assert_eq!(upstream.count(), 1, "no rejected body was smuggled upstream");

    // A body past the bound is not waited for: the answer comes, then the connection closes.
    let mut connection = Connection::open(gateway.addr).unwrap();
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: t\r\nX-ApiKey: unknown-key\r\nContent-Length: {}\r\n\r\n",
        huge.len()
    );
    connection.send_raw(head.as_bytes()).unwrap().assert_rejected(403, "unknown_api_key");
    assert!(connection.is_closed());
}

#[test]
fn the_metrics_endpoint_counts_what_happened() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    for _ in 0..3 {
        gateway.with_key("valid-key");
        gateway.with_key("unknown-key");
    }
    let m = |s: &str| gateway.metric(s);
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="forwarded"}"#, 3.0), 3.0);
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="unknown_key"}"#, 3.0), 3.0);
    // The unknown key never reaches the store: the membership filter answers for it.
    assert_eq!(m(r#"keygate_cache_lookups_total{result="miss"}"#), 4.0);
    assert_eq!(m(r#"keygate_cache_lookups_total{result="hit"}"#), 2.0);
    assert_eq!(m("keygate_filter_rejections_total"), 3.0);
    assert_eq!(m(r#"keygate_store_queries_total{result="found"}"#), 1.0);
    assert_eq!(m(r#"keygate_store_queries_total{result="not_found"}"#), 0.0);
    assert_eq!(m("keygate_store_query_seconds_count"), 1.0);
    assert_eq!(m(r#"keygate_cache_entries{kind="positive"}"#), 1.0);
    assert_eq!(m("keygate_filter_keys"), 1.0);
    assert_eq!(m("keygate_filter_trusted"), 1.0);
    assert!(m(r#"keygate_filter_rebuilds_total{result="ok"}"#) >= 1.0);
    assert_eq!(m(&format!("keygate_upstream_healthy{{peer=\"{}\"}}", upstream.addr)), 1.0);
    assert_eq!(m(r#"keygate_request_seconds_count{outcome="forwarded"}"#), 3.0);
    assert_eq!(m(r#"keygate_config_reloads_total{result="error"}"#), 0.0);
    assert!(gateway.metrics().contains("keygate_config_reloads_total"));
    let metrics = gateway.metrics();
    assert!(!metrics.contains("valid-key") && !metrics.contains("unknown-key"));

    assert_eq!(http::get(gateway.admin, "/healthz").unwrap().status, 200);
    assert_eq!(http::get(gateway.admin, "/readyz").unwrap().status, 200);
}

#[test]
fn readiness_follows_the_store() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    assert_eq!(http::get(gateway.admin, "/readyz").unwrap().status, 200);
    redis.freeze();
    let not_ready = http::get(gateway.admin, "/readyz").unwrap();
    redis.thaw();
    assert_eq!(not_ready.status, 503, "{}", not_ready.text());
    assert_eq!(http::get(gateway.admin, "/healthz").unwrap().status, 200);
}

#[test]
fn the_file_store_serves_keys_by_key_or_by_id() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let id = keygate::key::ApiKey::from_cli("hidden-key").id().to_hex();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&keys, format!("keys:\n  - key: file-key\n    app: filed\n  - id: {id}\n    app: by-id\n  - key: off-key\n    app: x\n    status: revoked\n")).unwrap();
    let setup = Setup::file(&keys, &upstream);
    let gateway = setup.start();
    assert_eq!(gateway.with_key("file-key").text(), r#"{"app":"filed","bytes":0}"#);
    assert_eq!(gateway.with_key("hidden-key").text(), r#"{"app":"by-id","bytes":0}"#);
    gateway.with_key("off-key").assert_rejected(403, "disabled_api_key");
    gateway.with_key("nope").assert_rejected(403, "unknown_api_key");
    gateway.get("/", &[]).assert_rejected(401, "missing_api_key");
    assert_eq!(http::get(gateway.admin, "/readyz").unwrap().status, 200);
    gateway.assert_no_key_in_logs(&["file-key", "hidden-key", "off-key"]);
}
