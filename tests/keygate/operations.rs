//! Operating a running gateway: reload on SIGHUP, unix-socket listeners.

use crate::support::{self, eventually, Redis, Setup, Upstream};
use std::time::Duration;

#[test]
fn after_sighup_a_tightened_limit_holds_and_traffic_goes_to_the_new_upstream() {
    let (redis, old_upstream, new_upstream) = (Redis::start(), Upstream::start(), Upstream::start());
    redis.put_key("steady-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &old_upstream)
        .extra("rate_limit:\n  per_second: 1000\n  burst: 1000\n  unauthenticated_per_ip: {per_second: 1000, burst: 1000}")
        .start();
    for _ in 0..20 {
        assert_eq!(gateway.with_key("steady-key").status, 200);
    }
    assert_eq!(old_upstream.count(), 20);

    let (old, new) = (old_upstream.addr.to_string(), new_upstream.addr.to_string());
    gateway.reload(|yaml| {
        yaml.replace(&format!("peers: [\"{old}\"]"), &format!("peers: [\"{new}\"]"))
            .replace("per_second: 1000\n  burst: 1000", "per_second: 0.5\n  burst: 3")
    });
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    // The cached key is confirmed again in the background and picks the new limit up.
    let limited = eventually(Duration::from_secs(2), || gateway.with_key("steady-key").status == 429);
    assert!(limited.is_some(), "the tightened limit never held");
    // The burst of 3, plus what the old limit let through while the key was being confirmed.
    assert!((1..=5).contains(&new_upstream.count()), "new upstream saw {}", new_upstream.count());
    let old_count = old_upstream.count();
    assert!(old_count <= 21, "the old upstream kept getting traffic: {old_count}");
    assert_eq!(gateway.metric(&format!("keygate_upstream_healthy{{peer=\"{new}\"}}")), 1.0);
    assert!(!gateway.metrics().contains(&old), "the removed peer left no series");
}

#[test]
fn a_bad_file_is_refused_counted_and_logged_and_the_old_config_stays() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("steady-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    // What the bad file would change, where a client sees it at once: keys come from
    // `X-Token` only, and keyless requests get a burst of 2 per address.
    let observable_changes = |yaml: String| {
        let generous = "unauthenticated_per_ip: {per_second: 100000, burst: 100000}";
        assert!(yaml.contains(generous), "{yaml}");
        let tight = yaml.replace(generous, "unauthenticated_per_ip: {per_second: 0.1, burst: 2}");
        format!("{tight}api_key:\n  sources:\n    - header: X-Token\n")
    };
    gateway
        .reload(|yaml| format!("{}cache:\n  ttl_s: 0\nfilter:\n  colour: blue\n", observable_changes(yaml)));
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="error"}"#), 1.0);
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 0.0);
    let logs = gateway.logs();
    assert!(
        logs.contains("cache.ttl_s") && logs.contains("filter.colour"),
        "every problem is logged:\n{logs}"
    );
    // The running config stays: the key source and the per-address limit are the old ones.
    assert_eq!(gateway.with_key("steady-key").status, 200, "the running config stays");
    gateway.get("/ingest", &[("X-Token", "steady-key")]).assert_rejected(401, "missing_api_key");
    for n in 0..5 {
        let keyless = gateway.get("/ingest", &[]);
        assert_eq!(keyless.status, 401, "keyless request {n}: the refused file's limit is in force");
    }

    // The same changes in a sound file apply at once: the checks above could see them.
    let good = std::fs::read_to_string(&gateway.config).unwrap();
    let good = good[..good.find("cache:\n  ttl_s: 0\n").unwrap()].to_string();
    gateway.reload(|_| good);
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(gateway.get("/ingest", &[("X-Token", "steady-key")]).status, 200);
    gateway.with_key("steady-key").assert_rejected(401, "missing_api_key");
    let keyless: Vec<u16> = (0..4).map(|_| gateway.get("/ingest", &[]).status).collect();
    assert!(keyless.contains(&429), "the new per-address limit never held: {keyless:?}");
}

#[test]
fn a_key_added_to_the_file_store_is_served_after_sighup() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&keys, "keys:\n  - key: first-key\n    app: one\n").unwrap();
    let gateway = Setup::file(&keys, &upstream).start();
    assert_eq!(gateway.with_key("first-key").status, 200);
    gateway.with_key("second-key").assert_rejected(403, "unknown_api_key");

    std::fs::write(&keys, "keys:\n  - key: second-key\n    app: two\n").unwrap();
    gateway.reload(|yaml| yaml);
    assert_eq!(gateway.with_key("second-key").text(), r#"{"app":"two","bytes":0}"#);
    gateway.with_key("first-key").assert_rejected(403, "unknown_api_key");

    // A broken key file is refused like a broken config, and the keys stay.
    std::fs::write(&keys, "keys:\n  - app: no-key\n").unwrap();
    gateway.reload(|yaml| yaml);
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="error"}"#), 1.0);
    assert_eq!(gateway.with_key("second-key").status, 200);
    gateway.assert_no_key_in_logs(&["first-key", "second-key"]);
}

#[test]
fn a_unix_socket_listener_forwards() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("socket-key", &[("app", "acme")]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keygate.sock");
    let gateway = Setup::redis(&redis, &upstream).listen(&format!("unix:{}", socket.display())).start();
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /ingest HTTP/1.1\r\nHost: t\r\nX-ApiKey: socket-key\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"app":"acme","bytes":0}"#), "{answer}");
    let seen = upstream.received();
    assert_eq!(seen[0].header_values("x-forwarded-for"), ["127.0.0.1"], "a socket peer counts as loopback");
    drop(gateway);
}

#[test]
fn a_new_redis_url_on_reload_reconnects_and_forgets_the_old_stores_answers() {
    let (first, second, upstream) = (Redis::start(), Redis::start(), Upstream::start());
    first.put_key("first-only", &[("app", "one")]);
    second.put_key("second-only", &[("app", "two")]);
    let gateway = Setup::redis(&first, &upstream).start();
    assert_eq!(gateway.with_key("first-only").status, 200);
    gateway.with_key("second-only").assert_rejected(403, "unknown_api_key");

    gateway.reload(|yaml| yaml.replace(&first.url(), &second.url()));
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    let moved = eventually(Duration::from_secs(3), || gateway.with_key("second-only").status == 200);
    assert!(moved.is_some(), "the new store's key was never accepted");
    gateway.with_key("first-only").assert_rejected(403, "unknown_api_key");
    // Announcements now come from the new store.
    let trusted =
        eventually(Duration::from_secs(3), || gateway.try_metric("keygate_filter_trusted") == Some(1.0));
    assert!(trusted.is_some(), "the filter never became trusted on the new store");
    second.put_key("second-new", &[("app", "two")]);
    second.announce("second-new");
    assert!(eventually(Duration::from_secs(1), || gateway.with_key("second-new").status == 200).is_some());
}

#[test]
fn a_longer_store_timeout_on_reload_reconnects_keeps_what_was_learnt_and_is_waited_out() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("cached-key", &[("app", "acme")]);
    redis.put_key("uncached-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    assert_eq!(gateway.with_key("cached-key").status, 200);

    gateway.reload(|yaml| yaml.replace("\n    timeout_ms: 50\n", "\n    timeout_ms: 2500\n"));
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    // Same Redis: the cached key needs no new read.
    redis.reset_stats();
    assert_eq!(gateway.with_key("cached-key").status, 200);
    assert_eq!(redis.reads(), 0);

    // A frozen store is waited for the whole new timeout, and counted as a timeout (the old
    // connection gave up after about a second and counted an error).
    redis.freeze();
    let started = std::time::Instant::now();
    let response = gateway.with_key("uncached-key");
    let took = started.elapsed();
    redis.thaw();
    response.assert_rejected(503, "key_store_unavailable");
    assert!(took >= Duration::from_millis(2400), "gave up after {took:?}");
    assert_eq!(gateway.metric(r#"keygate_store_queries_total{result="timeout"}"#), 1.0);
    assert_eq!(gateway.metric(r#"keygate_store_queries_total{result="error"}"#), 0.0);
    assert!(eventually(Duration::from_secs(5), || gateway.with_key("uncached-key").status == 200).is_some());
}

#[test]
fn the_access_log_has_a_json_line_per_request_samples_rejections_and_never_a_key() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("logged-key", &[("app", "acme")]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&format!("access_log: {{path: {}, rejections_per_second: 5}}", log.display()))
        .extra("trusted_proxies: [127.0.0.1/32]")
        .start();
    for _ in 0..3 {
        let response = gateway.get("/ingest?apikey=logged-key&x=1", &[("X-Forwarded-For", "203.0.113.9")]);
        assert_eq!(response.status, 200);
    }
    for n in 0..50 {
        gateway.with_key(&format!("junk-key-{n}")).assert_rejected(403, "unknown_api_key");
    }
    let complete = eventually(Duration::from_secs(3), || {
        std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| l.contains("forwarded")).count()
            == 3
    });
    assert!(complete.is_some(), "the forwarded requests were not all logged");
    let text = std::fs::read_to_string(&log).unwrap();
    let forwarded: Vec<&str> = text.lines().filter(|l| l.contains("\"outcome\":\"forwarded\"")).collect();
    let line = forwarded[0];
    for field in [
        "\"client\":\"203.0.113.9\"",
        "\"method\":\"GET\"",
        "\"path\":\"/ingest\"",
        "\"status\":200",
        "\"app\":\"acme\"",
        &format!("\"upstream\":\"{}\"", upstream.addr),
        "\"duration_ms\":",
        "\"time\":\"20",
    ] {
        assert!(line.contains(field), "`{field}` missing from {line}");
    }
    let rejected = text.lines().filter(|l| l.contains("unknown_key")).count();
    assert!((1..=10).contains(&rejected), "{rejected} of 50 rejections logged at 5/s");
    assert!(gateway.metric("keygate_access_log_skipped_total") >= 40.0);
    assert!(!text.contains("logged-key") && !text.contains("junk-key"), "a key reached the access log");
}

#[test]
fn the_shipped_alerts_and_dashboard_name_only_metrics_keygate_exports() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    let exported = gateway.metrics();
    let monitoring = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/monitoring");
    let mut named = 0;
    for file in ["keygate-alerts.yml", "grafana-dashboard.json", "prometheus.yml"] {
        let text = std::fs::read_to_string(monitoring.join(file)).unwrap();
        let _: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut rest = text.as_str();
        while let Some(at) = rest.find("keygate_") {
            let name: String =
                rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            assert!(
                exported.contains(&format!("\n{name}")),
                "{file} names `{name}`, which keygate does not export"
            );
            named += 1;
        }
    }
    assert!(named >= 10, "only {named} metric names found");
}

#[test]
fn a_reload_switches_the_key_sources_at_once() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("source-key", &[("app", "acme")]);
    let gateway =
        Setup::redis(&redis, &upstream).extra("api_key:\n  sources:\n    - header: X-ApiKey").start();
    assert_eq!(gateway.get("/ingest", &[("X-ApiKey", "source-key")]).status, 200);
    gateway.get("/ingest", &[("X-Token", "source-key")]).assert_rejected(401, "missing_api_key");

    gateway.reload(|yaml| yaml.replace("- header: X-ApiKey", "- header: X-Token"));
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    gateway.get("/ingest", &[("X-ApiKey", "source-key")]).assert_rejected(401, "missing_api_key");
    let forwarded = gateway.get("/ingest", &[("X-Token", "source-key")]);
    assert_eq!(forwarded.text(), r#"{"app":"acme","bytes":0}"#);
    gateway.assert_no_key_in_logs(&["source-key"]);
}

#[test]
fn a_shorter_negative_ttl_on_reload_applies_to_keys_already_cached_as_unknown() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    // Without the filter an unknown key is cached as unknown after one store read, and only
    // the negative TTL (or an announcement) makes the gateway ask again.
    let gateway = Setup::redis(&redis, &upstream)
        .extra("cache: {negative_ttl_s: 600}\nfilter: {enabled: false}")
        .start();
    gateway.with_key("late-key").assert_rejected(403, "unknown_api_key");
    // Written without an announcement: the negative entry stands for its 600 s.
    redis.put_key("late-key", &[("app", "acme")]);
    redis.reset_stats();
    gateway.with_key("late-key").assert_rejected(403, "unknown_api_key");
    assert_eq!(redis.reads(), 0, "an unknown key within its negative TTL was asked about again");

    gateway.reload(|yaml| yaml.replace("negative_ttl_s: 600", "negative_ttl_s: 1"));
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    let served = eventually(Duration::from_secs(5), || gateway.with_key("late-key").status == 200);
    assert!(served.is_some(), "the entry cached as unknown kept its 600 s TTL after the reload");
}

#[test]
fn the_per_ip_limiter_keeps_its_state_across_a_reload_that_leaves_its_rate_alone() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    // One request every ten seconds after the burst: nothing refills during the test's reload.
    let gateway = Setup::redis(&redis, &upstream)
        .extra("rate_limit:\n  per_second: 1000\n  burst: 1000\n  unauthenticated_per_ip: {per_second: 0.1, burst: 3}")
        .extra("cache: {ttl_s: 300}")
        .start();
    for _ in 0..3 {
        gateway.get("/ingest", &[]).assert_rejected(401, "missing_api_key");
    }
    gateway.get("/ingest", &[]).assert_rejected(429, "rate_limited");

    gateway.reload(|yaml| yaml.replace("ttl_s: 300", "ttl_s: 200"));
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    let limited = gateway.get("/ingest", &[]);
    limited.assert_rejected(429, "rate_limited");
    assert_eq!(limited.header("ratelimit-limit"), Some("3"));

    // A new per-IP limit, by contrast, applies at once.
    gateway.reload(|yaml| yaml.replace("{per_second: 0.1, burst: 3}", "{per_second: 0.1, burst: 50}"));
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 2.0);
    gateway.get("/ingest", &[]).assert_rejected(401, "missing_api_key");
}

#[test]
fn a_peer_that_stays_across_a_reload_keeps_its_health_and_gets_no_traffic() {
    let (redis, live, added) = (Redis::start(), Upstream::start(), Upstream::start());
    redis.put_key("health-key", &[("app", "acme")]);
    let dead = format!("127.0.0.1:{}", support::free_port());
    let mut setup = Setup::redis(&redis, &live).health_interval_ms(600_000);
    setup.peers = vec![dead.clone(), live.addr.to_string()];
    let gateway = setup.start();
    let dead_series = format!("keygate_upstream_healthy{{peer=\"{dead}\"}}");
    // The first check runs at start; the next one is ten minutes away.
    let marked = eventually(Duration::from_secs(5), || gateway.try_metric(&dead_series) == Some(0.0));
    assert!(marked.is_some(), "the dead peer was never marked unhealthy:\n{}", gateway.metrics());

    // From now on the dead peer's port answers: a request sent there is seen (and never
    // answered), and a health check would pass. Only the health state kept from the first
    // check keeps traffic away from it.
    let watcher = std::net::TcpListener::bind(&dead).unwrap();
    watcher.set_nonblocking(true).unwrap();
    let (old_peers, new_peers) = (
        format!("peers: [\"{dead}\", \"{}\"]", live.addr),
        format!("peers: [\"{dead}\", \"{}\", \"{}\"]", live.addr, added.addr),
    );
    gateway.reload(|yaml| {
        assert!(yaml.contains(&old_peers), "{yaml}");
        yaml.replace(&old_peers, &new_peers)
    });
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(gateway.metric(&dead_series), 0.0, "the reload forgot the dead peer's health");
    assert_eq!(gateway.metric(&format!("keygate_upstream_healthy{{peer=\"{}\"}}", added.addr)), 1.0);

    for n in 0..30 {
        assert_eq!(gateway.with_key("health-key").status, 200, "request {n}");
    }
    assert!(watcher.accept().is_err(), "a request went to the peer marked unhealthy");
    assert_eq!(live.count() + added.count(), 30);
    assert!(added.count() > 0, "the added peer got no traffic");
}

#[test]
fn a_changed_listener_on_reload_is_warned_about_and_the_old_one_keeps_serving() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("listen-key", &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).start();
    let elsewhere = format!("127.0.0.1:{}", support::free_port());
    let old = format!("listen: [\"{}\"]", gateway.addr);
    gateway.reload(|yaml| {
        assert!(yaml.contains(&old), "{yaml}");
        yaml.replace(&old, &format!("listen: [\"{elsewhere}\"]"))
    });
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    let logs = gateway.logs();
    assert!(
        logs.contains("reload: `listen` cannot change while running"),
        "no warning about the listener:\n{logs}"
    );
    assert_eq!(gateway.with_key("listen-key").status, 200, "the old listener stopped serving");
    assert!(std::net::TcpStream::connect(&elsewhere).is_err(), "a new listener was opened");
}

#[test]
fn after_log_rotation_a_reload_opens_the_access_log_again() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("logged-key", &[("app", "acme")]);
    let dir = tempfile::tempdir().unwrap();
    let (log, rotated) = (dir.path().join("access.log"), dir.path().join("access.log.1"));
    let gateway =
        Setup::redis(&redis, &upstream).extra(&format!("access_log: {{path: {}}}", log.display())).start();
    let lines_in = |path: &std::path::Path, needle: &str| {
        std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
    };
    assert_eq!(gateway.get("/before-rotation", &[("X-ApiKey", "logged-key")]).status, 200);
    assert!(eventually(Duration::from_secs(3), || lines_in(&log, "/before-rotation") == 1).is_some());

    // logrotate moves the file away, then reloads.
    std::fs::rename(&log, &rotated).unwrap();
    gateway.reload(|yaml| yaml);
    assert_eq!(gateway.get("/after-rotation", &[("X-ApiKey", "logged-key")]).status, 200);
    assert!(
        eventually(Duration::from_secs(3), || lines_in(&log, "/after-rotation") == 1).is_some(),
        "no line in a new file at the configured path"
    );
    assert_eq!(lines_in(&rotated, "/after-rotation"), 0);
    assert_eq!(lines_in(&rotated, "/before-rotation"), 1);
    assert_eq!(lines_in(&log, "/before-rotation"), 0);
}
