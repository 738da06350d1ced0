//! Whether the limit allows it: the per-IP limit, charged before a store read or for a request
//! without a usable key, and the per-key limit, checked last, on a known key.
//!
//! Two kinds of limit, both GCRA (governor): one per known key, whose state lives beside the
//! key's cache entry (so it costs no second lookup and is dropped with the entry), and one per
//! client address for requests without a usable key. When a store lookup is to come, the
//! per-address limit is either charged first or, while the filter answers, asked without a
//! charge whether it has refused the address (see `decide`).

mod per_ip;

use crate::config::Rate;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
pub use per_ip::IpLimiter;
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
}
