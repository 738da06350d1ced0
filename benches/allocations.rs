//! Heap allocations per request through the real gateway, in-process: the shipped server (the
//! library's `cli::run`, one worker thread, the file key store) in front of a small upstream in
//! this process, driven by a client that sends ready-made requests over one keep-alive
//! connection. A counting global allocator counts every allocation the process makes while a
//! batch of requests runs; the client and the upstream allocate nothing per request, so what is
//! counted is the gateway's (and Pingora's) own.
//!
//! `cargo bench --bench allocations` prints allocations and bytes per request for a valid key,
//! one unknown key repeated (cached as unknown after its first request) and a missing key; once
//! with the access log off (the default) and once with it on. The counts are deterministic up
//! to a background task's rare allocation (the upstream health check, set to once a minute
//! here), so they are figures to compare between builds, not timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counted. (The binary's mimalloc would count the same calls.)
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Requests counted per case, after as many to warm up (connections pooled, caches filled).
const REQUESTS: u64 = 5_000;
const VALID_KEY: &str = "alloc-bench-valid-key-01";
const UNKNOWN_KEY: &str = "alloc-bench-unknown-key-1";
/// Set in the child process that runs one gateway; the value says whether its access log is on.
const CHILD: &str = "KEYGATE_ALLOC_BENCH_ACCESS_LOG";
/// Runs only the cases whose name begins with this, e.g. to see under heaptrack where one
/// case's allocations come from: `KEYGATE_ALLOC_BENCH_ACCESS_LOG=off
/// KEYGATE_ALLOC_BENCH_CASE=valid heaptrack target/release/deps/allocations-*`.
const ONLY: &str = "KEYGATE_ALLOC_BENCH_CASE";

fn main() {
    match std::env::var(CHILD) {
        Ok(access_log) => measure(access_log == "on"),
        // One process per gateway: Pingora's server owns its process (signals, exit).
        Err(_) => {
            let me = std::env::current_exe().expect("the bench's own path");
            for access_log in ["off", "on"] {
                let status = Command::new(&me).env(CHILD, access_log).status().expect("the bench runs");
                assert!(status.success(), "the run with the access log {access_log} failed");
            }
        }
    }
}

fn measure(access_log: bool) {
    let dir = tempfile::tempdir().unwrap();
    let upstream = spawn_upstream();
    let port = free_port();
    let mut yaml = format!(
        "listen: [127.0.0.1:{port}]\nthreads: 1\nupstream:\n  peers: [{upstream}]\n  \
         health_check: {{kind: tcp, interval_ms: 60000}}\nstore:\n  file: keys.yaml\n\
         rate_limit:\n  per_second: 1000000\n  burst: 1000000\n  \
         unauthenticated_per_ip: {{per_second: 1000000, burst: 1000000}}\n"
    );
    if access_log {
        yaml.push_str("access_log:\n  path: access.log\n  rejections_per_second: 1000000\n");
    }
    let keys = format!("keys:\n  - key: {VALID_KEY}\n    app: bench\n");
    std::fs::write(dir.path().join("keys.yaml"), keys).unwrap();
    let config = dir.path().join("keygate.yaml");
    std::fs::write(&config, yaml).unwrap();
    let args = keygate::cli::Args { command: None, config: Some(config), test: false, upgrade: false };
    std::thread::spawn(move || std::process::exit(keygate::cli::run(args)));
    let gateway: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    let mut client = loop {
        match TcpStream::connect(gateway) {
            Ok(stream) => break Client::new(stream),
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("the gateway did not start: {e}"),
        }
    };
    let cases: [(&str, String, u16); 3] = [
        ("valid key", request(Some(VALID_KEY)), 200),
        ("unknown key (one, repeated)", request(Some(UNKNOWN_KEY)), 403),
        ("missing key", request(None), 401),
    ];
    let log = if access_log { "on" } else { "off" };
    println!("access log {log}: {REQUESTS} requests each, one keep-alive connection, one worker thread");
    let only = std::env::var(ONLY).unwrap_or_default();
    for (name, request, status) in cases.iter().filter(|(name, ..)| name.starts_with(&only)) {
        for _ in 0..REQUESTS {
            client.exchange(request.as_bytes(), *status);
        }
        let (allocations, bytes) = (ALLOCATIONS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
        for _ in 0..REQUESTS {
            client.exchange(request.as_bytes(), *status);
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
        let bytes = BYTES.load(Ordering::Relaxed) - bytes;
        println!(
            "  {name:<28} {:>7.2} allocations, {:>8.1} bytes per request",
            allocations as f64 / REQUESTS as f64,
            bytes as f64 / REQUESTS as f64
        );
    }
}

/// A POST-less request as a client of the ingestion API sends it: a few headers, a key or not.
fn request(key: Option<&str>) -> String {
    let key = key.map_or(String::new(), |k| format!("X-ApiKey: {k}\r\n"));
    format!(
        "GET /ingest/events HTTP/1.1\r\nHost: ingest.example.com\r\nUser-Agent: alloc-bench\r\n\
         Accept: */*\r\n{key}\r\n"
    )
}

/// One keep-alive connection with a fixed buffer: sends a request, reads its whole answer.
struct Client {
    stream: TcpStream,
    buf: Box<[u8; 16 * 1024]>,
}

impl Client {
    fn new(stream: TcpStream) -> Self {
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { stream, buf: Box::new([0; 16 * 1024]) }
    }

    fn exchange(&mut self, request: &[u8], status: u16) {
        self.stream.write_all(request).unwrap();
        let mut filled = 0;
        loop {
            let n = self.stream.read(&mut self.buf[filled..]).unwrap();
            assert!(n > 0, "the gateway closed the connection");
            filled += n;
            if let Some(total) = whole_response(&self.buf[..filled]) {
                assert_eq!(filled, total, "one answer per request");
                break;
            }
        }
        let got = std::str::from_utf8(&self.buf[9..12]).unwrap().parse::<u16>().unwrap();
        assert_eq!(got, status, "{}", String::from_utf8_lossy(&self.buf[..filled]));
    }
}

/// The length of the response in `buf` once it has arrived whole (headers and a
/// `Content-Length` body).
fn whole_response(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let length = buf[..end]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= end + length).then_some(end + length)
}

/// An upstream answering every request with a fixed 200, a thread per connection, allocating
/// nothing per request. It reads header blocks only: the bench's requests have no body.
fn spawn_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = [0u8; 16 * 1024];
                let mut filled = 0;
                loop {
                    let Ok(n) = stream.read(&mut buf[filled..]) else { return };
                    if n == 0 {
                        return;
                    }
                    filled += n;
                    if buf[..filled].ends_with(b"\r\n\r\n") {
                        filled = 0;
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(answer).is_err() {
                            return;
                        }
                    } else if filled == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
