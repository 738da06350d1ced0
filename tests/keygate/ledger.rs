//! The promise: an outage is bad, losing inbound data is unacceptable. Clients send uniquely
//! numbered requests with valid keys and retry only what the README calls retryable; one of
//! three ingestion nodes dies and Redis freezes for a second along the way. At the end no valid
//! key was ever refused, every request was accepted, and every accepted one was ingested.

use crate::support::http;
use crate::support::{Redis, Setup, Upstream};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 150;
const KEYS: usize = 40;

#[derive(Default)]
struct Ledger {
    accepted: HashSet<String>,
    refusals: Vec<String>,
    retries: usize,
}

#[test]
fn nothing_valid_is_lost_while_an_upstream_dies_and_redis_freezes() {
    let redis = Redis::start();
    for n in 0..KEYS {
        redis.put_key(&format!("ledger-key-{n}"), &[("app", "acme")]);
    }
    let upstreams: Vec<Upstream> = (0..3).map(|_| Upstream::start()).collect();
    let mut setup = Setup::redis(&redis, &upstreams[0]);
    setup.peers = upstreams.iter().map(|u| u.addr.to_string()).collect();
    let gateway = setup.start();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (ledger, addr) = (Arc::clone(&ledger), gateway.addr);
            std::thread::spawn(move || {
                for n in 0..REQUESTS_PER_CLIENT {
                    let id = format!("c{client}-r{n}");
                    // Keys come into use over the run, so some are first seen while Redis is frozen.
                    let key = format!(
                        "ledger-key-{}",
                        (client * REQUESTS_PER_CLIENT + n) * KEYS / (CLIENTS * REQUESTS_PER_CLIENT)
                    );
                    let body = format!("{{\"id\":\"{id}\"}}");
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        let answer = http::request(
                            addr,
                            "POST",
                            "/ingest",
                            &[("X-ApiKey", &key), ("X-Request-Id", &id)],
                            body.as_bytes(),
                        );
                        let mut ledger = ledger.lock().unwrap();
                        match answer {
                            Ok(r) if r.status == 200 => {
                                ledger.accepted.insert(id.clone());
                                break;
                            }
                            Ok(r) if [429, 502, 503].contains(&r.status) => ledger.retries += 1,
                            Ok(r) => {
                                ledger.refusals.push(format!("{id}: {} {}", r.status, r.text()));
                                break;
                            }
                            // A connection cut under the request: the client cannot know, so retries.
                            Err(_) => ledger.retries += 1,
                        }
                        drop(ledger);
                        assert!(Instant::now() < deadline, "{id} was never accepted");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    // About two seconds in all, so the faults fall in the middle of the run.
                    std::thread::sleep(Duration::from_millis(12));
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    upstreams[1].kill();
    std::thread::sleep(Duration::from_millis(300));
    redis.freeze();
    std::thread::sleep(Duration::from_secs(1));
    redis.thaw();
    clients.into_iter().for_each(|c| c.join().unwrap());

    let ledger = ledger.lock().unwrap();
    assert!(ledger.retries > 0, "no fault was felt: the test proves nothing");
    assert!(ledger.refusals.is_empty(), "valid requests were refused: {:?}", ledger.refusals);
    assert_eq!(ledger.accepted.len(), CLIENTS * REQUESTS_PER_CLIENT, "not every request was accepted");
    let ingested: HashSet<String> = upstreams
        .iter()
        .flat_map(|u| u.received())
        .flat_map(|r| r.header_values("x-request-id").into_iter().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let lost: Vec<_> = ledger.accepted.difference(&ingested).collect();
    assert!(lost.is_empty(), "accepted but never ingested: {lost:?}");
    eprintln!(
        "ledger: {} accepted, {} retries, {} ingested by the node that died",
        ledger.accepted.len(),
        ledger.retries,
        upstreams[1].count()
    );
    gateway.assert_no_key_in_logs(&["ledger-key-"]);
}
