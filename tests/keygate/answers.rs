//! Every row of the README's answer table, seen by a client of the real gateway, and what the
//! upstream receives for a forwarded request.

use crate::support::http::{self, Connection};
use crate::support::{self, Redis, Setup, Upstream};
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
    // A long store timeout: the shed answers must come back long before it.
    setup.store = format!("  redis:\n    url: {}\n    timeout_ms: 5000\n    max_inflight: 2\n", redis.url());
    let gateway = setup.start();
    redis.freeze();
    let send = |n: usize| {
        let addr = gateway.addr;
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let response =
                http::request(addr, "GET", "/ingest", &[("X-ApiKey", &format!("distinct-{n}"))], b"")
                    .unwrap();
            (response, started.elapsed())
        })
    };
    // Two lookups take both permits and hang on the frozen store; only then come the others,
    // so which requests are shed is not left to the scheduler.
    let first: Vec<_> = (0..2).map(send).collect();
    let holding = support::eventually(Duration::from_millis(3000), || {
        gateway.try_metric("keygate_store_lookups_in_flight") == Some(2.0)
    });
    assert!(holding.is_some(), "two lookups never were in flight at once");
    let rest: Vec<_> = (2..24).map(send).collect();
    let rest: Vec<_> = rest.into_iter().map(|a| a.join().unwrap()).collect();
    let first: Vec<_> = first.into_iter().map(|a| a.join().unwrap()).collect();
    redis.thaw();
    for (r, took) in &first {
        r.assert_rejected(503, "key_store_unavailable");
        assert_eq!(r.retry_after(), 1);
        assert!(*took >= Duration::from_millis(4900), "the store timeout was not waited out: {took:?}");
    }
    for (r, took) in &rest {
        r.assert_rejected(503, "overloaded");
        assert_eq!(r.retry_after(), 1);
        assert!(*took < Duration::from_millis(1500), "a shed lookup waited {took:?}");
    }
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="overloaded"}"#, 22.0), 22.0);
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="store_unavailable"}"#, 2.0), 2.0);
    assert_eq!(gateway.metric(r#"keygate_store_queries_total{result="timeout"}"#), 2.0);
    assert_eq!(
        gateway.metric(r#"keygate_cache_entries{kind="negative"}"#),
        0.0,
        "a shed lookup became an unknown"
    );
    assert_eq!(upstream.count(), 0);
}

#[test]
fn no_reachable_upstream_is_502() {
    let redis = Redis::start();
    redis.put_key("valid-key", &[("app", "acme")]);
    let dead = format!("127.0.0.1:{}", support::free_port());
    let mut setup = Setup::redis(&redis, &Upstream::start());
    setup.peers = vec![dead];
    let gateway = setup.start();
    let started = std::time::Instant::now();
    assert_eq!(gateway.with_key("valid-key").status, 502);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(support::eventually(Duration::from_secs(3), || {
        gateway.try_metric(r#"keygate_requests_total{outcome="upstream_error"}"#).is_some_and(|n| n >= 1.0)
    })
    .is_some());
}

#[test]
fn a_connect_failure_is_retried_on_another_peer() {
    let redis = Redis::start();
    redis.put_key("valid-key", &[("app", "acme")]);
    let (doomed, survivor) = (Upstream::start(), Upstream::start());
    let mut setup = Setup::redis(&redis, &survivor).health_interval_ms(60_000);
    setup.peers = vec![doomed.addr.to_string(), survivor.addr.to_string()];
    let gateway = setup.start();
    let healthy = |peer: std::net::SocketAddr| {
        gateway.try_metric(&format!("keygate_upstream_healthy{{peer=\"{peer}\"}}"))
    };
    let both = support::eventually(Duration::from_secs(5), || {
        healthy(doomed.addr) == Some(1.0) && healthy(survivor.addr) == Some(1.0)
    });
    assert!(both.is_some(), "both peers never showed healthy");

    // The peer dies between two health checks (a minute apart): the balancer still believes
    // it healthy, so round robin picks it, and only the retry on a connect failure
    // (proxy.rs fail_to_connect) turns that into a 200.
    doomed.kill();
    let refused =
        support::eventually(Duration::from_secs(5), || std::net::TcpStream::connect(doomed.addr).is_err());
    assert!(refused.is_some(), "the killed upstream still accepts connections");
    assert_eq!(
        healthy(doomed.addr),
        Some(1.0),
        "the dead peer must still be marked healthy, or no retry is tested"
    );
    let started = std::time::Instant::now();
    for n in 0..6 {
        let response = gateway.with_key("valid-key");
        assert_eq!(response.status, 200, "request {n}: {}", response.text());
    }
    let took = started.elapsed();
    assert_eq!(survivor.count(), 6);
    assert_eq!(doomed.count(), 0);
    assert_eq!(healthy(doomed.addr), Some(1.0), "no health check ran meanwhile");
    // Proof the retry path ran: Pingora warns of each failed try it retries.
    let retried = gateway
        .logs()
        .lines()
        .filter(|l| l.contains(&doomed.addr.to_string()) && l.contains("retry: true"))
        .count();
    assert!(retried >= 1, "no request was sent to the dead peer first:\n{}", gateway.logs());
    // After a failed connect the dead peer is passed over for a second, so round robin does
    // not send every other request to it first: once a second at most.
    let seconds = took.as_secs() as usize;
    assert!(retried <= 2 + seconds, "{retried} requests in {took:?} tried the dead peer first");
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="forwarded"}"#, 6.0), 6.0);
}

#[test]
fn a_rejection_keeps_the_connection_open_after_reading_the_body() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    gateway.uses_key("unknown-key");
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
fn a_rejected_body_that_never_comes_is_waited_for_only_up_to_the_drain_bound() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    gateway.uses_key("unknown-key");
    for (key, status, code) in [(None, 401, "missing_api_key"), (Some("unknown-key"), 403, "unknown_api_key")]
    {
        let mut connection = Connection::open(gateway.addr).unwrap();
        let key_header = key.map_or(String::new(), |k| format!("X-ApiKey: {k}\r\n"));
        // 100 bytes declared, well under the drain's size bound, and none of them ever sent.
        let head = format!("POST /ingest HTTP/1.1\r\nHost: t\r\n{key_header}Content-Length: 100\r\n\r\n");
        let started = std::time::Instant::now();
        let response = connection.send_raw(head.as_bytes()).unwrap();
        let took = started.elapsed();
        response.assert_rejected(status, code);
        // It waited for the body (src/answer.rs: 1 s), then gave up on it rather than hang.
        assert!(took >= Duration::from_millis(900), "answered after {took:?}, without waiting for the body");
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        let closed = support::eventually(Duration::from_secs(5), || connection.is_closed());
        assert!(closed.is_some(), "the connection stayed open with its body unread");
    }
    assert_eq!(upstream.count(), 0);
}

#[test]
fn a_rejected_body_sent_after_its_header_is_read_and_the_connection_kept() {
    use std::io::Write;
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    gateway.uses_key("unknown-key");
    let mut connection = Connection::open(gateway.addr).unwrap();
    for _ in 0..2 {
        let head = "POST /ingest HTTP/1.1\r\nHost: t\r\nX-ApiKey: unknown-key\r\nContent-Length: 10\r\n\r\n";
        connection.stream().write_all(head.as_bytes()).unwrap();
        // Long enough for the gateway to have decided and found the body not there yet.
        std::thread::sleep(Duration::from_millis(300));
        connection.stream().write_all(b"0123456789").unwrap();
        let response = connection.read_response().unwrap();
        response.assert_rejected(403, "unknown_api_key");
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
    assert!(!connection.is_closed(), "the connection was closed though its body came in time");
    assert_eq!(upstream.count(), 0);
}

/// The header fields of each kind of rejection as they are written (names in their case, in
/// order), so that building them another way cannot change what a client reads.
#[test]
fn each_kind_of_rejection_writes_the_same_header_fields() {
    let names = |response: &http::Response| -> Vec<String> {
        response.headers.iter().map(|(name, _)| name.clone()).collect()
    };
    let plain = ["Content-Type", "Content-Length", "Date", "Connection"];
    let (mut redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("some-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream)
        .extra("rate_limit:\n  per_second: 1000\n  burst: 1000\n  unauthenticated_per_ip: {per_second: 0.1, burst: 2}")
        .start();
    let unknown = gateway.with_key("unknown-key");
    unknown.assert_rejected(403, "unknown_api_key");
    assert_eq!(names(&unknown), plain);
    assert_eq!(unknown.header("content-length"), Some("27"));
    let missing = gateway.get("/ingest", &[]);
    missing.assert_rejected(401, "missing_api_key");
    assert_eq!(names(&missing), plain);
    let limited = gateway.get("/ingest", &[]);
    limited.assert_rejected(429, "rate_limited");
    let expected = [
        "Content-Type",
        "Content-Length",
        "Retry-After",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "Date",
        "Connection",
    ];
    assert_eq!(names(&limited), expected);
    assert_eq!(limited.header("ratelimit-limit"), Some("2"));
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("ratelimit-reset"), Some(limited.retry_after().to_string().as_str()));
    assert!((1..=10).contains(&limited.retry_after()), "Retry-After {}", limited.retry_after());
    assert_eq!(limited.header("content-length"), Some("24"));

    let other = Setup::redis(&redis, &upstream).start();
    redis.kill();
    let unavailable = other.with_key("some-key");
    unavailable.assert_rejected(503, "key_store_unavailable");
    assert_eq!(names(&unavailable), ["Content-Type", "Content-Length", "Retry-After", "Date", "Connection"]);
    assert_eq!(unavailable.header("retry-after"), Some("1"));
    assert_eq!(unavailable.header("content-length"), Some("33"));
}

#[test]
fn a_request_body_is_streamed_to_the_upstream_not_buffered() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let redis = Redis::start();
    redis.put_key("valid-key", &[("app", "acme")]);
    // A raw upstream that keeps every byte of each request as it arrives, and answers once the
    // declared body is in.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = listener.local_addr().unwrap();
    let arrived = Arc::new(Mutex::new(Vec::<u8>::new()));
    {
        let arrived = Arc::clone(&arrived);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let arrived = Arc::clone(&arrived);
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        seen.extend_from_slice(&buf[..n]);
                        arrived.lock().unwrap().extend_from_slice(&buf[..n]);
                        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if seen.len() >= end + 4 + length {
                            let reply = format!(r#"{{"bytes":{length}}}"#);
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                                reply.len()
                            );
                            let _ = stream.write_all(answer.as_bytes());
                            return;
                        }
                    }
                });
            }
        });
    }
    let mut setup = Setup::redis(&redis, &Upstream::start());
    setup.peers = vec![peer.to_string()];
    let gateway = setup.start();

    let mut connection = Connection::open(gateway.addr).unwrap();
    let head = "POST /ingest HTTP/1.1\r\nHost: t\r\nX-ApiKey: valid-key\r\nContent-Length: 20\r\n\r\n";
    connection.stream().write_all(head.as_bytes()).unwrap();
    connection.stream().write_all(b"first-half").unwrap();
    // The rest is held back until the upstream has the head and the first half: a gateway that
    // buffered the body would forward nothing before it is whole, and this would time out.
    let got_first_half = support::eventually(Duration::from_secs(5), || {
        let arrived = arrived.lock().unwrap();
        let text = String::from_utf8_lossy(&arrived).to_ascii_lowercase();
        text.starts_with("post /ingest ")
            && text.contains("\r\nx-keygate-app: acme\r\n")
            && text.ends_with("\r\n\r\nfirst-half")
    });
    assert!(
        got_first_half.is_some(),
        "the upstream had not seen the head and the first half before the rest was sent: {:?}",
        String::from_utf8_lossy(&arrived.lock().unwrap())
    );
    connection.stream().write_all(b"second-hal").unwrap();
    let response = connection.read_response().unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), r#"{"bytes":20}"#);
    assert!(String::from_utf8_lossy(&arrived.lock().unwrap()).ends_with("first-halfsecond-hal"));
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
