//! What clients send cannot grow the gateway without bound: a flood from more distinct
//! addresses than `max_addresses` is held to it, counted, and valid keys keep being answered;
//! a flood of unknown keys is held to `negative_capacity`.

use crate::support::http::Connection;
use crate::support::{eventually, Gateway, Redis, Setup, Upstream};
use std::time::Duration;

/// Sends one keyless request from each of `count` addresses from the `from`th on (behind the
/// trusted proxy), each answered 401 (its first request, within its burst).
fn flood_addresses(gateway: &Gateway, from: u32, count: u32) {
    for n in from..from + count {
        let client = format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255);
        let response = gateway.get("/ingest", &[("X-Forwarded-For", client.as_str())]);
        response.assert_rejected(401, "missing_api_key");
    }
}

/// A gateway behind a trusted proxy whose per-IP limiter holds at most `max_addresses`.
fn flooded_gateway(redis: &Redis, upstream: &Upstream, max_addresses: u32) -> Gateway {
    redis.put_key("valid-key", &[("app", "acme")]);
    Setup::redis(redis, upstream)
        .extra(&format!("rate_limit:\n  per_second: 1000\n  burst: 1000\n  unauthenticated_per_ip: {{per_second: 1, burst: 2, max_addresses: {max_addresses}}}"))
        .extra("trusted_proxies: [127.0.0.1/32]")
        .start()
}

#[test]
fn a_flood_from_more_addresses_than_the_bound_is_held_to_it_and_valid_keys_still_pass() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = flooded_gateway(&redis, &upstream, 100);
    assert_eq!(gateway.with_key("valid-key").status, 200);

    flood_addresses(&gateway, 0, 1000);
    let held = gateway.metric("keygate_ip_limiter_addresses");
    assert!((1.0..=100.0).contains(&held), "{held} addresses held, bound 100");
    let forgotten = gateway.metric("keygate_ip_limiter_forgotten_total");
    assert!(forgotten >= 900.0, "{forgotten} addresses forgotten early");
    assert_eq!(gateway.with_key("valid-key").status, 200, "a valid key is still answered");
    // An address still held keeps its limit: the most recent one has spent one of two.
    let last = "10.0.3.231";
    assert_eq!(gateway.get("/ingest", &[("X-Forwarded-For", last)]).status, 401);
    assert_eq!(gateway.get("/ingest", &[("X-Forwarded-For", last)]).status, 429);
    gateway.assert_no_key_in_logs(&["valid-key"]);
}

/// A reload with another bound starts a fresh limiter; the counter of addresses forgotten
/// early is a Prometheus counter, so it goes on from where it was instead of dropping to 0.
#[test]
fn the_forgotten_count_goes_on_through_a_reload_that_builds_a_new_limiter() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = flooded_gateway(&redis, &upstream, 100);
    flood_addresses(&gateway, 0, 300);
    let before = gateway.metric("keygate_ip_limiter_forgotten_total");
    assert!(before >= 200.0, "{before} addresses forgotten early");

    gateway.reload(|yaml| yaml.replace("max_addresses: 100", "max_addresses: 50"));
    // The new limiter holds nothing yet (the old one held up to 100): it is a new one.
    assert_eq!(gateway.metric("keygate_ip_limiter_addresses"), 0.0, "the limiter was not replaced");
    assert_eq!(gateway.metric("keygate_ip_limiter_forgotten_total"), before, "the counter moved");

    flood_addresses(&gateway, 300, 300);
    let after = gateway.metric("keygate_ip_limiter_forgotten_total");
    assert!(after >= before + 250.0, "{after} forgotten after {before} and 300 more addresses");
    assert!(gateway.metric("keygate_ip_limiter_addresses") <= 50.0);
    assert_eq!(gateway.with_key("valid-key").status, 200);
    gateway.assert_no_key_in_logs(&["valid-key"]);
}

/// Guarantee 5's bound: a flood of distinct unknown keys holds at most `negative_capacity` of
/// them, and the known key stays cached (no store read for it afterwards).
#[test]
fn a_flood_of_unknown_keys_is_held_to_negative_capacity_and_never_evicts_a_known_key() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream)
        .extra("cache: {negative_capacity: 50}\nfilter: {enabled: false}")
        .extra("rate_limit:\n  unauthenticated_per_ip: {per_second: 100000, burst: 100000}")
        .start();
    assert_eq!(gateway.with_key("valid-key").status, 200);
    let mut most = 0.0f64;
    for n in 0..600 {
        gateway.with_key(&format!("unknown-key-{n:04}")).assert_rejected(403, "unknown_api_key");
        most = most.max(gateway.metric(r#"keygate_cache_entries{kind="negative"}"#));
    }
    assert!((1.0..=50.0).contains(&most), "{most} unknown keys held, bound 50");
    assert!(redis.reads() >= 600, "the unknown keys never reached the store: {}", redis.reads());
    redis.reset_stats();
    assert_eq!(gateway.with_key("valid-key").status, 200);
    assert_eq!(redis.reads(), 0, "the flood evicted the known key");
    assert_eq!(gateway.metric(r#"keygate_cache_entries{kind="positive"}"#), 1.0);
}

/// Resident memory of a process, in bytes.
fn resident(pid: u32) -> usize {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

/// The access log's writer is stalled (a pipe nobody reads, as a hung disk would): its queue
/// holds at most 8 MiB of lines however long the paths clients send, drops and counts the
/// rest, and requests keep being answered meanwhile.
#[test]
fn a_stalled_access_log_queues_a_bounded_number_of_bytes_and_requests_go_on() {
    const REQUESTS: usize = 2000;
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("access.pipe");
    assert!(std::process::Command::new("mkfifo").arg(&pipe).status().unwrap().success());
    // Read-write, so opening it does not wait for the gateway; never read: the pipe fills.
    let stalled = std::fs::OpenOptions::new().read(true).write(true).open(&pipe).unwrap();
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&format!("access_log: {{path: {}, rejections_per_second: 100000}}", pipe.display()))
        .extra("rate_limit:\n  unauthenticated_per_ip: {per_second: 100000, burst: 100000}")
        .start();
    let before = resident(gateway.pid());
    // Each line holds its 16 KiB path (32 KiB allocated): 2000 of them are 64 MiB of lines.
    let path = format!("/ingest/{}", "p".repeat(16 << 10));
    for _ in 0..REQUESTS {
        gateway.get(&path, &[]).assert_rejected(401, "missing_api_key");
    }
    let skipped = gateway.settled_metric("keygate_access_log_skipped_total", REQUESTS as f64);
    // At most 8 MiB / 32 KiB = 256 lines queued, a few more in the pipe and the writer's hands.
    assert!(skipped >= (REQUESTS - 300) as f64, "only {skipped} of {REQUESTS} lines dropped");
    let grown = resident(gateway.pid()).saturating_sub(before);
    assert!(grown < 24 << 20, "resident memory grew {} MiB", grown >> 20);
    assert_eq!(gateway.with_key("valid-key").status, 200, "a valid key is still answered");
    drop(stalled);
}

/// Sends one keyless request from each of `count` new addresses from the `from`th on, over a
/// few kept-alive connections at once: a flood at what this machine allows.
fn flood_fast(gateway: &Gateway, from: u32, count: u32) {
    const CONNECTIONS: u32 = 6;
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|first| {
            let addr = gateway.addr;
            std::thread::spawn(move || {
                let mut connection = Connection::open(addr).unwrap();
                for n in (from + first..from + count).step_by(CONNECTIONS as usize) {
                    let client = format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255);
                    let response = connection.request("GET", "/ingest", &[("X-Forwarded-For", &client)], b"");
                    assert_eq!(response.unwrap().status, 401);
                }
            })
        })
        .collect();
    senders.into_iter().for_each(|s| s.join().unwrap());
}

/// Resident memory once the allocator's returns have run their course: the least of readings
/// over two seconds (its purge runs each second), so a reading caught mid-return is not taken
/// for memory kept.
fn settled_resident(pid: u32) -> usize {
    (0..9)
        .map(|n| {
            if n > 0 {
                std::thread::sleep(Duration::from_millis(250));
            }
            resident(pid)
        })
        .min()
        .unwrap_or(0)
}

/// What a flood of new addresses took goes back within seconds of the sweep that forgot them
/// (the map is replaced, and the allocator is asked each second to give freed memory back),
/// and a second flood leaves memory where the first did: floods do not ratchet it up.
#[test]
fn memory_a_flood_took_is_given_back_and_a_second_flood_leaves_it_where_the_first_did() {
    const ADDRESSES: u32 = 150_000;
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = flooded_gateway(&redis, &upstream, 1_000_000);
    let pid = gateway.pid();
    assert_eq!(gateway.with_key("valid-key").status, 200);
    let idle = resident(pid);
    let mut after = Vec::new();
    for flood in 0..2 {
        flood_fast(&gateway, flood * ADDRESSES, ADDRESSES);
        let grown = resident(pid).saturating_sub(idle);
        // 150k addresses in the limiter alone are over 5 MiB (33-59 B each).
        assert!(grown > 4 << 20, "the flood grew memory by {} KiB only: nothing to tell", grown >> 10);
        let swept =
            eventually(Duration::from_secs(25), || gateway.metric("keygate_ip_limiter_addresses") == 0.0);
        assert!(swept.is_some(), "the sweep never forgot the flood's addresses");
        // Within seconds of the sweep, not whenever the allocator next happens to be called:
        // without being asked, it kept all of it past this wait.
        let back = eventually(Duration::from_secs(5), || resident(pid).saturating_sub(idle) < grown / 2);
        let kept = resident(pid).saturating_sub(idle);
        assert!(back.is_some(), "flood {flood}: {} KiB of {} kept", kept >> 10, grown >> 10);
        after.push(settled_resident(pid));
        assert_eq!(gateway.with_key("valid-key").status, 200, "a valid key is still answered");
    }
    // Each flood here grows memory by 10-18 MiB and settles 3-7 MiB above idle (allocator pages
    // kept for reuse); a ratchet keeps all of a flood, as one did before the sweep replaced the
    // map and the allocator was asked to purge. 8 MiB is under what one flood takes.
    let ratchet = after[1].saturating_sub(after[0]);
    assert!(ratchet < 8 << 20, "the second flood left {} KiB more than the first", ratchet >> 10);
}
