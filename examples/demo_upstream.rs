//! The demo's ingestion node: answers every request with 200 and the app keygate vouched for.
//!
//! ```text
//! cargo run --release --example demo_upstream -- 127.0.0.1:8080
//! curl -s localhost:8080/ -H 'X-Keygate-App: demo'
//! ```

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let upstream = keygate::demo_upstream::DemoUpstream::spawn(&addr)?;
    eprintln!("demo upstream listening on {}", upstream.addr);
    loop {
        std::thread::park();
    }
}
