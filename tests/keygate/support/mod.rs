//! The integration tests' harness: real processes on free ports.
//!
//! - [`Redis`]: a `redis-server` of the test's own (never the machine's 6379), which can be
//!   frozen (SIGSTOP), thawed, killed and restarted on the same port, and asked what it served.
//! - [`Upstream`]: the demo ingestion node (`examples/demo_upstream`, the same code `make demo`
//!   runs), recording what reached it.
//! - [`Gateway`]: the real `keygate` binary on a config written for the test, its stderr kept.
//! - [`http`]: a small HTTP/1.1 client that can keep a connection open and send what it likes.
//! - [`nginx`]: a real nginx running one of the shipped snippets.
//! - [`topology`]: Redis under Sentinel and as a cluster, for the store's highly available modes.

pub mod http;
pub mod nginx;
pub mod topology;
#[path = "../../../examples/demo_upstream/upstream.rs"]
mod upstream;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upstream::{DemoUpstream, Received};

/// A port nothing listens on right now. Chosen below Linux's ephemeral range (32768 and up), so
/// an outgoing connection of another test cannot take it between now and its bind.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let port = 20_000 + (hasher.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Retries `check` until it holds or `within` passes; the time it took.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check().then(|| started.elapsed())
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

// === impl Redis ===

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = Redis { port: free_port(), child: None, _dir: dir };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        self.child = Some(child);
        let up = eventually(Duration::from_secs(10), || self.try_connection().is_some());
        assert!(up.is_some(), "redis-server did not start on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn try_connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut con = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
        redis::cmd("PING").query::<String>(&mut con).ok()?;
        Some(con)
    }

    pub fn connection(&self) -> redis::Connection {
        self.try_connection().expect("redis answers")
    }

    /// Writes a key's record (HSET), without announcing it: a key written before the gateway
    /// starts, or one a test announces itself.
    pub fn put_key(&self, key: &str, fields: &[(&str, &str)]) {
        let id = keygate::key::ApiKey::from_cli(key).id().to_hex();
        let mut con = self.connection();
        let _: () = redis::cmd("DEL").arg(format!("keygate:key:{id}")).query(&mut con).unwrap();
        let mut hset = redis::cmd("HSET");
        hset.arg(format!("keygate:key:{id}"));
        for (field, value) in fields {
            hset.arg(*field).arg(*value);
        }
        let _: () = hset.query(&mut con).unwrap();
    }

    pub fn announce(&self, key: &str) {
        let id = keygate::key::ApiKey::from_cli(key).id().to_hex();
        let _: () =
            redis::cmd("PUBLISH").arg("keygate:invalidate").arg(id).query(&mut self.connection()).unwrap();
    }

    /// How many key lookups (HGETALL) Redis has served, by its own count.
    pub fn reads(&self) -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut self.connection()).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_hgetall:calls="))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn reset_stats(&self) {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut self.connection()).unwrap();
    }

    /// Every key Redis holds.
    pub fn keys(&self) -> Vec<String> {
        redis::cmd("KEYS").arg("*").query(&mut self.connection()).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn freeze(&self) {
        signal(self.child.as_ref().unwrap().id(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.child.as_ref().unwrap().id(), "CONT");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port, empty (nothing is saved).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
        }
        self.kill();
    }
}

// === impl Upstream ===

pub struct Upstream {
    pub addr: SocketAddr,
    running: DemoUpstream,
}

impl Upstream {
    pub fn start() -> Upstream {
        let running = DemoUpstream::spawn("127.0.0.1:0").unwrap();
        Upstream { addr: running.addr, running }
    }

    pub fn received(&self) -> Vec<Received> {
        self.running.journal.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.running.journal.lock().unwrap().len()
    }

    /// Dies like a crashed node (see `DemoUpstream::kill`).
    pub fn kill(&self) {
        self.running.kill();
    }
}

// === impl Gateway ===

/// The parts of a gateway's config a test cares about; the rest is filled in.
pub struct Setup {
    /// The `store:` section's body, indented by two spaces.
    pub store: String,
    pub peers: Vec<String>,
    /// Extra top-level YAML (cache, rate_limit, api_key, …).
    pub extra: String,
    /// Whether `rate_limit` gets generous defaults (when `extra` does not set it).
    pub generous_limits: bool,
    /// Listeners beside the TCP one the harness picks.
    pub listeners: Vec<String>,
    /// `grace_period_s`, which only a restart changes.
    pub grace_period_s: u64,
    /// `upstream.health_check.interval_ms`: short, so a test sees health change quickly; long,
    /// so a peer that dies stays marked healthy (and only a retry saves its requests).
    pub health_interval_ms: u64,
}

impl Setup {
    pub fn redis(redis: &Redis, upstream: &Upstream) -> Setup {
        Setup {
            store: format!("  redis:\n    url: {}\n    timeout_ms: 50\n", redis.url()),
            peers: vec![upstream.addr.to_string()],
            extra: String::new(),
            generous_limits: true,
            listeners: Vec::new(),
            grace_period_s: 1,
            health_interval_ms: 200,
        }
    }

    /// The file store at `keys`.
    pub fn file(keys: &std::path::Path, upstream: &Upstream) -> Setup {
        Setup {
            store: format!("  file: {}\n", keys.display()),
            peers: vec![upstream.addr.to_string()],
            extra: String::new(),
            generous_limits: true,
            listeners: Vec::new(),
            grace_period_s: 1,
            health_interval_ms: 200,
        }
    }

    pub fn listen(mut self, listener: &str) -> Setup {
        self.listeners.push(listener.to_string());
        self
    }

    pub fn health_interval_ms(mut self, ms: u64) -> Setup {
        self.health_interval_ms = ms;
        self
    }

    pub fn grace_period_s(mut self, seconds: u64) -> Setup {
        self.grace_period_s = seconds;
        self
    }

    pub fn extra(mut self, yaml: &str) -> Setup {
        self.extra.push_str(yaml);
        self.extra.push('\n');
        self
    }

    /// Starts the gateway and waits until it serves and its filter is trusted.
    pub fn start(self) -> Gateway {
        Gateway::start(self, true)
    }

    /// Starts the gateway without waiting for the filter.
    pub fn start_untrusted(self) -> Gateway {
        Gateway::start(self, false)
    }
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    child: Child,
    log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    fn start(setup: Setup, wait_for_filter: bool) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut yaml = format!(
            "listen: {:?}\nadmin_listen: \"{admin}\"\nthreads: 2\ngrace_period_s: {}\npid_file: keygate.pid\nupgrade_sock: upgrade.sock\nupstream:\n  peers: {:?}\n  health_check: {{kind: tcp, interval_ms: {}}}\n  connect_timeout_ms: 300\n  read_timeout_ms: 5000\nstore:\n{}",
            std::iter::once(addr.to_string()).chain(setup.listeners.iter().cloned()).collect::<Vec<_>>(),
            setup.grace_period_s,
            setup.peers,
            setup.health_interval_ms,
            setup.store
        );
        if setup.generous_limits && !setup.extra.contains("rate_limit:") {
            yaml.push_str("rate_limit:\n  per_second: 100000\n  burst: 100000\n  unauthenticated_per_ip: {per_second: 100000, burst: 100000}\n");
        }
        yaml.push_str(&setup.extra);
        let setup_disables_filter = setup.extra.contains("filter: {enabled: false}");
        let config = dir.path().join("keygate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = dir.path().join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("-c")
            .arg(&config)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let gateway = Gateway { addr, admin, config, child, log, dir };
        let up = eventually(Duration::from_secs(20), || {
            http::get(gateway.admin, "/healthz").is_ok_and(|r| r.status == 200)
                && std::net::TcpStream::connect(gateway.addr).is_ok()
        });
        assert!(up.is_some(), "keygate did not start:\n{}", gateway.logs());
        if wait_for_filter && !setup_disables_filter {
            // Every test starts from the same state: the filter built and trusted.
            let trusted =
                eventually(Duration::from_secs(10), || gateway.metric("keygate_filter_trusted") == 1.0);
            assert!(trusted.is_some(), "the membership filter never became trusted:\n{}", gateway.logs());
        }
        gateway
    }

    /// A request with `headers` (name, value pairs) to `path`.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> http::Response {
        http::request(self.addr, "GET", path, headers, b"").unwrap()
    }

    pub fn with_key(&self, key: &str) -> http::Response {
        self.get("/ingest", &[("X-ApiKey", key)])
    }

    pub fn metrics(&self) -> String {
        http::get(self.admin, "/metrics").unwrap().text()
    }

    /// The value of one series, e.g. `keygate_requests_total{outcome="forwarded"}`.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics().lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
    }

    /// The value of `series` once it reaches `expected` (counted in `logging`, just after the
    /// answer was sent), or its last value after two seconds.
    pub fn settled_metric(&self, series: &str, expected: f64) -> f64 {
        let mut last = 0.0;
        eventually(Duration::from_secs(2), || {
            last = self.metric(series);
            last == expected
        });
        last
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Guarantee 7: none of `keys` appears anywhere in what the gateway logged.
    pub fn assert_no_key_in_logs(&self, keys: &[&str]) {
        let logs = self.logs();
        assert!(!logs.is_empty(), "the gateway logged nothing at all");
        for key in keys {
            assert!(!logs.contains(key), "a key reached the log:\n{logs}");
        }
    }

    /// Rewrites the config file with `edit` and sends SIGHUP; returns once the reload was
    /// counted, ok or not.
    pub fn reload(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(text)).unwrap();
        let before = self.reloads();
        signal(self.pid(), "HUP");
        let counted = eventually(Duration::from_secs(5), || self.reloads() > before);
        assert!(counted.is_some(), "the reload was never counted:\n{}", self.logs());
    }

    fn reloads(&self) -> f64 {
        self.metric(r#"keygate_config_reloads_total{result="ok"}"#)
            + self.metric(r#"keygate_config_reloads_total{result="error"}"#)
    }

    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Waits up to `within` for the process to exit; its status, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        eventually(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Pingora's graceful upgrade: a new process started with `-u` takes the listening sockets
    /// over from this one, which is then sent SIGQUIT and drains. Returns once the new process
    /// serves and the old one is gone.
    pub fn upgrade(&mut self) {
        let new = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("-u")
            .arg("-c")
            .arg(&self.config)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().append(true).open(&self.log).unwrap())
            .spawn()
            .unwrap();
        // The new process waits on the upgrade socket for the old one's listeners.
        let sock = self.dir.path().join("upgrade.sock");
        let waiting = eventually(Duration::from_secs(10), || sock.exists());
        assert!(waiting.is_some(), "the new process never opened the upgrade socket:\n{}", self.logs());
        std::thread::sleep(Duration::from_millis(100));
        // As an operator would: the process to hand over is the one the pid file names.
        assert_eq!(self.pid_in_file(), Some(self.pid()), "the pid file does not name the running process");
        signal(self.pid_in_file().unwrap(), "QUIT");
        let mut old = std::mem::replace(&mut self.child, new);
        let gone = eventually(Duration::from_secs(15), || old.try_wait().ok().flatten().is_some());
        assert!(gone.is_some(), "the old process never exited:\n{}", self.logs());
        let renamed = eventually(Duration::from_secs(5), || self.pid_in_file() == Some(self.pid()));
        assert!(renamed.is_some(), "the pid file does not name the new process:\n{}", self.logs());
    }

    /// The pid in the configured `pid_file`, if the file is there.
    pub fn pid_in_file(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("keygate.pid")).ok()?;
        text.trim().parse().ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
