//! The integration tests' harness: real processes on free ports.
//!
//! - [`Redis`]: a `redis-server` of the test's own (never the machine's 6379), which can be
//!   frozen (SIGSTOP), thawed, killed and restarted on the same port, and asked what it served.
//! - [`Upstream`]: the demo ingestion node (`examples/demo_upstream`, the same code `make demo`
//!   runs), recording what reached it.
//! - [`Gateway`]: the real `keygate` binary on a config written for the test, its stderr kept.
//!   When it is dropped it checks that no key the test used reached that stderr (guarantee 7),
//!   for every test that runs one: see [`UsedKeys`].
//! - [`http`]: a small HTTP/1.1 client that can keep a connection open and send what it likes.
//! - [`nginx`]: a real nginx running one of the shipped snippets.
//! - [`topology`]: Redis under Sentinel and as a cluster, for the store's highly available modes.

pub mod http;
pub mod nginx;
pub mod topology;
#[path = "../../../examples/demo_upstream/upstream.rs"]
mod upstream;

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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

/// The inodes of the sockets listening on 127.0.0.1:`port`, from /proc/net/tcp.
fn listening_inodes(port: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1] == local && f[3] == "0A")
        .map(|f| f[9].to_string())
        .collect()
}

/// The socket inodes process `pid` holds open.
fn socket_inodes(pid: u32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect()
}

/// Whether process `pid` listens on 127.0.0.1:`port`.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let held = socket_inodes(pid);
    listening_inodes(port).iter().any(|inode| held.contains(inode))
}

/// Whether some process other than `pid` listens on 127.0.0.1:`port`.
fn held_by_another(pid: u32, port: u16) -> bool {
    let held = socket_inodes(pid);
    listening_inodes(port).iter().any(|inode| !held.contains(inode))
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

// === impl UsedKeys ===

/// Every key a test used, for the check that none of them reached the gateway's log. Shared by
/// the test's [`Redis`] (each key it writes or announces) and its [`Gateway`] (each key sent
/// through its helpers, and those a test names with [`Gateway::uses_key`]).
#[derive(Clone, Default)]
pub struct UsedKeys(Arc<Mutex<BTreeSet<String>>>);

impl UsedKeys {
    pub fn add(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string());
    }

    fn all(&self) -> BTreeSet<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Keys shorter than this are left out of the automatic check: strings such as `aaa`, `q` or
/// `%00` turn up in a log by chance. Tests that use such keys name them to
/// [`Gateway::assert_no_key_in_logs`] themselves.
const SHORTEST_CHECKED_KEY: usize = 5;

/// Where the first of `keys` (those of at least [`SHORTEST_CHECKED_KEY`] bytes) occurs in
/// `log`: its 1-based line, and that line with the key masked. Keys are indexed by their first
/// bytes, so that thousands of them cost one pass over the log.
pub fn find_key(log: &str, keys: &BTreeSet<String>) -> Option<(usize, String)> {
    let mut by_prefix: HashMap<&[u8], Vec<&str>> = HashMap::new();
    for key in keys.iter().filter(|k| k.len() >= SHORTEST_CHECKED_KEY) {
        by_prefix.entry(&key.as_bytes()[..SHORTEST_CHECKED_KEY]).or_default().push(key);
    }
    let bytes = log.as_bytes();
    let found = bytes.windows(SHORTEST_CHECKED_KEY).enumerate().find_map(|(at, window)| {
        by_prefix
            .get(window)?
            .iter()
            .find(|key| bytes[at..].starts_with(key.as_bytes()))
            .map(|key| (at, *key))
    });
    let (at, key) = found?;
    let line_start = log[..at].rfind('\n').map_or(0, |n| n + 1);
    let line_end = log[at..].find('\n').map_or(log.len(), |n| at + n);
    let line = log[line_start..line_end].replace(key, "<KEY>");
    Some((log[..at].matches('\n').count() + 1, line))
}

/// Guarantee 7 at a test's end: none of `keys` appears in `log` (a process's stderr). Never
/// prints a key: only where it was found.
pub fn assert_no_used_key_in(log: &str, keys: &BTreeSet<String>, whose: &str) {
    assert!(!log.is_empty(), "{whose} logged nothing at all: no key check can pass on that");
    if let Some((line, text)) = find_key(log, keys) {
        panic!("a key the test used reached {whose}'s log, line {line} (the key masked):\n{text}");
    }
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
    /// Every key written or announced, for the check of a gateway on this store.
    used: UsedKeys,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = Redis { port: free_port(), child: None, _dir: dir, used: UsedKeys::default() };
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
        self.used.add(key);
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

    /// Writes a record for each of `keys` with app `app`, in one round trip.
    pub fn put_keys(&self, keys: impl IntoIterator<Item = String>, app: &str) {
        let mut pipe = redis::pipe();
        for key in keys {
            let id = keygate::key::ApiKey::from_cli(&key).id();
            pipe.cmd("HSET").arg(format!("keygate:key:{id}")).arg("app").arg(app).ignore();
            self.used.add(&key);
        }
        let _: () = pipe.query(&mut self.connection()).unwrap();
    }

    pub fn announce(&self, key: &str) {
        self.used.add(key);
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

impl Redis {
    /// The running server's version (`INFO server`), as (major, minor, patch).
    pub fn version(&self) -> (u32, u32, u32) {
        let info: String = redis::cmd("INFO").arg("server").query(&mut self.connection()).unwrap();
        let version = info.lines().find_map(|l| l.strip_prefix("redis_version:")).expect("redis_version");
        let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// Fails the test, saying why, when the server is older than `major.minor`: a test that
    /// needs a newer Redis then says so instead of failing on a command it does not know.
    pub fn require_version(&self, major: u32, minor: u32, needed_for: &str) {
        let (have_major, have_minor, have_patch) = self.version();
        assert!(
            (have_major, have_minor) >= (major, minor),
            "this test needs Redis {major}.{minor} or newer ({needed_for}); redis-server here is \
             {have_major}.{have_minor}.{have_patch}: install a newer redis-server"
        );
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

/// What the gateway logs when a stop or an upgrade begins (src/background.rs).
const DRAINING: &str = "closing connections after each response";

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
    /// `(from, to)` replacements in the written config, for the few lines the harness fixes
    /// (`threads: 2`, the tcp health check): each `from` must be there.
    pub rewrites: Vec<(String, String)>,
    /// The keys of the store the gateway runs on (its Redis's), checked against its log.
    used: UsedKeys,
}

impl Setup {
    pub fn redis(redis: &Redis, upstream: &Upstream) -> Setup {
        let store = format!("  redis:\n    url: {}\n    timeout_ms: 50\n", redis.url());
        Setup::with_store(store, upstream, redis.used.clone())
    }

    /// The file store at `keys`.
    pub fn file(keys: &std::path::Path, upstream: &Upstream) -> Setup {
        Setup::with_store(format!("  file: {}\n", keys.display()), upstream, UsedKeys::default())
    }

    /// The harness's defaults around the `store:` section `store`.
    fn with_store(store: String, upstream: &Upstream, used: UsedKeys) -> Setup {
        Setup {
            store,
            peers: vec![upstream.addr.to_string()],
            extra: String::new(),
            generous_limits: true,
            listeners: Vec::new(),
            grace_period_s: 1,
            health_interval_ms: 200,
            rewrites: Vec::new(),
            used,
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

    /// Replaces `from` in the config the harness writes (the whole line or a part of it).
    pub fn rewrite(mut self, from: &str, to: &str) -> Setup {
        self.rewrites.push((from.to_string(), to.to_string()));
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
    /// Keys the test used: its store's, those sent with [`Gateway::with_key`], and those it
    /// names with [`Gateway::uses_key`].
    used: UsedKeys,
    /// What [`Gateway::get`] sent, kept until the end: a value is a key when its name is one
    /// the gateway took keys from at some point (a reload may change the sources).
    sent: Mutex<Sent>,
}

/// Header and query values a test sent, by (lowercase) name, and the key sources the gateway's
/// config named over its life.
#[derive(Default)]
struct Sent {
    headers: Vec<(String, String)>,
    queries: Vec<(String, String)>,
    header_sources: BTreeSet<String>,
    query_sources: BTreeSet<String>,
}

impl Sent {
    /// Adds the sources `yaml` names (`- header: X` / `- query: y` lines), or the default ones
    /// when it sets none.
    fn learn_sources(&mut self, yaml: &str) {
        let mut named = false;
        for line in yaml.lines() {
            let entry = line.trim().trim_start_matches("- ");
            if let Some(name) = entry.strip_prefix("header:") {
                self.header_sources.insert(name.trim().to_ascii_lowercase());
                named = true;
            } else if let Some(name) = entry.strip_prefix("query:") {
                self.query_sources.insert(name.trim().to_string());
                named = true;
            }
        }
        if !named {
            self.header_sources.insert("x-apikey".into());
            self.query_sources.insert("apikey".into());
        }
    }

    fn record(&mut self, path: &str, headers: &[(&str, &str)]) {
        for (name, value) in headers {
            self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
        let query = path.split_once('?').map_or("", |(_, q)| q);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            self.queries.push((name.to_string(), value.to_string()));
            let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            self.queries.push((name.to_string(), decoded.into_owned()));
        }
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        let headers = self.headers.iter().filter(|(n, _)| self.header_sources.contains(n));
        let queries = self.queries.iter().filter(|(n, _)| self.query_sources.contains(n));
        headers.chain(queries).map(|(_, value)| value)
    }
}

impl Gateway {
    fn start(setup: Setup, wait_for_filter: bool) -> Gateway {
        // A port picked free can be taken by another test's process before this gateway binds
        // it; then requests would reach that process. A start whose gateway does not hold both
        // its ports is retried on others.
        for _ in 0..4 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            if let Some(gateway) = Gateway::spawn(&setup, addr, admin, wait_for_filter) {
                return gateway;
            }
        }
        panic!("four starts of keygate each found a port taken by another process");
    }

    /// The gateway on `addr` and `admin`, once it serves; `None` when another process holds
    /// either port.
    fn spawn(setup: &Setup, addr: SocketAddr, admin: SocketAddr, wait_for_filter: bool) -> Option<Gateway> {
        let dir = tempfile::tempdir().unwrap();
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
        for (from, to) in &setup.rewrites {
            assert!(yaml.contains(from.as_str()), "the config has no `{from}` to rewrite:\n{yaml}");
            yaml = yaml.replace(from.as_str(), to);
        }
        let setup_disables_filter = setup.extra.contains("filter: {enabled: false}");
        let config = dir.path().join("keygate.yaml");
        let mut sent = Sent::default();
        sent.learn_sources(&yaml);
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
        let (used, sent) = (setup.used.clone(), Mutex::new(sent));
        let mut gateway = Gateway { addr, admin, config, child, log, dir, used, sent };
        let pid = gateway.child.id();
        let up = eventually(Duration::from_secs(20), || {
            let serving = listens_on(pid, addr.port()) && listens_on(pid, admin.port());
            serving || gateway.child.try_wait().is_ok_and(|status| status.is_some())
        });
        if !(listens_on(pid, addr.port()) && listens_on(pid, admin.port())) {
            if [addr, admin].iter().any(|a| held_by_another(pid, a.port())) {
                let _ = gateway.child.kill();
                let _ = gateway.child.wait();
                return None;
            }
            panic!("keygate did not start ({up:?}):\n{}", gateway.logs());
        }
        let up = eventually(Duration::from_secs(20), || {
            http::get(gateway.admin, "/healthz").is_ok_and(|r| r.status == 200)
        });
        assert!(up.is_some(), "keygate did not start:\n{}", gateway.logs());
        if wait_for_filter && !setup_disables_filter {
            // Every test starts from the same state: the filter built and trusted.
            let trusted = eventually(Duration::from_secs(10), || {
                gateway.try_metric("keygate_filter_trusted") == Some(1.0)
            });
            assert!(trusted.is_some(), "the membership filter never became trusted:\n{}", gateway.logs());
        }
        Some(gateway)
    }

    /// A request with `headers` (name, value pairs) to `path`. Whatever it sends as a key
    /// (a header or query parameter the config takes keys from) is checked against the log.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> http::Response {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).record(path, headers);
        http::request(self.addr, "GET", path, headers, b"").unwrap()
    }

    pub fn with_key(&self, key: &str) -> http::Response {
        self.uses_key(key);
        self.get("/ingest", &[("X-ApiKey", key)])
    }

    /// Names a key the test sends by other means than [`Gateway::get`] (its own connections),
    /// so that the check at the end covers it too.
    pub fn uses_key(&self, key: &str) {
        self.used.add(key);
    }

    pub fn metrics(&self) -> String {
        http::get(self.admin, "/metrics").unwrap().text()
    }

    /// The value of one series, e.g. `keygate_requests_total{outcome="forwarded"}`. A series
    /// the gateway does not export fails the test, naming it: a renamed or dropped metric must
    /// not read as 0.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics();
        value_of(&text, series).unwrap_or_else(|| panic!("no series `{series}` in /metrics:\n{text}"))
    }

    /// The value of one series, `None` while it is not exported: for waits, which must wait for
    /// the series to exist (`== Some(0.0)`), not take its absence for a zero.
    pub fn try_metric(&self, series: &str) -> Option<f64> {
        value_of(&self.metrics(), series)
    }

    /// The value of `series` once it reaches `expected` (counted in `logging`, just after the
    /// answer was sent), or its last value after two seconds; fails the test if it is never
    /// exported.
    pub fn settled_metric(&self, series: &str, expected: f64) -> f64 {
        let mut last = None;
        eventually(Duration::from_secs(2), || {
            last = self.try_metric(series);
            last == Some(expected)
        });
        last.unwrap_or_else(|| panic!("no series `{series}` in /metrics:\n{}", self.metrics()))
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
        let text = edit(std::fs::read_to_string(&self.config).unwrap());
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).learn_sources(&text);
        std::fs::write(&self.config, text).unwrap();
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

    /// Waits until the gateway has accepted `client`'s connection. Until then the kernel
    /// holds it in the listener's queue, and a stop would drop it; after, the connection is
    /// the gateway's. Seen in /proc/net/tcp: the gateway's end of the connection has a socket
    /// (a non-zero inode) only once accepted.
    pub fn wait_accepted(&self, client: &std::net::TcpStream) {
        let hex = |addr: SocketAddr| match addr {
            SocketAddr::V4(a) => format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port()),
            SocketAddr::V6(_) => panic!("the tests connect over IPv4"),
        };
        let (ours, theirs) = (hex(self.addr), hex(client.local_addr().unwrap()));
        let accepted = eventually(Duration::from_secs(5), || {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
            table.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 9 && fields[1] == ours && fields[2] == theirs && fields[9] != "0"
            })
        });
        assert!(accepted.is_some(), "the gateway never accepted the connection:\n{}", self.logs());
    }

    /// Sends SIGTERM and returns once the stop has begun, as the gateway shows it: the
    /// listener logged that it stopped accepting, and the gateway that it now closes each
    /// connection after its response. Whatever a test sends after this comes after the stop.
    pub fn terminate(&self) {
        let before = self.logs().len();
        self.signal("TERM");
        let listener_stopped = format!("Shutting down {}", self.addr);
        let begun = eventually(Duration::from_secs(5), || {
            let logs = self.logs();
            let since = logs.get(before..).unwrap_or("");
            since.contains(&listener_stopped) && since.contains(DRAINING)
        });
        assert!(begun.is_some(), "the stop never began after SIGTERM:\n{}", self.logs());
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

    /// Fails the test if the gateway process has exited.
    pub fn assert_running(&mut self) {
        let status = self.child.try_wait().unwrap();
        assert!(status.is_none(), "the gateway exited ({status:?}):\n{}", self.logs());
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

/// The value of `series` in the Prometheus text `text`, if it is there.
fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Guarantee 7, for every test that runs a gateway. Not while the test is already
        // failing: a panic in a drop during a panic aborts, and the first failure is lost.
        if !std::thread::panicking() {
            let mut keys = self.used.all();
            keys.extend(self.sent.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned());
            assert_no_used_key_in(&self.logs(), &keys, "the gateway");
        }
    }
}
