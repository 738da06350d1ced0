//! Where a forwarded request goes, once the decision has allowed it.
//!
//! Round robin over `upstream.peers`, skipping peers that fail their health check and peers
//! this request already failed to connect to (a connect failure sent nothing, so it is safe to
//! try the next peer). The peers are discovered from the settings snapshot, so a reload can
//! change them; Pingora keeps the health state of peers that stay.

use crate::config::{HealthCheck, UpstreamConfig};
use crate::metrics::Metrics;
use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;
use prometheus::{IntGaugeVec, Opts};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The configured peers, as the settings in force name them.
type Peers = Box<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

struct PeerDiscovery(Peers);

#[async_trait]
impl ServiceDiscovery for PeerDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let peers = (self.0)();
        let backends =
            peers.iter().map(|addr| Backend::new(&addr.to_string())).collect::<pingora::Result<_>>()?;
        Ok((backends, HashMap::new()))
    }
}

/// How long a peer whose connect just failed is passed over: a peer that died between two
/// health checks then costs one failed connect a second, not one per request.
const PASS_OVER: Duration = Duration::from_secs(1);

pub struct Upstreams {
    balancer: Arc<LoadBalancer<RoundRobin>>,
    /// Peers whose connect failed lately, and until when they are passed over.
    passed_over: Mutex<Vec<(SocketAddr, Instant)>>,
    /// Whether `passed_over` may hold a live entry: while not, a pick takes no lock and reads
    /// no clock (the usual case). Cleared by the first pick that finds every entry expired.
    any_passed_over: AtomicBool,
}

impl Upstreams {
    /// Builds the balancer over the peers `peers` names (asked again by [`Self::peers_changed`])
    /// and the background service that runs its health checks.
    pub fn new(
        health_check: &HealthCheck,
        peers: impl Fn() -> Vec<SocketAddr> + Send + Sync + 'static,
    ) -> (Upstreams, GenBackgroundService<LoadBalancer<RoundRobin>>) {
        let discovery = PeerDiscovery(Box::new(peers));
        let mut balancer = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(discovery)));
        // Discovery reads a list in memory: it completes at once, so the balancer has its
        // peers before the first request, not only once the background service has started.
        let _ = balancer.update().now_or_never();
        let interval = match health_check {
            HealthCheck::Tcp { interval } => {
                balancer.set_health_check(TcpHealthCheck::new());
                *interval
            }
            HealthCheck::Http { path, interval } => {
                let mut check = HttpHealthCheck::new("localhost", false);
                check.req.set_uri(path.parse().expect("validated path"));
                balancer.set_health_check(Box::new(check));
                *interval
            }
        };
        balancer.health_check_frequency = Some(interval);
        balancer.parallel_health_check = true;
        let service = background_service("upstream health check", balancer);
        let upstreams = Upstreams {
            balancer: service.task(),
            passed_over: Mutex::new(Vec::new()),
            any_passed_over: AtomicBool::new(false),
        };
        (upstreams, service)
    }

    /// A reload: the peers are discovered again (health kept for those that stay). The health
    /// check's kind and interval need a restart.
    pub async fn peers_changed(&self) {
        if let Err(e) = self.balancer.update().await {
            log::warn!("upstream peers not updated: {e}");
        }
    }

    /// A healthy peer this request has not failed on yet, with `config`'s timeouts.
    /// Peers passed over lately are picked only when no other healthy one is left.
    pub fn pick(&self, tried: &[SocketAddr], config: &UpstreamConfig) -> Option<Box<HttpPeer>> {
        let untried = |backend: &Backend, healthy: bool| healthy && !tried.contains(&socket_addr(backend));
        let passed_over = self.passed_over_now();
        let in_favour = |backend: &Backend, healthy: bool| {
            untried(backend, healthy) && !passed_over.contains(&socket_addr(backend))
        };
        let backend = match passed_over.is_empty() {
            true => self.balancer.select_with(b"", 256, untried),
            false => self
                .balancer
                .select_with(b"", 256, in_favour)
                .or_else(|| self.balancer.select_with(b"", 256, untried)),
        }?;
        let connect = config.connect_timeout;
        let mut peer = HttpPeer::new(socket_addr(&backend), false, String::new());
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = Some(config.read_timeout);
        Some(Box::new(peer))
    }

    /// A connect to `peer` failed: pass it over for a second (the health check, which may run
    /// much less often, decides beyond that).
    pub fn connect_failed(&self, peer: SocketAddr) {
        let now = Instant::now();
        let mut passed_over = self.passed_over.lock().unwrap_or_else(|e| e.into_inner());
        passed_over.retain(|&(addr, until)| addr != peer && until > now);
        passed_over.push((peer, now + PASS_OVER));
        self.any_passed_over.store(true, Ordering::Release);
    }

    /// The peers passed over now; empty, without a lock, while none has failed lately.
    fn passed_over_now(&self) -> Vec<SocketAddr> {
        if !self.any_passed_over.load(Ordering::Acquire) {
            return Vec::new();
        }
        let now = Instant::now();
        let mut passed_over = self.passed_over.lock().unwrap_or_else(|e| e.into_inner());
        passed_over.retain(|&(_, until)| until > now);
        if passed_over.is_empty() {
            self.any_passed_over.store(false, Ordering::Release);
        }
        passed_over.iter().map(|&(addr, _)| addr).collect()
    }

    /// Each configured peer and whether it passes its health check.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        health(&self.balancer)
    }

    /// Registers `keygate_upstream_healthy`, read from the health checks at each scrape: one
    /// series per configured peer (a peer removed by a reload leaves none behind).
    pub fn register_gauges(&self, metrics: &Metrics) {
        let balancer = Arc::clone(&self.balancer);
        let opts =
            Opts::new("keygate_upstream_healthy", "1 while the upstream peer passes its health check.");
        metrics.sampled(IntGaugeVec::new(opts, &["peer"]), move |gauge| {
            gauge.reset();
            for (peer, healthy) in health(&balancer) {
                gauge.with_label_values(&[&peer.to_string()]).set(i64::from(healthy));
            }
        });
    }

    pub fn any_healthy(&self) -> bool {
        self.health().iter().any(|(_, healthy)| *healthy)
    }
}

fn health(balancer: &LoadBalancer<RoundRobin>) -> Vec<(SocketAddr, bool)> {
    let backends = balancer.backends();
    backends.get_backend().iter().map(|b| (socket_addr(b), backends.ready(b))).collect()
}

fn socket_addr(backend: &Backend) -> SocketAddr {
    backend.addr.as_inet().copied().unwrap_or_else(|| ([0, 0, 0, 0], 0).into())
}
