//! Reloadable settings that [`crate::operations`] does not already change on SIGHUP: each is
//! observed before and after the reload, on a gateway that keeps running. (Changed there:
//! peers, the per-key and per-IP limits, the key sources, the store's URL and timeout,
//! `negative_ttl_s`; `read_timeout_ms` in `upstream_faults`, `connect_timeout_ms` in
//! `promises`.)

use crate::support::http::{self, Connection, Response};
use crate::support::{eventually, Gateway, Redis, Setup, Upstream};
use std::time::Duration;

fn reloaded(gateway: &Gateway, edit: impl FnOnce(String) -> String) {
    let ok = gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#);
    gateway.reload(|yaml| {
        let edited = edit(yaml.clone());
        assert_ne!(edited, yaml, "the edit changed nothing");
        edited
    });
    assert_eq!(
        gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#),
        ok + 1.0,
        "{}",
        gateway.logs()
    );
}

/// Sends `key` in a thread of its own; its answer once joined.
fn in_background(gateway: &Gateway, key: &'static str) -> std::thread::JoinHandle<Response> {
    let addr = gateway.addr;
    std::thread::spawn(move || http::request(addr, "GET", "/ingest", &[("X-ApiKey", key)], b"").unwrap())
}

fn wait_in_flight(gateway: &Gateway, lookups: f64) {
    let reached =
        eventually(Duration::from_secs(3), || gateway.metric("keygate_store_lookups_in_flight") == lookups);
    assert!(reached.is_some(), "{lookups} lookups never were in flight at once");
}

#[test]
fn a_smaller_max_inflight_on_reload_sheds_at_the_new_bound() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    for key in ["first-held", "second-held", "shed-at-once", "alone-held", "shed-by-new-bound", "after"] {
        redis.put_key(key, &[("app", "acme")]);
    }
    let mut setup = Setup::redis(&redis, &upstream);
    setup.store = format!("  redis:\n    url: {}\n    timeout_ms: 1500\n    max_inflight: 4\n", redis.url());
    let gateway = setup.start();

    // Two lookups in flight on a frozen store, which the old bound admits; the new bound of one
    // sheds the next at once, and admits nothing until fewer than one run.
    redis.freeze();
    let held = [in_background(&gateway, "first-held"), in_background(&gateway, "second-held")];
    wait_in_flight(&gateway, 2.0);
    reloaded(&gateway, |yaml| yaml.replace("max_inflight: 4", "max_inflight: 1"));
    gateway.with_key("shed-at-once").assert_rejected(503, "overloaded");
    for answer in held {
        answer.join().unwrap().assert_rejected(503, "key_store_unavailable");
    }
    // With one running, the old bound would admit another; the new one does not.
    let alone = in_background(&gateway, "alone-held");
    wait_in_flight(&gateway, 1.0);
    gateway.with_key("shed-by-new-bound").assert_rejected(503, "overloaded");
    alone.join().unwrap().assert_rejected(503, "key_store_unavailable");
    redis.thaw();
    let served = eventually(Duration::from_secs(3), || gateway.with_key("after").status == 200);
    assert!(served.is_some(), "the thawed store was never asked again");
}

#[test]
fn new_trusted_proxies_on_reload_decide_whose_address_is_charged() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream)
        .extra("rate_limit:\n  per_second: 1000\n  burst: 1000\n  unauthenticated_per_ip: {per_second: 0.1, burst: 2}")
        .extra("trusted_proxies: []")
        .start();
    let keyless = |forwarded_for: Option<&str>| {
        let headers: Vec<(&str, &str)> = forwarded_for.map(|f| ("X-Forwarded-For", f)).into_iter().collect();
        Connection::open(gateway.addr).unwrap().request("GET", "/ingest", &headers, b"").unwrap()
    };
    // Nobody is trusted: whatever X-Forwarded-For says, 127.0.0.1 is charged.
    keyless(Some("203.0.113.1")).assert_rejected(401, "missing_api_key");
    keyless(Some("203.0.113.2")).assert_rejected(401, "missing_api_key");
    keyless(Some("203.0.113.3")).assert_rejected(429, "rate_limited");

    reloaded(&gateway, |yaml| yaml.replace("trusted_proxies: []", "trusted_proxies: [127.0.0.1/32]"));
    // Now the address 127.0.0.1 forwards for is charged, and 127.0.0.1's own budget is still spent.
    keyless(Some("203.0.113.3")).assert_rejected(401, "missing_api_key");
    keyless(None).assert_rejected(429, "rate_limited");
}

#[test]
fn a_shorter_ttl_on_reload_applies_to_keys_already_cached() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("renamed-key", &[("app", "before")]);
    let gateway = Setup::redis(&redis, &upstream).extra("cache: {ttl_s: 300}").start();
    assert_eq!(gateway.with_key("renamed-key").text(), r#"{"app":"before","bytes":0}"#);
    // Changed without an announcement: only the TTL brings the new record in.
    redis.put_key("renamed-key", &[("app", "after")]);
    redis.reset_stats();
    assert_eq!(gateway.with_key("renamed-key").text(), r#"{"app":"before","bytes":0}"#);
    assert_eq!(redis.reads(), 0, "a key within its TTL was read again");

    reloaded(&gateway, |yaml| yaml.replace("ttl_s: 300", "ttl_s: 1"));
    let renamed = eventually(Duration::from_secs(5), || {
        gateway.with_key("renamed-key").text() == r#"{"app":"after","bytes":0}"#
    });
    assert!(renamed.is_some(), "the cached record kept its 300 s TTL after the reload");
}

#[test]
fn a_shorter_stale_s_on_reload_stops_honouring_a_key_the_store_cannot_confirm() {
    let (mut redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("stale-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).extra("cache: {ttl_s: 1, stale_s: 3600}").start();
    assert_eq!(gateway.with_key("stale-key").status, 200);
    let confirmed = std::time::Instant::now();
    redis.kill();
    // Past ttl + the new stale_s (2 s) and still served: the old stale_s holds it.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(confirmed.elapsed()));
    let stale_hits = r#"keygate_cache_lookups_total{result="stale_hit"}"#;
    let before = gateway.metric(stale_hits);
    assert_eq!(gateway.with_key("stale-key").status, 200, "a stale key was not honoured");
    assert_eq!(gateway.metric(stale_hits), before + 1.0);

    reloaded(&gateway, |yaml| yaml.replace("stale_s: 3600", "stale_s: 1"));
    gateway.with_key("stale-key").assert_rejected(503, "key_store_unavailable");
}

#[test]
fn a_new_prefix_on_reload_reads_other_records_and_follows_the_other_channel() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("old-prefix-key", &[("app", "old")]);
    let put_new = |key: &str, fields: &[(&str, &str)]| {
        let id = keygate::key::ApiKey::from_cli(key).id().to_hex();
        let mut hset = redis::cmd("HSET");
        hset.arg(format!("renamed:key:{id}"));
        for (field, value) in fields {
            hset.arg(*field).arg(*value);
        }
        let _: () = hset.query(&mut redis.connection()).unwrap();
        id
    };
    put_new("new-prefix-key", &[("app", "new")]);
    let mut setup = Setup::redis(&redis, &upstream);
    setup.store =
        format!("  redis:\n    url: {}\n    prefix: \"keygate:\"\n    timeout_ms: 50\n", redis.url());
    let gateway = setup.start();
    assert_eq!(gateway.with_key("old-prefix-key").status, 200);
    gateway.with_key("new-prefix-key").assert_rejected(403, "unknown_api_key");

    reloaded(&gateway, |yaml| yaml.replace("prefix: \"keygate:\"", "prefix: \"renamed:\""));
    assert_eq!(gateway.with_key("new-prefix-key").text(), r#"{"app":"new","bytes":0}"#);
    gateway.with_key("old-prefix-key").assert_rejected(403, "unknown_api_key");
    let subscribed = eventually(Duration::from_secs(3), || {
        let channels: Vec<String> =
            redis::cmd("PUBSUB").arg("CHANNELS").query(&mut redis.connection()).unwrap();
        channels == ["renamed:invalidate"]
    });
    assert!(subscribed.is_some(), "the gateway does not listen on the new prefix's channel (only)");
    // Announcements on the new channel are followed.
    let id = put_new("new-prefix-key", &[("status", "revoked")]);
    let _: () =
        redis::cmd("PUBLISH").arg("renamed:invalidate").arg(id).query(&mut redis.connection()).unwrap();
    let revoked = eventually(Duration::from_secs(1), || gateway.with_key("new-prefix-key").status == 403);
    assert!(revoked.is_some(), "an announcement on the new channel was not applied within a second");
    gateway.with_key("new-prefix-key").assert_rejected(403, "disabled_api_key");
}

#[test]
fn a_new_max_length_and_forward_on_reload_apply_to_the_next_request() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("short-key", &[("app", "acme")]);
    redis.put_key("twelve-chars", &[("app", "acme")]);
    let gateway =
        Setup::redis(&redis, &upstream).extra("api_key:\n  max_length: 128\n  forward: true").start();
    assert_eq!(gateway.with_key("twelve-chars").status, 200);
    assert_eq!(gateway.with_key("short-key").status, 200);
    assert_eq!(upstream.received()[1].header_values("x-apikey"), ["short-key"]);

    reloaded(&gateway, |yaml| {
        yaml.replace("max_length: 128\n  forward: true", "max_length: 10\n  forward: false")
    });
    gateway.with_key("twelve-chars").assert_rejected(401, "malformed_api_key");
    assert_eq!(gateway.with_key("short-key").status, 200);
    let seen = upstream.received();
    assert_eq!(seen.len(), 3);
    assert!(seen[2].header_values("x-apikey").is_empty(), "the key was forwarded after forward: false");
}
