//! The README's quickstart works as written: the shipped demo config (file store, demo keys)
//! run by the real binary, and the README's three curls answered as it says. Only the ports
//! differ: the demo's fixed ones are replaced by free ones, and its upstream by a real one.

use crate::support::{assert_no_used_key_in, eventually, free_port, http, Upstream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The keys the README's curls send.
const KEYS: [&str; 2] = ["demo-key-0001", "nope"];

/// The running demo gateway, killed when the test ends however it ends; then, as for every
/// gateway the tests run, no key sent may be in its log.
struct Demo {
    child: Child,
    log: std::path::PathBuf,
}

impl Demo {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let keys = KEYS.iter().map(|k| k.to_string()).collect();
            assert_no_used_key_in(&self.logs(), &keys, "the demo gateway");
        }
    }
}

/// `text` with `from` replaced by `to`, which it must hold exactly once: if the shipped file
/// changes, this test says so rather than running something else.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "conf/demo.yaml should name {from} once:\n{text}");
    text.replace(from, to)
}

#[test]
fn the_readme_quickstart_answers_as_documented() {
    let upstream = Upstream::start();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut yaml = std::fs::read_to_string(conf.join("demo.yaml")).unwrap();
    yaml = replace_once(&yaml, "127.0.0.1:6188", &listen);
    yaml = replace_once(&yaml, "127.0.0.1:9188", &admin);
    yaml = replace_once(&yaml, "peers: [127.0.0.1:8080]", &format!("peers: [{}]", upstream.addr));
    let config = dir.path().join("demo.yaml");
    std::fs::write(&config, yaml).unwrap();
    // The key file as shipped, beside the config (its path is relative to the config's folder).
    std::fs::copy(conf.join("demo-keys.yaml"), dir.path().join("demo-keys.yaml")).unwrap();

    let log = dir.path().join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let demo = Demo { child, log };
    let (listen, admin) = (listen.parse().unwrap(), admin.parse().unwrap());
    let up = eventually(Duration::from_secs(20), || {
        http::get(admin, "/healthz").is_ok_and(|r| r.status == 200)
            && std::net::TcpStream::connect(listen).is_ok()
    });
    assert!(up.is_some(), "the demo gateway did not start:\n{}", demo.logs());

    // curl -i localhost:6188/ingest -H 'X-ApiKey: demo-key-0001' -d '{"event":1}'
    let forwarded =
        http::request(listen, "POST", "/ingest", &[("X-ApiKey", KEYS[0])], br#"{"event":1}"#).unwrap();
    assert_eq!(forwarded.status, 200, "{}\n{}", forwarded.text(), demo.logs());
    assert_eq!(forwarded.text(), r#"{"app":"demo","bytes":11}"#);
    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header_values("x-keygate-app"), ["demo"]);
    assert_eq!(seen[0].body, br#"{"event":1}"#);

    // curl -i localhost:6188/ingest
    http::get(listen, "/ingest").unwrap().assert_rejected(401, "missing_api_key");
    // curl -i 'localhost:6188/ingest?apikey=nope'
    http::get(listen, &format!("/ingest?apikey={}", KEYS[1]))
        .unwrap()
        .assert_rejected(403, "unknown_api_key");
    assert_eq!(upstream.count(), 1, "a rejected request reached the upstream");

    // curl -s localhost:9188/metrics | grep keygate_requests_total
    let metrics = http::get(admin, "/metrics").unwrap().text();
    for series in [
        r#"keygate_requests_total{outcome="forwarded"} 1"#,
        r#"keygate_requests_total{outcome="missing_key"} 1"#,
        r#"keygate_requests_total{outcome="unknown_key"} 1"#,
    ] {
        let counted = eventually(Duration::from_secs(2), || {
            http::get(admin, "/metrics").unwrap().text().lines().any(|l| l == series)
        });
        assert!(counted.is_some(), "`{series}` missing:\n{metrics}");
    }
}
