//! Whether the limit allows it: the per-IP limit, charged before a store read or for a request
//! without a usable key, and the per-key limit, checked last, on a known key.
//!
//! Two kinds of limit, both GCRA (governor): one per known key, whose state lives beside the
//! key's cache entry (so it costs no second lookup and is dropped with the entry), and one per
//! client address for requests without a usable key. When a store lookup is to come, the
//! per-address limit is either charged first or, while the filter answers, asked without a
//! charge whether it has refused the address (see `decide`).

use crate::config::Rate;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A refusal by a limiter: what the 429's `Retry-After` and `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a request would be allowed again (at least 1).
    pub retry_after: u64,
    /// The limit's burst: the most requests it allows at once.
    pub burst: u32,
}

impl Limited {
    fn after(wait: Duration, rate: Rate) -> Self {
        Limited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64, burst: rate.burst }
    }
}

fn quota(rate: Rate) -> Quota {
    // Rates are validated within MIN_RATE..=MAX_RATE; the fallback only keeps this total.
    let period = Duration::try_from_secs_f64(1.0 / rate.per_second)
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).expect("period is never zero").allow_burst(burst)
}

/// The time the per-key limiters read: nanoseconds since the process's first reading. A unit
/// type, so a cached key's limiter holds no clock of its own (governor's default clock, quanta's,
/// is 40 bytes).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessClock;

impl Clock for ProcessClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        Nanos::from(ORIGIN.get_or_init(Instant::now).elapsed())
    }
}

/// One key's limiter and the rate it was built for.
pub struct KeyLimiter {
    pub(crate) rate: Rate,
    limiter: RateLimiter<NotKeyed, InMemoryState, ProcessClock, NoOpMiddleware<Nanos>>,
}

impl KeyLimiter {
    pub fn new(rate: Rate) -> Self {
        KeyLimiter { rate, limiter: RateLimiter::direct_with_clock(quota(rate), ProcessClock) }
    }

    pub fn check(&self) -> Result<(), Limited> {
        self.limiter
            .check()
            .map_err(|until| Limited::after(until.wait_time_from(ProcessClock.now()), self.rate))
    }
}

/// Addresses whose refusals are remembered at once; past it the oldest are forgotten, which
/// only lets a forgotten address's rare filter false positives reach the store again.
const REFUSALS_HELD: usize = 65_536;

/// The per-address limit on requests that carry no usable key. The clock is a parameter so
/// tests can move time by hand.
pub struct IpLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    rate: Rate,
    /// Until when each recently refused address stays refused: read by [`IpLimiter::refusing`],
    /// which must not spend the address's budget.
    refused_until: quick_cache::sync::Cache<IpAddr, C::Instant>,
}

impl IpLimiter {
    pub fn new(rate: Rate) -> Self {
        IpLimiter::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> IpLimiter<C> {
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        IpLimiter {
            limiter: RateLimiter::dashmap_with_clock(quota(rate), clock),
            rate,
            refused_until: quick_cache::sync::Cache::new(REFUSALS_HELD),
        }
    }

    /// Charges one request to `client`.
    pub fn check(&self, client: IpAddr) -> Result<(), Limited> {
        self.limiter.check_key(&client).map_err(|until| {
            // Refusals of an address in one state share one answer: written once, not per request.
            let earliest = until.earliest_possible();
            if self.refused_until.get(&client).is_none_or(|known| known < earliest) {
                self.refused_until.insert(client, earliest);
            }
            Limited::after(until.wait_time_from(self.limiter.clock().now()), self.rate)
        })
    }

    /// Whether `client` was refused and is still over its limit, without charging it.
    pub fn refusing(&self, client: IpAddr) -> Result<(), Limited> {
        let Some(until) = self.refused_until.get(&client) else { return Ok(()) };
        let now = self.limiter.clock().now();
        match until > now {
            true => Err(Limited::after(Duration::from(until.duration_since(now)), self.rate)),
            false => Ok(()),
        }
    }

    /// Forgets addresses whose state is back to a full burst (an idle address costs nothing to
    /// forget); called periodically so that requests from ever new addresses cannot grow memory
    /// without bound.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Addresses with limiter state.
    pub fn addresses(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal_with_at_least_one_second() {
        let limiter = KeyLimiter::new(Rate { per_second: 0.5, burst: 3 });
        for _ in 0..3 {
            assert!(limiter.check().is_ok());
        }
        assert_eq!(limiter.check(), Err(Limited { retry_after: 2, burst: 3 }));
        let fast = KeyLimiter::new(Rate { per_second: 1000.0, burst: 1 });
        assert!(fast.check().is_ok());
        assert_eq!(fast.check(), Err(Limited { retry_after: 1, burst: 1 }));
    }

    #[test]
    fn addresses_are_limited_apart() {
        let limiter = IpLimiter::new(Rate { per_second: 1.0, burst: 2 });
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limiter.check(a).is_ok() && limiter.check(a).is_ok());
        assert!(limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok());
        assert_eq!(limiter.addresses(), 2);
    }

    #[test]
    fn the_arithmetic_follows_the_clock() {
        use governor::clock::FakeRelativeClock;
        let clock = FakeRelativeClock::default();
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let limiter = IpLimiter::with_clock(Rate { per_second: 5.0, burst: 5 }, clock.clone());
        for _ in 0..5 {
            assert!(limiter.check(client).is_ok());
        }
        assert_eq!(limiter.check(client), Err(Limited { retry_after: 1, burst: 5 }));
        // One emission interval (200 ms) later, exactly one more.
        clock.advance(Duration::from_millis(200));
        assert!(limiter.check(client).is_ok());
        assert!(limiter.check(client).is_err());

        let slow = IpLimiter::with_clock(Rate { per_second: 0.3, burst: 1 }, clock.clone());
        assert!(slow.check(client).is_ok());
        // 1 / 0.3 = 3.33 s to the next request: rounded up to whole seconds.
        assert_eq!(slow.check(client).map_err(|l| l.retry_after), Err(4));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(slow.check(client).map_err(|l| l.retry_after), Err(2));
        clock.advance(Duration::from_millis(1900));
        assert!(slow.check(client).is_ok());
    }

    #[test]
    fn a_refused_address_is_refused_without_being_charged_until_it_recovers() {
        use governor::clock::FakeRelativeClock;
        let clock = FakeRelativeClock::default();
        let limiter = IpLimiter::with_clock(Rate { per_second: 1.0, burst: 2 }, clock.clone());
        let (client, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limiter.refusing(client).is_ok());
        assert!(limiter.check(client).is_ok() && limiter.check(client).is_ok());
        // Spent but not yet refused: asking does not refuse, nor charge.
        assert!(limiter.refusing(client).is_ok());
        assert_eq!(limiter.check(client), Err(Limited { retry_after: 1, burst: 2 }));
        for _ in 0..10 {
            assert_eq!(limiter.refusing(client), Err(Limited { retry_after: 1, burst: 2 }));
        }
        assert!(limiter.refusing(other).is_ok());
        clock.advance(Duration::from_millis(1000));
        assert!(limiter.refusing(client).is_ok());
        // Asking charged nothing: the one request the second brought is still there.
        assert!(limiter.check(client).is_ok());
        assert!(limiter.check(client).is_err());
    }

    #[test]
    fn idle_addresses_are_forgotten_and_busy_ones_kept() {
        use governor::clock::FakeRelativeClock;
        let clock = FakeRelativeClock::default();
        let limiter = IpLimiter::with_clock(Rate { per_second: 1.0, burst: 2 }, clock.clone());
        for n in 0..1000u32 {
            let _ = limiter.check(IpAddr::from(n.to_be_bytes()));
        }
        let busy: IpAddr = "10.9.9.9".parse().unwrap();
        assert!(limiter.check(busy).is_ok() && limiter.check(busy).is_ok());
        assert_eq!(limiter.addresses(), 1001);
        // governor keeps state one emission interval past the point where it equals a fresh
        // bucket: at 2.5 s the one-request addresses go, the two-request one stays.
        clock.advance(Duration::from_millis(2500));
        limiter.forget_idle();
        assert_eq!(limiter.addresses(), 1);
        clock.advance(Duration::from_secs(1));
        limiter.forget_idle();
        assert_eq!(limiter.addresses(), 0);
    }
}
