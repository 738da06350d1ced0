//! The ingestion nodes misbehave: dead, hung, resetting mid-response, all down. The client gets
//! a timely 502/504 or a connection it can tell was cut, never a truncated 2xx taken as whole.

use crate::support::http::{self, Connection};
use crate::support::{self, eventually, Redis, Setup, Upstream};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A peer that accepts and reads, then behaves as `on_request` says.
fn odd_peer(on_request: fn(&mut std::net::TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                if stream.read(&mut buf).unwrap_or(0) > 0 {
                    on_request(&mut stream);
                }
            });
        }
    });
    addr
}

fn hang(stream: &mut std::net::TcpStream) {
    std::thread::sleep(Duration::from_secs(30));
    let _ = stream.flush();
}

fn reset_mid_body(stream: &mut std::net::TcpStream) {
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial");
    let _ = stream.flush();
    std::thread::sleep(Duration::from_millis(50));
    let socket = socket2::SockRef::from(&*stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A key distinctive enough that finding it in the logs cannot be a coincidence.
const KEY: &str = "upstream-fault-key-7f3a";

/// Guarantee 7 on the error path: Pingora logged a summary of every failed request (where its
/// default summary would hold the query string, key and all), and no key is in the logs.
fn assert_failures_logged_without_the_key(gateway: &support::Gateway, failed: usize) {
    let logged = eventually(Duration::from_secs(2), || {
        gateway.logs().lines().filter(|l| l.contains("Fail to proxy") && l.ends_with(" /ingest")).count()
            >= failed
    });
    assert!(logged.is_some(), "fewer than {failed} failures were logged:\n{}", gateway.logs());
    gateway.assert_no_key_in_logs(&[KEY]);
}

fn gateway_with_peers(redis: &Redis, peers: Vec<String>, read_timeout_ms: u64) -> support::Gateway {
    gateway_of(Setup::redis(redis, &Upstream::start()), peers, read_timeout_ms)
}

fn gateway_of(mut setup: Setup, peers: Vec<String>, read_timeout_ms: u64) -> support::Gateway {
    setup.peers = peers;
    let gateway = setup.start();
    gateway
        .reload(|yaml| yaml.replace("read_timeout_ms: 5000", &format!("read_timeout_ms: {read_timeout_ms}")));
    gateway
}

#[test]
fn a_hung_peer_is_answered_by_read_timeout_not_never() {
    let redis = Redis::start();
    redis.put_key(KEY, &[("app", "acme")]);
    let gateway = gateway_with_peers(&redis, vec![odd_peer(hang).to_string()], 500);
    let started = Instant::now();
    let response = gateway.with_key(KEY);
    assert!(response.status == 502 || response.status == 504, "answered {}", response.status);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "took {took:?}");
    // Pingora logs a summary of a request that failed upstream: a query key must not be in it.
    let response = gateway.get(&format!("/ingest?apikey={KEY}&x=1"), &[]);
    assert!(response.status == 502 || response.status == 504, "answered {}", response.status);
    assert!(gateway.settled_metric(r#"keygate_requests_total{outcome="upstream_error"}"#, 2.0) >= 2.0);
    assert_failures_logged_without_the_key(&gateway, 2);
}

#[test]
fn a_peer_that_resets_mid_response_never_yields_a_whole_2xx() {
    let redis = Redis::start();
    redis.put_key(KEY, &[("app", "acme")]);
    let gateway = gateway_with_peers(&redis, vec![odd_peer(reset_mid_body).to_string()], 2000);
    let query_target = format!("/ingest?apikey={KEY}");
    for n in 0..6 {
        let mut connection = Connection::open(gateway.addr).unwrap();
        let (target, headers): (&str, &[(&str, &str)]) =
            if n % 2 == 0 { ("/ingest", &[("X-ApiKey", KEY)]) } else { (&query_target, &[]) };
        // An error is the client seeing the cut (it will retry); a whole 2xx would be a lie.
        if let Ok(response) = connection.request("GET", target, headers, b"") {
            assert!(
                !(200..300).contains(&response.status),
                "a truncated 2xx was delivered whole: {} {:?}",
                response.status,
                response.text()
            );
        }
    }
    assert_eq!(http::get(gateway.admin, "/healthz").unwrap().status, 200, "the gateway is still up");
    assert!(!gateway.logs().contains("panicked"));
    assert_failures_logged_without_the_key(&gateway, 6);
}

#[test]
fn a_dead_peer_is_marked_unhealthy_and_traffic_flows_to_the_rest() {
    let redis = Redis::start();
    redis.put_key("valid-key", &[("app", "acme")]);
    let live = Upstream::start();
    let dead = format!("127.0.0.1:{}", support::free_port());
    let mut setup = Setup::redis(&redis, &live);
    setup.peers = vec![dead.clone(), live.addr.to_string()];
    let gateway = setup.start();
    let marked = eventually(Duration::from_secs(3), || {
        gateway.try_metric(&format!("keygate_upstream_healthy{{peer=\"{dead}\"}}")) == Some(0.0)
            && gateway.try_metric(&format!("keygate_upstream_healthy{{peer=\"{}\"}}", live.addr)) == Some(1.0)
    });
    assert!(marked.is_some(), "the health check never marked the dead peer");
    for _ in 0..20 {
        assert_eq!(gateway.with_key("valid-key").status, 200);
    }
    assert_eq!(live.count(), 20);
}

#[test]
fn with_every_peer_down_the_answer_is_a_fast_502() {
    let redis = Redis::start();
    redis.put_key(KEY, &[("app", "acme")]);
    let peers: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", support::free_port())).collect();
    // One health check, at start; the next is ten minutes away.
    let setup = Setup::redis(&redis, &Upstream::start()).health_interval_ms(600_000);
    let gateway = gateway_of(setup, peers.clone(), 1000);
    let series = |peer: &String| format!("keygate_upstream_healthy{{peer=\"{peer}\"}}");
    let marked = eventually(Duration::from_secs(5), || {
        peers.iter().all(|peer| gateway.try_metric(&series(peer)) == Some(0.0))
    });
    assert!(marked.is_some(), "the health check never marked every peer down:\n{}", gateway.metrics());
    // From now on the peers' ports answer, and a connection there is seen: a fast 502 is one
    // that tries no peer marked down (how fast in milliseconds is a benchmark's figure).
    let watchers: Vec<TcpListener> = peers
        .iter()
        .map(|peer| {
            let watcher = TcpListener::bind(peer).unwrap();
            watcher.set_nonblocking(true).unwrap();
            watcher
        })
        .collect();
    for _ in 0..5 {
        assert_eq!(gateway.with_key(KEY).status, 502);
    }
    for _ in 0..3 {
        assert_eq!(gateway.get(&format!("/ingest?apikey={KEY}"), &[]).status, 502);
    }
    for (peer, watcher) in peers.iter().zip(&watchers) {
        assert!(watcher.accept().is_err(), "a request went to {peer}, marked down");
        assert_eq!(gateway.metric(&series(peer)), 0.0, "a health check ran meanwhile");
    }
    let response = http::get(gateway.admin, "/readyz").unwrap();
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(gateway.settled_metric(r#"keygate_requests_total{outcome="upstream_error"}"#, 8.0), 8.0);
    assert_failures_logged_without_the_key(&gateway, 8);
}

/// A peer whose health can be switched: `/health` answers 200 while `up` is set and 503
/// otherwise; every other request is answered 200 and counted in `served`.
struct Switchable {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

impl Switchable {
    fn start() -> Switchable {
        Switchable::on("127.0.0.1:0".parse().unwrap())
    }

    fn on(addr: SocketAddr) -> Switchable {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, served) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
        let (up_, served_) = (Arc::clone(&up), Arc::clone(&served));
        http::serve_each(listener, move |line| match line.split_whitespace().nth(1) {
            Some("/health") if up_.load(Ordering::SeqCst) => "200 OK",
            Some("/health") => "503 Service Unavailable",
            _ => {
                served_.fetch_add(1, Ordering::SeqCst);
                "200 OK"
            }
        });
        Switchable { addr, up, served }
    }
}

#[test]
fn a_peer_that_fails_its_check_is_skipped_and_picked_again_once_it_passes() {
    let (redis, live) = (Redis::start(), Upstream::start());
    redis.put_key(KEY, &[("app", "acme")]);
    let switchable = Switchable::start();
    let mut setup = Setup::redis(&redis, &live).rewrite(
        "health_check: {kind: tcp, interval_ms: 200}",
        "health_check: {kind: http, path: /health, interval_ms: 200}",
    );
    setup.peers = vec![switchable.addr.to_string(), live.addr.to_string()];
    let gateway = setup.start();
    let health = |peer: SocketAddr| gateway.metric(&format!("keygate_upstream_healthy{{peer=\"{peer}\"}}"));
    let forwarded_to_live = || live.received().iter().filter(|r| r.target == "/ingest").count();
    // Round robin over two healthy peers: an even run of requests is split evenly.
    let send = |n: usize| {
        for i in 0..n {
            assert_eq!(gateway.with_key(KEY).status, 200, "request {i}");
        }
    };

    assert_eq!((health(switchable.addr), health(live.addr)), (1.0, 1.0));
    send(10);
    assert_eq!((switchable.served.load(Ordering::SeqCst), forwarded_to_live()), (5, 5));

    switchable.up.store(false, Ordering::SeqCst);
    let down = eventually(Duration::from_secs(5), || health(switchable.addr) == 0.0);
    assert!(down.is_some(), "the failing peer was never marked down:\n{}", gateway.metrics());
    send(20);
    assert_eq!(switchable.served.load(Ordering::SeqCst), 5, "the peer failing its check got traffic");
    assert_eq!(forwarded_to_live(), 25);
    assert_eq!(http::get(gateway.admin, "/readyz").unwrap().status, 200, "one peer is enough");

    switchable.up.store(true, Ordering::SeqCst);
    let up = eventually(Duration::from_secs(5), || health(switchable.addr) == 1.0);
    assert!(up.is_some(), "the peer passing its check again was never marked up:\n{}", gateway.metrics());
    send(20);
    assert_eq!(switchable.served.load(Ordering::SeqCst), 15, "the recovered peer got no share");
    assert_eq!(forwarded_to_live(), 35);
}

#[test]
fn a_peer_passed_over_after_a_failed_connect_is_still_picked_when_no_other_is_left() {
    let redis = Redis::start();
    redis.put_key(KEY, &[("app", "acme")]);
    // The only peer: listening at start, so the one health check (the next is ten minutes
    // away) passes it, and never accepting.
    let listening = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listening.local_addr().unwrap();
    let mut setup = Setup::redis(&redis, &Upstream::start()).health_interval_ms(600_000);
    setup.peers = vec![addr.to_string()];
    let gateway = setup.start();
    listening.set_nonblocking(true).unwrap();
    let checked = eventually(Duration::from_secs(5), || listening.accept().is_ok());
    assert!(checked.is_some(), "the gateway never checked the peer");

    // The peer goes away: the connect fails, and the peer is passed over for a second.
    drop(listening);
    assert_eq!(gateway.with_key(KEY).status, 502);
    let failed = Instant::now();
    // It is back at once: passed over or not, it is the only peer left, so it is tried.
    let back = Switchable::on(addr);
    let response = gateway.with_key(KEY);
    assert!(failed.elapsed() < Duration::from_millis(900), "the pass-over ended: nothing was tested");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(back.served.load(Ordering::SeqCst), 1);
    assert_eq!(
        gateway.metric(&format!("keygate_upstream_healthy{{peer=\"{addr}\"}}")),
        1.0,
        "a health check ran"
    );
}
