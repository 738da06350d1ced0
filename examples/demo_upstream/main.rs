//! The demo's ingestion node: answers every request with 200 and the app keygate vouched for.
//!
//! ```text
//! cargo run --release --example demo_upstream -- 127.0.0.1:8080
//! curl -s localhost:8080/ -H 'X-Keygate-App: demo'
//! ```
//!
//! The server itself is in `upstream.rs`, which the integration tests include as their real
//! upstream.

#[expect(
    dead_code,
    reason = "what was received, and killing a node, are for the tests; the demo only serves"
)]
mod upstream;

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let upstream = upstream::DemoUpstream::spawn(&addr)?;
    eprintln!("demo upstream listening on {}", upstream.addr);
    loop {
        std::thread::park();
    }
}
