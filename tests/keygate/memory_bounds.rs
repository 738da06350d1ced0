//! What clients send cannot grow the gateway without bound: a flood from more distinct
//! addresses than `max_addresses` is held to it, counted, and valid keys keep being answered.

use crate::support::{Redis, Setup, Upstream};

#[test]
fn a_flood_from_more_addresses_than_the_bound_is_held_to_it_and_valid_keys_still_pass() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream)
        .extra("rate_limit:\n  per_second: 1000\n  burst: 1000\n  unauthenticated_per_ip: {per_second: 1, burst: 2, max_addresses: 100}")
        .extra("trusted_proxies: [127.0.0.1/32]")
        .start();
    assert_eq!(gateway.with_key("valid-key").status, 200);

    // 1000 addresses (behind the trusted proxy), each sending a request without a key.
    for n in 0..1000u32 {
        let client = format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255);
        let response = gateway.get("/ingest", &[("X-Forwarded-For", client.as_str())]);
        response.assert_rejected(401, "missing_api_key");
    }
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
