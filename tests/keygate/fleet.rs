//! A fleet of gateways on one Redis (`rate_limit.scope: fleet`): a key's rate and quota hold
//! for the three together, within the documented bound; while Redis is frozen each goes on
//! alone at its share and refuses nothing valid; a changed record reaches every one.

use crate::support::http::Response;
use crate::support::topology::{Cluster, KeyWriter, SentinelGroup};
use crate::support::{eventually, Gateway, Redis, Setup, Upstream};
use std::time::{Duration, Instant};

const GATEWAYS: usize = 3;
const SYNC_MS: u64 = 100;

/// Three gateways with `scope: fleet` on `redis`, once each has joined the members set.
fn fleet(redis: &Redis, upstream: &Upstream) -> Vec<Gateway> {
    let limits = format!(
        "rate_limit:\n  per_second: 100000\n  burst: 100000\n  scope: fleet\n  sync_ms: {SYNC_MS}\n  unauthenticated_per_ip: {{per_second: 100000, burst: 100000}}"
    );
    let gateways: Vec<Gateway> =
        (0..GATEWAYS).map(|_| Setup::redis(redis, upstream).extra(&limits).start()).collect();
    let joined = eventually(Duration::from_secs(5), || members(redis) == GATEWAYS as u64);
    assert!(joined.is_some(), "the members set never held {GATEWAYS} gateways: {}", members(redis));
    // One more sync each, so that every gateway has read N = 3.
    std::thread::sleep(Duration::from_millis(3 * SYNC_MS));
    gateways
}

fn members(redis: &Redis) -> u64 {
    redis::cmd("ZCARD").arg("keygate:fleet:members").query(&mut redis.connection()).unwrap()
}

/// The key's shared rate counter in Redis: every request any gateway admitted and sent.
fn rate_counter(redis: &Redis, key: &str) -> u64 {
    let id = keygate::key::ApiKey::from_cli(key).id().to_hex();
    let count: Option<u64> =
        redis::cmd("GET").arg(format!("keygate:fleet:{{{id}}}:rate")).query(&mut redis.connection()).unwrap();
    count.unwrap_or(0)
}

/// What `load` saw: each answer, and the gateway it came from.
struct Answers {
    answers: Vec<(usize, Response)>,
    elapsed: Duration,
}

impl Answers {
    fn forwarded(&self) -> usize {
        self.answers.iter().filter(|(_, r)| r.status == 200).count()
    }

    fn forwarded_by(&self, gateway: usize) -> usize {
        self.answers.iter().filter(|(g, r)| *g == gateway && r.status == 200).count()
    }

    /// Fails the test on any answer but 200 and 429 (a valid key is never 401/403, and no
    /// gateway has a reason for a 5xx here).
    fn assert_only_forwarded_or_limited(&self) {
        for (gateway, response) in &self.answers {
            assert!(
                [200, 429].contains(&response.status),
                "gateway {gateway} answered {} {}",
                response.status,
                response.text()
            );
        }
    }
}

/// Requests for `key` for `duration`, from three clients, spread round-robin over `gateways`;
/// each client pauses a little between requests so the shared machine is not swamped (they
/// still ask far more often than the key's rate).
fn load(gateways: &[Gateway], key: &str, duration: Duration) -> Answers {
    let started = Instant::now();
    let answers = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..3)
            .map(|client| {
                scope.spawn(move || {
                    let mut answers = Vec::new();
                    let mut n = client;
                    while started.elapsed() < duration {
                        let gateway = n % gateways.len();
                        answers.push((gateway, gateways[gateway].with_key(key)));
                        n += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    answers
                })
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    Answers { answers, elapsed: started.elapsed() }
}

/// The contract's bound over `elapsed`: `rate*T + burst + N*rate*sync_ms/1000`.
fn bound(rate: f64, burst: f64, elapsed: Duration) -> f64 {
    rate * elapsed.as_secs_f64() + burst + GATEWAYS as f64 * rate * SYNC_MS as f64 / 1000.0
}

#[test]
fn a_keys_rate_holds_for_the_fleet_within_the_bound_and_is_not_starved() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("fleet-rate-key", &[("app", "acme"), ("rate", "20"), ("burst", "10")]);
    let gateways = fleet(&redis, &upstream);

    let seen = load(&gateways, "fleet-rate-key", Duration::from_secs(5));
    seen.assert_only_forwarded_or_limited();
    let forwarded = upstream.count();
    assert_eq!(forwarded, seen.forwarded(), "the upstream got what the clients saw forwarded");
    let (most, least) = (bound(20.0, 10.0, seen.elapsed), 0.8 * 20.0 * seen.elapsed.as_secs_f64());
    eprintln!("fleet rate: {forwarded} forwarded in {:?}; bound {most:.1}, floor {least:.1}", seen.elapsed);
    assert!(
        (least..=most).contains(&(forwarded as f64)),
        "{forwarded} forwarded in {:?} by {GATEWAYS} gateways: the bound is {most:.1}, the floor {least:.1}",
        seen.elapsed
    );
    for gateway in 0..GATEWAYS {
        assert!(seen.forwarded_by(gateway) > 0, "gateway {gateway} forwarded nothing");
    }
    // A forwarded response says what is left of the key's limit.
    let ok = seen.answers.iter().find(|(_, r)| r.status == 200).map(|(_, r)| r).unwrap();
    assert_eq!(ok.header("ratelimit-limit"), Some("10"));
    assert!(ok.header("ratelimit-remaining").is_some_and(|r| r.parse::<u64>().is_ok()));
    assert!(ok.header("ratelimit-reset").is_some_and(|r| r.parse::<u64>().is_ok()));
    for gateway in &gateways {
        assert!(gateway.metric(r#"keygate_fleet_syncs_total{result="ok"}"#) > 0.0);
    }
}

#[test]
fn a_quota_is_exhausted_across_the_fleet_then_quota_exceeded_until_the_period_ends() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let fields =
        [("app", "acme"), ("rate", "200"), ("burst", "30"), ("quota", "300"), ("quota_period", "day")];
    redis.put_key("fleet-quota-key", &fields);
    let gateways = fleet(&redis, &upstream);

    let seen = load(&gateways, "fleet-quota-key", Duration::from_secs(4));
    seen.assert_only_forwarded_or_limited();
    let forwarded = upstream.count();
    // The quota's bound: the quota, and what the others admitted that a gateway had not yet
    // heard of (N*rate*sync_ms).
    let most = 300.0 + GATEWAYS as f64 * 200.0 * SYNC_MS as f64 / 1000.0;
    eprintln!("fleet quota: {forwarded} forwarded on a quota of 300; bound {most:.0}");
    assert!(
        (300.0..=most).contains(&(forwarded as f64)),
        "{forwarded} forwarded on a quota of 300 (at most {most})"
    );
    let exceeded: Vec<&Response> =
        seen.answers.iter().map(|(_, r)| r).filter(|r| r.text().contains("quota_exceeded")).collect();
    assert!(!exceeded.is_empty(), "the quota was never answered quota_exceeded");
    let midnight = 86_400
        - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 86_400;
    for response in &exceeded {
        response.assert_rejected(429, "quota_exceeded");
        let retry_after = response.retry_after();
        assert!(
            retry_after.abs_diff(midnight) <= 10,
            "Retry-After {retry_after} s, where the UTC day ends in {midnight} s"
        );
        assert_eq!(response.header("ratelimit-limit"), Some("300"));
        assert_eq!(response.header("ratelimit-remaining"), Some("0"));
    }
    // Once exhausted, every gateway says so.
    for gateway in &gateways {
        gateway.with_key("fleet-quota-key").assert_rejected(429, "quota_exceeded");
    }
    let refused: f64 =
        gateways.iter().map(|g| g.metric(r#"keygate_requests_total{outcome="quota_exceeded"}"#)).sum();
    assert!(refused >= exceeded.len() as f64, "{refused} counted, {} seen", exceeded.len());
    // The counter is the period's, and goes away on its own.
    let id = keygate::key::ApiKey::from_cli("fleet-quota-key").id().to_hex();
    let day = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400;
    let name = format!("keygate:fleet:{{{id}}}:quota:{day}");
    let (count, ttl): (u64, i64) =
        redis::pipe().cmd("GET").arg(&name).cmd("TTL").arg(&name).query(&mut redis.connection()).unwrap();
    assert!(
        count >= forwarded as u64,
        "the fleet's count {count} holds every forwarded request ({forwarded})"
    );
    assert!((1..=midnight as i64 + 3700).contains(&ttl), "the counter expires after its day: TTL {ttl}");
}

#[test]
fn while_redis_is_frozen_each_gateway_goes_on_at_its_share_and_refuses_nothing_valid() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("fleet-outage-key", &[("app", "acme"), ("rate", "30"), ("burst", "9")]);
    let gateways = fleet(&redis, &upstream);
    let warm = load(&gateways, "fleet-outage-key", Duration::from_secs(1));
    warm.assert_only_forwarded_or_limited();
    let errors_before: Vec<f64> =
        gateways.iter().map(|g| g.metric(r#"keygate_fleet_syncs_total{result="error"}"#)).collect();

    redis.freeze();
    // Past the first failed sync, so each gateway knows it is alone.
    std::thread::sleep(Duration::from_millis(4 * SYNC_MS));
    let frozen = load(&gateways, "fleet-outage-key", Duration::from_secs(4));
    for (gateway, before) in gateways.iter().zip(&errors_before) {
        let errors = gateway.metric(r#"keygate_fleet_syncs_total{result="error"}"#);
        assert!(errors > *before, "syncs failed while Redis was frozen, yet {errors} errors were counted");
    }
    redis.thaw();

    frozen.assert_only_forwarded_or_limited();
    let seconds = frozen.elapsed.as_secs_f64();
    for gateway in 0..GATEWAYS {
        let alone = frozen.forwarded_by(gateway) as f64;
        eprintln!("Redis frozen: gateway {gateway} forwarded {alone} in {seconds:.2} s (share 10/s)");
        // Its share: rate/N = 10 a second, with burst/N = 3 at once, and debt left from before.
        let (least, most) = (0.6 * 10.0 * seconds, 10.0 * seconds + 3.0 + 2.0);
        assert!(
            (least..=most).contains(&alone),
            "gateway {gateway} forwarded {alone} in {seconds:.1} s alone; its share is 10/s"
        );
    }
    // The deltas kept through the outage reach Redis once it answers.
    let total = upstream.count() as u64;
    let sent = eventually(Duration::from_secs(3), || rate_counter(&redis, "fleet-outage-key") >= total);
    assert!(
        sent.is_some(),
        "Redis counts {} of the {total} forwarded",
        rate_counter(&redis, "fleet-outage-key")
    );
    let recovered = eventually(Duration::from_secs(3), || {
        gateways.iter().all(|g| g.metric(r#"keygate_fleet_syncs_total{result="ok"}"#) > 0.0)
    });
    assert!(recovered.is_some());
}

#[test]
fn a_keys_changed_rate_reaches_every_gateway() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("fleet-change-key", &[("app", "acme"), ("rate", "5"), ("burst", "6")]);
    let gateways = fleet(&redis, &upstream);
    let before = load(&gateways, "fleet-change-key", Duration::from_secs(2));
    before.assert_only_forwarded_or_limited();
    assert!(
        (before.forwarded() as f64) <= bound(5.0, 6.0, before.elapsed),
        "{} forwarded at 5/s",
        before.forwarded()
    );

    redis.put_key("fleet-change-key", &[("app", "acme"), ("rate", "50"), ("burst", "30")]);
    redis.announce("fleet-change-key");
    for (n, gateway) in gateways.iter().enumerate() {
        let heard = eventually(Duration::from_secs(2), || {
            let response: Response = gateway.with_key("fleet-change-key");
            response.status == 200 && response.header("ratelimit-limit") == Some("30")
        });
        assert!(heard.is_some(), "gateway {n} never forwarded under the new burst of 30");
    }
    let after = load(&gateways, "fleet-change-key", Duration::from_secs(2));
    after.assert_only_forwarded_or_limited();
    let forwarded = after.forwarded() as f64;
    let (least, most) = (0.8 * 50.0 * after.elapsed.as_secs_f64(), bound(50.0, 30.0, after.elapsed));
    assert!(
        (least..=most).contains(&forwarded),
        "{forwarded} forwarded at 50/s: not in {least:.0}..={most:.0}"
    );
}

/// Two gateways with `scope: fleet` on `store` share a quota: on a cluster each key's
/// counters sit in its own slot (hash-tagged by key id), so the scripts run there.
fn a_quota_is_shared_on(store: &dyn KeyWriter) {
    let upstream = Upstream::start();
    store.put_key("mode-quota-key", &[("app", "acme"), ("quota", "40"), ("quota_period", "month")]);
    let limits =
        format!("rate_limit:\n  scope: fleet\n  sync_ms: {SYNC_MS}\n  per_second: 1000\n  burst: 1000");
    let gateways: Vec<Gateway> = (0..2)
        .map(|_| Setup::with_store_yaml(store.store_yaml(), &upstream).extra(&limits).start())
        .collect();
    for gateway in &gateways {
        gateway.uses_key("mode-quota-key");
    }
    let mut forwarded = 0;
    let exhausted = eventually(Duration::from_secs(10), || {
        let answers: Vec<Response> = gateways.iter().map(|g| g.with_key("mode-quota-key")).collect();
        forwarded += answers.iter().filter(|r| r.status == 200).count();
        answers.iter().all(|r| r.text().contains("quota_exceeded"))
    });
    assert!(exhausted.is_some(), "the quota of 40 never ran out on both gateways ({forwarded} forwarded)");
    assert!((40..=50).contains(&forwarded), "{forwarded} forwarded on a quota of 40");
    for gateway in &gateways {
        assert!(gateway.metric(r#"keygate_fleet_syncs_total{result="ok"}"#) > 0.0);
        assert_eq!(gateway.metric(r#"keygate_fleet_syncs_total{result="error"}"#), 0.0, "{}", gateway.logs());
    }
}

#[test]
fn a_quota_is_shared_on_a_sentinel_group() {
    a_quota_is_shared_on(&SentinelGroup::start());
}

#[test]
fn a_quota_is_shared_on_a_cluster() {
    a_quota_is_shared_on(&Cluster::start(false));
}

/// A forwarded response, and the auth listener's 204, carry the tighter of rate and quota.
#[test]
fn forwarded_answers_carry_the_tighter_of_rate_and_quota() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let quota =
        [("app", "acme"), ("rate", "1000"), ("burst", "500"), ("quota", "5"), ("quota_period", "day")];
    redis.put_key("tight-quota-key", &quota);
    redis.put_key(
        "tight-rate-key",
        &[("app", "acme"), ("rate", "1"), ("burst", "3"), ("quota", "1000"), ("quota_period", "month")],
    );
    let auth: std::net::SocketAddr = format!("127.0.0.1:{}", crate::support::free_port()).parse().unwrap();
    let gateway = Setup::redis(&redis, &upstream).extra(&format!("auth_listen: \"{auth}\"")).start();
    let ask = |key: &str| {
        gateway.uses_key(key);
        crate::support::http::request(auth, "GET", "/_keygate", &[("X-ApiKey", key)], b"").unwrap()
    };
    let headers = |r: &Response| {
        ["ratelimit-limit", "ratelimit-remaining"].map(|name| r.header(name).unwrap_or("absent").to_string())
    };

    // The quota is the tighter: 5 a day, against a burst of 500.
    let first = gateway.with_key("tight-quota-key");
    assert_eq!((first.status, headers(&first)), (200, ["5".into(), "4".into()]));
    let second = ask("tight-quota-key");
    assert_eq!((second.status, headers(&second)), (204, ["5".into(), "3".into()]));
    let midnight = 86_400
        - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 86_400;
    let reset: u64 = second.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset.abs_diff(midnight) <= 5, "RateLimit-Reset {reset}, the day ends in {midnight} s");

    // The rate is the tighter: a burst of 3, against 1000 a month.
    let first = ask("tight-rate-key");
    assert_eq!((first.status, headers(&first)), (204, ["3".into(), "2".into()]));
    let second = gateway.with_key("tight-rate-key");
    assert_eq!((second.status, headers(&second)), (200, ["3".into(), "1".into()]));
    assert_eq!(second.header("ratelimit-reset"), Some("2"), "2 used of the burst: whole again in 2 s at 1/s");
}
