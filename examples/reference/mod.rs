//! What the reference proxies share with keygate's binary, so that `make bench` compares
//! keygate's own work and nothing else: the allocator, and the Pingora runtime keygate runs.

use pingora::prelude::{http_proxy_service, HttpPeer, ProxyHttp};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

/// keygate's binary runs on mimalloc (src/main.rs); a reference on the system allocator would
/// be slower for a reason keygate does not share.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line every reference takes: `LISTEN UPSTREAM [THREADS] [WORK_STEALING]`.
struct Args {
    listen: String,
    /// Parsed by every reference; the rejection never sends to it.
    upstream: String,
    conf: ServerConf,
}

impl Args {
    /// THREADS (1) and WORK_STEALING (`false`, keygate's default `work_stealing`) are the ones
    /// keygate is given in the same benchmark run.
    fn parse() -> Args {
        let mut args = std::env::args().skip(1);
        let listen = args.next().unwrap_or_else(|| "127.0.0.1:6200".into());
        let upstream = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
        let threads = args.next().map_or(1, |t| t.parse().expect("THREADS: a whole number"));
        let work_stealing = args.next().is_some_and(|w| w.parse().expect("WORK_STEALING: true or false"));
        // As keygate's server.rs sets it with `grace_period_s: 0`, which the benchmark gives it.
        let conf = ServerConf {
            threads,
            work_stealing,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        Args { listen, upstream, conf }
    }

    /// A bootstrapped server with keygate's runtime settings.
    fn server(&mut self) -> Server {
        let mut server = Server::new_with_opt_and_conf(None, std::mem::take(&mut self.conf));
        server.bootstrap();
        server
    }
}

/// Parses the command line and serves `proxy` (built from the peer of UPSTREAM, parsed once)
/// on LISTEN with keygate's runtime, until stopped.
pub fn serve<P>(proxy: impl FnOnce(HttpPeer) -> P)
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let mut args = Args::parse();
    let upstream: std::net::SocketAddr = args.upstream.parse().expect("UPSTREAM: HOST:PORT");
    let mut server = args.server();
    let peer = HttpPeer::new(upstream, false, String::new());
    let mut service = http_proxy_service(&server.configuration, proxy(peer));
    service.add_tcp(&args.listen);
    server.add_service(service);
    server.run_forever();
}
