//! Stopping and upgrading a running gateway without losing a request, and the shipped unit.

use crate::support::http::{self, Connection};
use crate::support::{self, Gateway, Redis, Setup, Upstream};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A gateway on Redis that knows `key` (app `acme`), with 3 s for a stop's in-flight work.
fn stopping_slowly(key: &str) -> (Redis, Upstream, Gateway) {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key(key, &[("app", "acme")]);
    let gateway = Setup::redis(&redis, &upstream).grace_period_s(3).start();
    (redis, upstream, gateway)
}

#[test]
fn sigterm_lets_a_slow_upload_in_flight_finish_then_exits() {
    let (_redis, upstream, mut gateway) = stopping_slowly("upload-key");

    let mut upload = Connection::open(gateway.addr).unwrap();
    let body = vec![b'x'; 30_000];
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: t\r\nX-ApiKey: upload-key\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = upload.stream();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..10_000]).unwrap();
    gateway.wait_accepted(upload.stream());

    assert_eq!(gateway.pid_in_file(), Some(gateway.pid()), "the pid file does not name the process");
    gateway.terminate();
    // The rest of the body after the stop began, at a slow client's pace.
    for chunk in body[10_000..].chunks(10_000) {
        upload.stream().write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let response = upload.read_response().unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), r#"{"app":"acme","bytes":30000}"#);
    assert_eq!(upstream.received()[0].body.len(), 30_000);
    let status = gateway.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "exited with {status:?}");
    assert!(http::get(gateway.addr, "/").is_err(), "still accepting after the stop");
    assert!(!gateway.logs().contains("panicked"), "the stop panicked:\n{}", gateway.logs());
    assert_eq!(gateway.pid_in_file(), None, "the pid file outlived the process");
}

#[test]
fn a_connection_accepted_before_a_stop_is_answered_when_its_request_comes_after() {
    let (_redis, upstream, mut gateway) = stopping_slowly("late-key");
    // Accepted, and silent when the stop begins: the request that was on its way arrives after.
    let mut early = Connection::open(gateway.addr).unwrap();
    gateway.wait_accepted(early.stream());
    gateway.terminate();
    let response = early.request("POST", "/ingest", &[("X-ApiKey", "late-key")], b"{}").unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"), "a stopping gateway keeps connections");
    assert_eq!(upstream.count(), 1);
    let status = gateway.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "exited with {status:?}");
}

const UPGRADES: usize = 20;

#[test]
fn a_graceful_upgrade_under_steady_load_fails_no_request() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("steady-key", &[("app", "acme")]);
    let mut gateway = Setup::redis(&redis, &upstream).start();
    let running = Arc::new(AtomicBool::new(true));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // Two clients open a connection per request (a stop must not drop one just accepted); a
    // third keeps its connection and opens another only when told `Connection: close`.
    let clients: Vec<_> = [false, false, true]
        .into_iter()
        .map(|keep_alive| {
            let (running, sent, failed, addr) = (running.clone(), sent.clone(), failed.clone(), gateway.addr);
            let failures = failures.clone();
            std::thread::spawn(move || {
                let mut connection: Option<Connection> = None;
                while running.load(Ordering::SeqCst) {
                    let answer = match connection.take() {
                        Some(open) => Ok(open),
                        None => Connection::open(addr),
                    }
                    .and_then(|mut open| {
                        let answer =
                            open.request("POST", "/ingest", &[("X-ApiKey", "steady-key")], b"{\"e\":1}");
                        let closing =
                            answer.as_ref().map_or(true, |r| r.header("connection") == Some("close"));
                        if keep_alive && !closing {
                            connection = Some(open);
                        }
                        answer
                    });
                    sent.fetch_add(1, Ordering::SeqCst);
                    if !answer.as_ref().is_ok_and(|r| r.status == 200) {
                        failed.fetch_add(1, Ordering::SeqCst);
                        let what = answer.map(|r| format!("{} {}", r.status, r.text()));
                        failures.lock().unwrap().push(format!("keep-alive {keep_alive}: {what:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    // Each upgrade takes Pingora's fixed 5 s hand-over plus the grace period.
    for _ in 0..UPGRADES {
        std::thread::sleep(Duration::from_millis(300));
        gateway.upgrade();
    }
    std::thread::sleep(Duration::from_millis(300));
    running.store(false, Ordering::SeqCst);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(sent > 100, "only {sent} requests were sent");
    let failures = failures.lock().unwrap();
    assert_eq!(failed, 0, "{failed} of {sent} requests failed across {UPGRADES} upgrades: {failures:?}");
    assert_eq!(upstream.count(), sent);
    assert!(!gateway.logs().contains("panicked"), "an instance panicked:\n{}", gateway.logs());
}

#[test]
fn headers_trickling_in_across_a_stop_are_answered() {
    let (_redis, upstream, mut gateway) = stopping_slowly("slow-key");
    // Half the headers before the stop, the rest after it, as a slow client on a bad network.
    let mut slow = Connection::open(gateway.addr).unwrap();
    let head = "POST /ingest HTTP/1.1\r\nHost: t\r\nX-ApiKey: slow-key\r\nContent-Length: 2\r\n\r\n{}";
    let (first, rest) = head.split_at(30);
    slow.stream().write_all(first.as_bytes()).unwrap();
    gateway.wait_accepted(slow.stream());
    gateway.terminate();
    slow.stream().write_all(rest.as_bytes()).unwrap();
    let response = slow.read_response().unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(upstream.count(), 1);
    let status = gateway.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "exited with {status:?}");
}

#[test]
fn the_shipped_systemd_unit_passes_systemd_analyze_verify() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/keygate.service")).unwrap();
    for hardening in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(hardening), "the unit lacks {hardening}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/keygate", env!("CARGO_BIN_EXE_keygate"))).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output();
    let out = out.expect("systemd-analyze is installed (make test installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
}

#[test]
fn a_second_start_on_the_same_pid_file_is_refused_and_the_file_keeps_naming_the_first() {
    let (_redis, _upstream, gateway) = stopping_slowly("any-key");
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("-c")
        .arg(&gateway.config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = support::eventually(Duration::from_secs(10), || second.try_wait().ok().flatten().is_some());
    if exited.is_none() {
        let _ = second.kill();
    }
    let status = second.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("names a running keygate"), "{stderr}");
    assert_eq!(gateway.pid_in_file(), Some(gateway.pid()));
    assert_eq!(gateway.get("/", &[("X-ApiKey", "any-key")]).status, 200);
}
