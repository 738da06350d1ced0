//! What the fleet's syncs cost Redis: 10,000 keys each admitted once per sync period, synced
//! every 100 ms for five seconds against a `redis-server` of the bench's own; Redis's own count
//! of the commands it ran (`INFO commandstats`), per second, and how long a sync took.
//! `cargo bench --bench fleet_sync` (or `make bench`).

use keygate::key::ApiKey;
use keygate::testing::{Cell, Fleet, Gcra, RedisSettings, RedisStore, ScanPacing};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEYS: usize = 10_000;
const PERIOD: Duration = Duration::from_millis(100);
const RUN: Duration = Duration::from_secs(5);

fn main() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    let mut admin = (0..100)
        .find_map(|_| {
            let connection = client.get_connection().ok();
            if connection.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            connection
        })
        .expect("redis-server answers");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (syncs, slowest, total) = runtime.block_on(async {
        let settings = RedisSettings {
            prefix: "keygate:",
            timeout: Duration::from_millis(50),
            scan: ScanPacing { batch: 1000, pause: Duration::ZERO },
        };
        let store = RedisStore::open(client.get_connection_info().clone(), settings).unwrap();
        let fleet = Fleet::new();
        let cell = Cell { interval: 1_000, burst: 1_000_000 };
        let keys: Vec<_> = (0..KEYS)
            .map(|n| fleet.key(ApiKey::from_cli(&format!("bench-fleet-key-{n}")).id(), cell, true, None))
            .collect();
        let local = Gcra::default();
        // A first sync loads the scripts; the figures are the steady state after it.
        keys.iter().for_each(|k| assert!(k.admit(0, cell, &local).is_ok()));
        fleet.sync(&store, PERIOD, Duration::from_secs(5)).await.unwrap();
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut admin).unwrap();
        let (started, mut syncs, mut slowest, mut total) =
            (Instant::now(), 0u32, Duration::ZERO, Duration::ZERO);
        while started.elapsed() < RUN {
            let now = started.elapsed().as_nanos() as u64;
            keys.iter().for_each(|k| assert!(k.admit(now, cell, &local).is_ok()));
            let sync = Instant::now();
            fleet.sync(&store, PERIOD, Duration::from_secs(5)).await.unwrap();
            let took = sync.elapsed();
            (slowest, total, syncs) = (slowest.max(took), total + took, syncs + 1);
            tokio::time::sleep(PERIOD.saturating_sub(took)).await;
        }
        (syncs, slowest, total)
    });
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut admin).unwrap();
    let calls: u64 =
        info.lines().filter_map(|l| l.split_once("calls=")?.1.split(',').next()?.parse::<u64>().ok()).sum();
    let evalsha: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls=")?.split(',').next()?.parse().ok())
        .unwrap_or(0);
    let seconds = RUN.as_secs_f64();
    println!(
        "fleet sync, {KEYS} active keys, every {PERIOD:?} for {RUN:?} (one gateway): {syncs} syncs, \
         {:.0} Redis commands/s in all ({:.0} EVALSHA/s), \
         a sync took {:.1} ms on average, {:.1} ms at most",
        calls as f64 / seconds,
        evalsha as f64 / seconds,
        total.as_secs_f64() * 1000.0 / f64::from(syncs),
        slowest.as_secs_f64() * 1000.0
    );
    let _ = redis.kill();
    let _ = redis.wait();
}

/// A port nothing listens on, below the ephemeral range.
fn free_port() -> u16 {
    (20_000..32_000)
        .map(|p| p + (std::process::id() % 9_000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}
