//! Documented promises that no other area covers, each seen from the outside: key expiry
//! (set by `keys add --expires`, and passing while the key is cached), a non-default Redis
//! prefix, `api_key.forward: false`, the HTTP health check, the connect timeout, the default
//! thread count, the auth listener's 503s, and guarantee 8 behind both shipped nginx snippets.

use crate::support::http::{self, Response};
use crate::support::nginx::Nginx;
use crate::support::{self, eventually, Redis, Setup, Upstream};

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn keygate(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keygate")).args(args).arg("-c").arg(config).output().unwrap()
}

fn id_of(key: &str) -> String {
    keygate::key::ApiKey::from_cli(key).id().to_hex()
}

/// The wall clock as the gateway reads it for `expires`, with the fraction kept.
fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

// === expiry ===

/// Sends `key` every 20 ms until a second after `expires`, and checks each answer against the
/// clock: forwarded only if sent before `expires`, refused as disabled only if answered at or
/// after it. So the key works up to that second and is refused from it on, not later.
fn watch_expiry(gateway: &support::Gateway, key: &str, expires: u64) {
    let (mut forwarded, mut refused) = (0, 0);
    while unix_now() < expires as f64 + 1.0 {
        let sent = unix_now();
        let response = gateway.with_key(key);
        let answered = unix_now();
        if response.status == 200 {
            assert!(
                sent < expires as f64,
                "forwarded a request sent at {sent:.3}, after `expires` {expires}"
            );
            forwarded += 1;
        } else {
            response.assert_rejected(403, "disabled_api_key");
            assert!(answered >= expires as f64, "refused at {answered:.3}, before `expires` {expires}");
            refused += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(forwarded > 0, "the key was never forwarded before it expired");
    assert!(refused > 0, "the key was never refused after it expired");
}

#[test]
fn keys_add_with_expires_makes_a_key_that_works_until_that_second() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    let key = "expiring-cli-key-5d1c";
    let expires = unix_now() as u64 + 3;
    let added =
        keygate(&gateway.config, &["keys", "add", key, "--app", "acme", "--expires", &expires.to_string()]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let stored: Option<String> = redis::cmd("HGET")
        .arg(format!("keygate:key:{}", id_of(key)))
        .arg("expires")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(stored, Some(expires.to_string()), "the record's `expires` field");
    let shown = keygate(&gateway.config, &["keys", "show", key]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("expires: {expires}")));

    let accepted = eventually(Duration::from_secs(1), || gateway.with_key(key).status == 200);
    assert!(accepted.is_some(), "the added key was not accepted within a second");
    watch_expiry(&gateway, key, expires);
    gateway.assert_no_key_in_logs(&[key]);
}

#[test]
fn a_key_whose_expiry_passes_while_cached_is_refused_at_that_second_without_a_store_read() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let key = "expiring-cached-key-9e42";
    let expires = unix_now() as u64 + 3;
    redis.put_key(key, &[("app", "acme"), ("expires", &expires.to_string())]);
    // The next refresh is five minutes away: only the cached record's own `expires` can end it.
    let gateway = Setup::redis(&redis, &upstream).extra("cache: {ttl_s: 300}").start();
    assert_eq!(gateway.with_key(key).status, 200);
    redis.reset_stats();
    watch_expiry(&gateway, key, expires);
    assert_eq!(redis.reads(), 0, "the expired key was looked up again: it was not judged from the cache");
    gateway.assert_no_key_in_logs(&[key]);
}

// === store.redis.prefix ===

/// A prefix with glob characters, which the filter's SCAN must take literally.
const PREFIX: &str = "acme[7]:";

fn put_at(redis: &Redis, prefix: &str, key: &str, fields: &[(&str, &str)]) {
    let mut hset = redis::cmd("HSET");
    hset.arg(format!("{prefix}key:{}", id_of(key)));
    for (field, value) in fields {
        hset.arg(*field).arg(*value);
    }
    let _: () = hset.query(&mut redis.connection()).unwrap();
}

/// Publishes `message` on `channel`; how many subscribers got it.
fn publish(redis: &Redis, channel: &str, message: &str) -> u64 {
    redis::cmd("PUBLISH").arg(channel).arg(message).query(&mut redis.connection()).unwrap()
}

#[test]
fn a_non_default_prefix_names_the_records_and_the_invalidation_channel() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    put_at(&redis, PREFIX, "prefixed-key", &[("app", "acme")]);
    put_at(&redis, "keygate:", "default-prefix-key", &[("app", "other")]);
    let mut setup = Setup::redis(&redis, &upstream);
    setup.store =
        format!("  redis:\n    url: {}\n    prefix: \"{PREFIX}\"\n    timeout_ms: 50\n", redis.url());
    let gateway = setup.start();

    assert_eq!(gateway.with_key("prefixed-key").text(), r#"{"app":"acme","bytes":0}"#);
    gateway.with_key("default-prefix-key").assert_rejected(403, "unknown_api_key");
    assert_eq!(gateway.metric("keygate_filter_keys"), 1.0, "the filter was built from other records");

    // The gateway listens on `{prefix}invalidate`, and only there.
    let channels: Vec<String> = redis::cmd("PUBSUB").arg("CHANNELS").query(&mut redis.connection()).unwrap();
    assert_eq!(channels, [format!("{PREFIX}invalidate")]);
    put_at(&redis, PREFIX, "prefixed-key", &[("status", "revoked")]);
    assert_eq!(publish(&redis, "keygate:invalidate", &id_of("prefixed-key")), 0);
    assert_eq!(gateway.with_key("prefixed-key").status, 200, "cached until announced");
    assert_eq!(publish(&redis, &format!("{PREFIX}invalidate"), &id_of("prefixed-key")), 1);
    let refused = eventually(Duration::from_secs(1), || gateway.with_key("prefixed-key").status == 403);
    assert!(refused.is_some(), "the announcement on the prefixed channel was not applied within a second");
    gateway.with_key("prefixed-key").assert_rejected(403, "disabled_api_key");

    // `keys add` writes and announces under the prefix too.
    let added = keygate(&gateway.config, &["keys", "add", "cli-prefixed-key", "--app", "beta"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let record = format!("{PREFIX}key:{}", id_of("cli-prefixed-key"));
    assert!(redis.keys().contains(&record), "{record} not in {:?}", redis.keys());
    let accepted = eventually(Duration::from_secs(1), || gateway.with_key("cli-prefixed-key").status == 200);
    assert!(accepted.is_some(), "the key added under the prefix was not accepted within a second");
    gateway.assert_no_key_in_logs(&["prefixed-key", "default-prefix-key", "cli-prefixed-key"]);
}

// === api_key.forward ===

#[test]
fn with_forward_false_the_key_is_stripped_from_header_and_query_before_the_upstream() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let key = "unforwarded-key-31b7";
    redis.put_key(key, &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).extra("api_key:\n  forward: false").start();

    let sent: [(String, Vec<(&str, &str)>); 5] = [
        ("/ingest?x=1".into(), vec![("X-ApiKey", key), ("X-Other", "kept")]),
        ("/ingest".into(), vec![("x-apikey", key), ("X-APIKEY", key)]),
        (format!("/ingest?a=1&apikey={key}&b=2"), vec![]),
        (format!("/ingest?apikey={key}"), vec![]),
        // The header decides; the query's copy goes too.
        (format!("/ingest?apikey={key}&z=1"), vec![("X-ApiKey", key)]),
    ];
    for (path, headers) in &sent {
        assert_eq!(gateway.get(path, headers).status, 200, "{path}");
    }
    let seen = upstream.received();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/ingest?x=1", "/ingest", "/ingest?a=1&b=2", "/ingest", "/ingest?z=1"]);
    assert_eq!(seen[0].header_values("x-other"), ["kept"], "other headers go on");
    for request in &seen {
        assert!(request.header_values("x-apikey").is_empty(), "the key header reached the upstream");
        assert_eq!(request.header_values("x-keygate-app"), ["acme"]);
        let everything = format!("{} {:?}", request.target, request.headers);
        assert!(!everything.contains(key), "the key reached the upstream: {everything}");
    }
}

// === upstream.health_check ===

/// A peer that answers 200 to everything but `sick_path`, where it answers 503; it records
/// every request line it gets. A tcp check, or an http check on another path, would pass it.
fn sick_peer(sick_path: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let journal = Arc::clone(&seen);
    http::serve_each(listener, move |line| {
        journal.lock().unwrap().push(line.trim_end().to_string());
        match line.split_whitespace().nth(1) == Some(sick_path) {
            true => "503 Service Unavailable",
            false => "200 OK",
        }
    });
    (addr, seen)
}

#[test]
fn an_http_health_check_asks_its_path_and_a_peer_failing_it_gets_no_traffic() {
    let (redis, healthy) = (Redis::start(), Upstream::start());
    redis.put_key("health-key", &[("app", "acme")]);
    let (sick, sick_saw) = sick_peer("/deep-health");
    let mut setup = Setup::redis(&redis, &healthy).rewrite(
        "health_check: {kind: tcp, interval_ms: 200}",
        "health_check: {kind: http, path: /deep-health, interval_ms: 200}",
    );
    setup.peers = vec![sick.to_string(), healthy.addr.to_string()];
    let gateway = setup.start();
    let health = |peer: SocketAddr| gateway.metric(&format!("keygate_upstream_healthy{{peer=\"{peer}\"}}"));
    let judged = eventually(Duration::from_secs(5), || health(sick) == 0.0 && health(healthy.addr) == 1.0);
    assert!(judged.is_some(), "the sick peer was never marked down:\n{}", gateway.metrics());
    assert!(sick_saw.lock().unwrap().iter().any(|l| l == "GET /deep-health HTTP/1.1"), "{:?}", sick_saw);
    assert!(
        healthy.received().iter().any(|r| r.target == "/deep-health"),
        "the healthy peer was not checked"
    );

    for n in 0..20 {
        assert_eq!(gateway.with_key("health-key").text(), r#"{"app":"acme","bytes":0}"#, "request {n}");
    }
    assert_eq!(healthy.received().iter().filter(|r| r.target == "/ingest").count(), 20);
    let traffic: Vec<String> =
        sick_saw.lock().unwrap().iter().filter(|l| !l.contains("/deep-health")).cloned().collect();
    assert!(traffic.is_empty(), "the peer failing its check got traffic: {traffic:?}");
}

// === upstream.connect_timeout_ms ===

/// A peer that accepts no connection: a listener with a backlog of 0 whose queue is kept full
/// and never accepted from, so the kernel drops every further SYN and a connect hangs until the
/// connecting side gives up (Linux retries a SYN for about two minutes).
struct Blackhole {
    addr: SocketAddr,
    listener: socket2::Socket,
    queued: Vec<TcpStream>,
}

impl Blackhole {
    fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        listener.listen(0).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        Blackhole { addr, listener, queued: Vec::new() }
    }

    /// Accepts one connection (the gateway's first health check, which must pass, or the
    /// peer would be skipped without a connect), then fills the accept queue.
    fn stop_accepting_after_first_connection(&mut self) {
        let checked = eventually(Duration::from_secs(10), || self.listener.accept().is_ok());
        assert!(checked.is_some(), "the gateway never checked the peer");
        while let Ok(stream) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(300)) {
            self.queued.push(stream);
            assert!(self.queued.len() < 16, "the accept queue never filled");
        }
    }
}

/// How long a request to a gateway whose only peer is a [`Blackhole`] takes to be answered 502.
fn time_to_give_up(gateway: &support::Gateway) -> Duration {
    let started = Instant::now();
    let response = http::request(gateway.addr, "GET", "/ingest", &[("X-ApiKey", "timeout-key")], b"")
        .unwrap_or_else(|e| {
            panic!("no answer after {:?} ({e}): the connect was never given up", started.elapsed())
        });
    let took = started.elapsed();
    assert_eq!(response.status, 502, "{}", response.text());
    took
}

#[test]
fn a_peer_that_accepts_no_connection_is_given_up_on_after_connect_timeout_ms() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("timeout-key", &[("app", "acme")]);
    let mut blackhole = Blackhole::new();
    // One health check at start, the next one ten minutes later.
    let mut setup = Setup::redis(&redis, &upstream).health_interval_ms(600_000);
    setup.peers = vec![blackhole.addr.to_string()];
    let gateway = setup.start();
    blackhole.stop_accepting_after_first_connection();
    assert_eq!(gateway.metric(&format!("keygate_upstream_healthy{{peer=\"{}\"}}", blackhole.addr)), 1.0);

    // The harness's 300 ms, then a reload's 1500 ms.
    let took = time_to_give_up(&gateway);
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1000),
        "gave up after {took:?}"
    );
    gateway.reload(|yaml| yaml.replace("connect_timeout_ms: 300", "connect_timeout_ms: 1500"));
    assert_eq!(gateway.metric(r#"keygate_config_reloads_total{result="ok"}"#), 1.0);
    let took = time_to_give_up(&gateway);
    assert!(
        took >= Duration::from_millis(1450) && took < Duration::from_millis(2500),
        "gave up after {took:?}"
    );
    assert_eq!(upstream.count(), 0);
}

// === threads ===

/// The worker threads of the proxy's runtime: Pingora names them after the service.
fn proxy_threads(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|name| name.trim() == "keygate proxy")
        })
        .count()
}

/// The CPUs this thread may run on, from `/proc/thread-self/status` (e.g. `0-1` or `0,2-3`).
fn first_allowed_cpu() -> u32 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim();
    list.split([',', '-']).next().unwrap().parse().unwrap()
}

#[test]
fn without_threads_the_gateway_runs_one_worker_per_cpu() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let default_threads = || Setup::redis(&redis, &upstream).rewrite("threads: 2\n", "");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let gateway = default_threads().start();
    assert_eq!(proxy_threads(gateway.pid()), cpus, "with {cpus} CPUs");
    drop(gateway);

    // On one CPU (an affinity the child inherits from the thread that starts it): one worker.
    // This is what tells "the CPU count" from a fixed number on a small machine.
    let pinned = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let tid = std::fs::read_link("/proc/thread-self").unwrap();
                let tid = tid.file_name().unwrap().to_str().unwrap().to_string();
                let cpu = first_allowed_cpu().to_string();
                let pinned = Command::new("taskset").args(["-pc", &cpu, &tid]).output();
                let pinned = pinned.expect("taskset is installed (util-linux)");
                assert!(pinned.status.success(), "{}", String::from_utf8_lossy(&pinned.stderr));
                assert_eq!(std::thread::available_parallelism().unwrap().get(), 1);
                default_threads().start()
            })
            .join()
            .unwrap()
    });
    assert_eq!(proxy_threads(pinned.pid()), 1, "on one CPU");
}

/// `work_stealing`, on or off: the proxy runs the configured workers either way, and forwards
/// with the app, for two apps in turn (the proxy keeps each worker's last app's header value).
#[test]
fn either_runtime_runs_the_configured_workers_and_forwards() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("runtime-key-acme", &[("app", "acme")]);
    redis.put_key("runtime-key-zeta", &[("app", "zeta")]);
    for stealing in [true, false] {
        let setup = Setup::redis(&redis, &upstream).extra(&format!("work_stealing: {stealing}\n"));
        let gateway = setup.start();
        assert_eq!(proxy_threads(gateway.pid()), 2, "work_stealing: {stealing}");
        for (key, app) in
            [("runtime-key-acme", "acme"), ("runtime-key-zeta", "zeta"), ("runtime-key-acme", "acme")]
        {
            let before = upstream.count();
            assert_eq!(gateway.with_key(key).status, 200, "work_stealing: {stealing}");
            assert_eq!(upstream.count(), before + 1);
            let received = upstream.received();
            let last = received.last().expect("the request reached the upstream");
            assert_eq!(last.header_values("x-keygate-app"), [app]);
        }
    }
}

// === the auth listener's 503s ===

/// The documented 503 on the auth listener: JSON, `Retry-After`, and the code again in
/// `X-Keygate-Error` for nginx.
fn assert_auth_503(response: &Response, code: &str) {
    response.assert_rejected(503, code);
    assert_eq!(response.retry_after(), 1);
    assert_eq!(response.header("x-keygate-error"), Some(code));
}

#[test]
fn the_auth_listener_answers_503_overloaded_and_key_store_unavailable_with_retry_after() {
    let (mut redis, upstream) = (Redis::start(), Upstream::start());
    for key in ["held-key", "shed-key", "down-key"] {
        redis.put_key(key, &[("app", "acme")]);
    }
    let auth: SocketAddr = format!("127.0.0.1:{}", support::free_port()).parse().unwrap();
    let mut setup = Setup::redis(&redis, &upstream)
        .extra(&format!("auth_listen: \"{auth}\"\ntrusted_proxies: [127.0.0.1/32]"));
    setup.store = format!("  redis:\n    url: {}\n    timeout_ms: 1500\n    max_inflight: 1\n", redis.url());
    let gateway = setup.start();
    let ask =
        move |key: &'static str| http::request(auth, "GET", "/_keygate", &[("X-ApiKey", key)], b"").unwrap();

    // One lookup holds the only permit on a frozen store; the next is shed at once.
    redis.freeze();
    let held = std::thread::spawn(move || ask("held-key"));
    let holding =
        eventually(Duration::from_secs(3), || gateway.metric("keygate_store_lookups_in_flight") == 1.0);
    assert!(holding.is_some(), "the first lookup never was in flight");
    let started = Instant::now();
    let shed = ask("shed-key");
    assert!(started.elapsed() < Duration::from_millis(1000), "a shed lookup waited {:?}", started.elapsed());
    assert_auth_503(&shed, "overloaded");
    assert_auth_503(&held.join().unwrap(), "key_store_unavailable");
    redis.thaw();

    // The store gone: the same answer, and through the shipped nginx snippet the client gets it.
    redis.kill();
    assert_auth_503(&ask("down-key"), "key_store_unavailable");
    let nginx = Nginx::start(
        "nginx-auth-request.conf",
        &[
            ("server 127.0.0.1:6190;", format!("server {auth};")),
            ("server 127.0.0.1:8080;", format!("server {};", upstream.addr)),
        ],
    );
    let through = http::request(nginx.addr, "GET", "/ingest", &[("X-ApiKey", "down-key")], b"").unwrap();
    through.assert_rejected(503, "key_store_unavailable");
    assert_eq!(through.retry_after(), 1);

    let outcome = |o: &str| format!("keygate_requests_total{{outcome=\"{o}\"}}");
    assert_eq!(gateway.settled_metric(&outcome("overloaded"), 1.0), 1.0);
    assert_eq!(gateway.settled_metric(&outcome("store_unavailable"), 3.0), 3.0);
    assert_eq!(upstream.count(), 0);
}

// === guarantee 8 behind nginx ===

/// What reached the upstream under names beginning with `x-keygate-`.
fn keygate_headers(upstream: &Upstream) -> Vec<(String, String)> {
    let seen = upstream.received();
    assert_eq!(seen.len(), 1, "one request forwarded");
    seen[0].headers.iter().filter(|(name, _)| name.starts_with("x-keygate-")).cloned().collect()
}

/// Forged `X-Keygate-*` headers in several spellings, beside a valid key.
const FORGED: [(&str, &str); 5] = [
    ("X-ApiKey", "valid-key"),
    ("X-Keygate-App", "forged"),
    ("X-Keygate-Foo", "forged"),
    ("x-keygate-tenant", "forged"),
    ("X-KEYGATE-ERROR", "forged"),
];

#[test]
fn behind_either_shipped_nginx_snippet_only_keygates_own_x_keygate_app_reaches_the_upstream() {
    let redis = Redis::start();
    redis.put_key("valid-key", &[("app", "acme")]);
    let only_ours = vec![("x-keygate-app".to_string(), "acme".to_string())];

    // auth_request: nginx proxies itself, so the snippet must clear the client's headers.
    let upstream = Upstream::start();
    let auth = format!("127.0.0.1:{}", support::free_port());
    let _gateway = Setup::redis(&redis, &upstream)
        .extra(&format!("auth_listen: \"{auth}\"\ntrusted_proxies: [127.0.0.1/32]"))
        .start();
    let nginx = Nginx::start(
        "nginx-auth-request.conf",
        &[
            ("server 127.0.0.1:6190;", format!("server {auth};")),
            ("server 127.0.0.1:8080;", format!("server {};", upstream.addr)),
        ],
    );
    let response = http::request(nginx.addr, "GET", "/ingest", &FORGED, b"").unwrap();
    assert_eq!(response.text(), r#"{"app":"acme","bytes":0}"#, "{}", nginx.error_log());
    assert_eq!(keygate_headers(&upstream), only_ours, "auth_request mode");

    // nginx in front of the proxy: keygate removes them itself.
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keygate.sock");
    let _gateway = Setup::redis(&redis, &upstream)
        .listen(&format!("unix:{}", socket.display()))
        .extra("trusted_proxies: [127.0.0.1/32]")
        .start();
    let nginx = Nginx::start(
        "nginx-proxy.conf",
        &[("unix:/run/keygate/keygate.sock", format!("unix:{}", socket.display()))],
    );
    let response = http::request(nginx.addr, "GET", "/ingest", &FORGED, b"").unwrap();
    assert_eq!(response.text(), r#"{"app":"acme","bytes":0}"#, "{}", nginx.error_log());
    assert_eq!(keygate_headers(&upstream), only_ours, "proxy mode");
}
