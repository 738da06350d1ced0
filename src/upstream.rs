//! Where a forwarded request goes, once the decision has allowed it.
//!
//! Round robin over `upstream.peers`, skipping peers that fail their health check and peers
//! this request already failed to connect to (a connect failure sent nothing, so it is safe to
//! try the next peer). The peers are discovered from the settings snapshot, so a reload can
//! change them; the health of peers that stay is kept.
//!
//! Pingora's [`LoadBalancer`] does the discovery and runs the health checks, and nothing else:
//! its `select_with` costs a hashed health lookup per candidate, a `HashSet` of candidates
//! seen and a fresh [`HttpPeer`] per request. The pick reads this module's own [`View`]
//! instead: the peers as prebuilt `HttpPeer`s, each with its health in an `AtomicBool`, and a
//! round-robin counter. The usual pick takes no lock, reads no clock and builds no `Vec`: one
//! atomic add, one or two looks at a flag, and the clone of a prebuilt peer into its `Box`.

use crate::config::{HealthCheck, UpstreamConfig};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthObserve, HealthObserveCallback, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;
use prometheus::{IntGaugeVec, Opts};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// Discovery and health checks only (see the module doc); the pick never reads it.
    balancer: Arc<LoadBalancer<RoundRobin>>,
    /// The peers as the pick sees them, shared with the health check's callback.
    pool: Arc<Pool>,
    /// Round robin: the turn of the next pick.
    next: AtomicUsize,
    /// The latest end of any peer's pass-over (see [`Self::clock`]), 0 while none is passed
    /// over: while 0 a pick reads no clock (the usual case). Reset by the first pick that
    /// finds it over, unless a failed connect raised it meanwhile.
    passed_over_until: AtomicU64,
    /// Where the pass-over clock starts: it fits in an `AtomicU64`, so no lock guards it.
    epoch: Instant,
}

/// The view the pick reads, and the lock that keeps its health flags in step with the checks.
struct Pool {
    view: ArcSwap<View>,
    /// Taken by a rebuild of the view, a health change and a failed connect (never by a pick):
    /// a rebuild reads each peer's health from Pingora and carries its pass-over, and without
    /// it a health change or a failed connect landing on the old view meanwhile would be lost.
    writer: Mutex<()>,
}

/// The discovered peers, in the balancer's order; rebuilt when the peers change (a reload).
struct View {
    peers: Box<[Peer]>,
}

struct Peer {
    addr: SocketAddr,
    /// Built once: a pick clones it and sets the request's own timeouts.
    http: HttpPeer,
    /// Whether the peer passes its health check, set the moment the check changes its mind.
    healthy: AtomicBool,
    /// Until when (see [`Upstreams::clock`]) a failed connect passes the peer over; 0 when it
    /// never failed.
    passed_over_until: AtomicU64,
}

/// Sets a peer's flag when its health check changes its mind.
///
/// Chosen over reading `Backends::ready` in the health service's rhythm: the flag flips at
/// the very moment Pingora's own health state does (no lag of a polling interval, no task
/// of our own), and the callback runs only on a change, not on every check.
struct HealthFlags(Arc<Pool>);

#[async_trait]
impl HealthObserve for HealthFlags {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let _writer = self.0.lock();
        if let Some(peer) = self.0.view.load().find(socket_addr(target)) {
            peer.healthy.store(healthy, Ordering::Relaxed);
        }
    }
}

// === impl Upstreams ===

impl Upstreams {
    /// Builds the balancer over the peers `peers` names (asked again by [`Self::peers_changed`])
    /// and the background service that runs its health checks.
    pub fn new(
        health_check: &HealthCheck,
        peers: impl Fn() -> Vec<SocketAddr> + Send + Sync + 'static,
    ) -> (Upstreams, GenBackgroundService<LoadBalancer<RoundRobin>>) {
        let pool = Arc::new(Pool {
            view: ArcSwap::from_pointee(View { peers: Box::new([]) }),
            writer: Mutex::new(()),
        });
        let discovery = PeerDiscovery(Box::new(peers));
        let mut balancer = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(discovery)));
        // Discovery reads a list in memory: it completes at once, so the balancer has its
        // peers before the first request, not only once the background service has started.
        let _ = balancer.update().now_or_never();
        let observer: Option<HealthObserveCallback> = Some(Box::new(HealthFlags(Arc::clone(&pool))));
        let interval = match health_check {
            HealthCheck::Tcp { interval } => {
                let mut check = TcpHealthCheck::new();
                check.health_changed_callback = observer;
                balancer.set_health_check(check);
                *interval
            }
            HealthCheck::Http { path, interval } => {
                let mut check = HttpHealthCheck::new("localhost", false);
                check.req.set_uri(path.parse().expect("validated path"));
                check.health_changed_callback = observer;
                balancer.set_health_check(Box::new(check));
                *interval
            }
        };
        balancer.health_check_frequency = Some(interval);
        balancer.parallel_health_check = true;
        let service = background_service("upstream health check", balancer);
        let upstreams = Upstreams {
            balancer: service.task(),
            pool,
            next: AtomicUsize::new(0),
            passed_over_until: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        upstreams.rebuild();
        (upstreams, service)
    }

    /// A reload: the peers are discovered again (health kept for those that stay). The health
    /// check's kind and interval need a restart.
    pub async fn peers_changed(&self) {
        match self.balancer.update().await {
            Ok(()) => self.rebuild(),
            Err(e) => log::warn!("upstream peers not updated: {e}"),
        }
    }

    /// Builds the view again from the balancer's peers, each with the health Pingora holds for
    /// it (kept for a peer that stays, healthy for a new one) and its pass-over carried over.
    fn rebuild(&self) {
        let _writer = self.pool.lock();
        let old = self.pool.view.load();
        let backends = self.balancer.backends();
        let peers = backends
            .get_backend()
            .iter()
            .map(|backend| {
                let addr = socket_addr(backend);
                let until = old.find(addr).map_or(0, |peer| peer.passed_over_until.load(Ordering::Relaxed));
                Peer {
                    addr,
                    http: HttpPeer::new(addr, false, String::new()),
                    healthy: AtomicBool::new(backends.ready(backend)),
                    passed_over_until: AtomicU64::new(until),
                }
            })
            .collect();
        self.pool.view.store(Arc::new(View { peers }));
    }

    /// A healthy peer this request has not failed on yet, with `config`'s timeouts.
    /// Peers passed over lately are picked only when no other healthy one is left.
    pub fn pick(&self, tried: &[SocketAddr], config: &UpstreamConfig) -> Option<Box<HttpPeer>> {
        let view = self.pool.view.load();
        let peers = &view.peers;
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.pass_over_clock();
        let mut passed_over = None;
        for step in 0..peers.len() {
            let peer = &peers[turn.wrapping_add(step) % peers.len()];
            if !peer.healthy.load(Ordering::Relaxed) || tried.contains(&peer.addr) {
                continue;
            }
            if now.is_some_and(|now| peer.passed_over_until.load(Ordering::Relaxed) > now) {
                passed_over.get_or_insert(peer);
                continue;
            }
            // The peers looked past spend their turns too, so the peer after one that is down
            // does not get its share on top of its own.
            if step > 0 {
                self.next.fetch_add(step, Ordering::Relaxed);
            }
            return Some(peer.boxed(config));
        }
        passed_over.map(|peer| peer.boxed(config))
    }

    /// A connect to `peer` failed: pass it over for a second (the health check, which may run
    /// much less often, decides beyond that).
    pub fn connect_failed(&self, peer: SocketAddr) {
        let until = self.clock() + PASS_OVER.as_nanos() as u64;
        let _writer = self.pool.lock();
        if let Some(peer) = self.pool.view.load().find(peer) {
            peer.passed_over_until.store(until, Ordering::Relaxed);
            self.passed_over_until.fetch_max(until, Ordering::Release);
        }
    }

    /// Now on the pass-over clock while some peer may be passed over; `None`, without a clock
    /// read, while none is.
    fn pass_over_clock(&self) -> Option<u64> {
        let latest = self.passed_over_until.load(Ordering::Acquire);
        if latest == 0 {
            return None;
        }
        let now = self.clock();
        if now < latest {
            return Some(now);
        }
        // Every pass-over has ended. A failed connect since the load raised `latest`, and then
        // this reset fails and the next pick looks again.
        let _ = self.passed_over_until.compare_exchange(latest, 0, Ordering::AcqRel, Ordering::Relaxed);
        None
    }

    /// Nanoseconds since `epoch`, never 0 (which means "not passed over").
    fn clock(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Registers `keygate_upstream_healthy`, read from the health checks at each scrape: one
    /// series per configured peer (a peer removed by a reload leaves none behind).
    pub fn register_gauges(&self, metrics: &Metrics) {
        let pool = Arc::clone(&self.pool);
        let opts =
            Opts::new("keygate_upstream_healthy", "1 while the upstream peer passes its health check.");
        metrics.sampled(IntGaugeVec::new(opts, &["peer"]), move |gauge| {
            gauge.reset();
            for (peer, healthy) in pool.health() {
                gauge.with_label_values(&[&peer.to_string()]).set(i64::from(healthy));
            }
        });
    }

    /// Readiness: whether any peer passes its health check.
    pub fn any_healthy(&self) -> bool {
        self.pool.view.load().peers.iter().any(|peer| peer.healthy.load(Ordering::Relaxed))
    }
}

// === impl Pool ===

impl Pool {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the pick sees: the same flags, so the gauge and readiness never disagree with it.
    fn health(&self) -> Vec<(SocketAddr, bool)> {
        self.view.load().peers.iter().map(|peer| (peer.addr, peer.healthy.load(Ordering::Relaxed))).collect()
    }
}

// === impl View ===

impl View {
    fn find(&self, addr: SocketAddr) -> Option<&Peer> {
        self.peers.iter().find(|peer| peer.addr == addr)
    }
}

// === impl Peer ===

impl Peer {
    /// The prebuilt peer with the request's timeouts: those of the snapshot the request loaded,
    /// so a reload's new timeouts hold from its next request on, whatever the view.
    fn boxed(&self, config: &UpstreamConfig) -> Box<HttpPeer> {
        let mut peer = Box::new(self.http.clone());
        let connect = config.connect_timeout;
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = Some(config.read_timeout);
        peer
    }
}

fn socket_addr(backend: &Backend) -> SocketAddr {
    backend.addr.as_inet().copied().unwrap_or_else(|| ([0, 0, 0, 0], 0).into())
}
