//! The ingestion nodes misbehave: dead, hung, resetting mid-response, all down. The client gets
//! a timely 502/504 or a connection it can tell was cut, never a truncated 2xx taken as whole.

use crate::support::http::{self, Connection};
use crate::support::{self, eventually, Redis, Setup, Upstream};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
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
