//! Whether the limit allows it: the per-IP limit, charged before a store read or for a request
//! without a usable key, and the per-key limit, checked last, on a known key.
//!
//! Two kinds of limit, both GCRA: one per known key ([`gcra`], our own), whose state lives beside
//! the key's cache entry (so it costs no second lookup and is dropped with the entry), and one
//! per client address for requests without a usable key (governor's, keyed). When a store
//! lookup is to come, the per-address limit is either charged first or, while the filter
//! answers, asked without a charge whether it has refused the address (see `decide`).
//!
//! A key whose rate is the fleet's (`rate_limit.scope: fleet`) or that has a quota also has
//! counters the gateways exchange through the store ([`fleet`]).

pub mod fleet;
pub mod gcra;
mod per_ip;

use crate::config::Rate;
use crate::store::record::Quota;
use fleet::{FleetKey, QuotaLeft, Refused};
use gcra::{Cell, Gcra, Headroom};
use governor::clock::Clock;
use governor::nanos::Nanos;
pub use per_ip::IpLimiter;
use std::sync::{Arc, OnceLock};
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

/// The time the per-key limiters read: nanoseconds since the process's first reading. A unit
/// type, so a cached key's limiter holds no clock of its own (governor's default clock, quanta's,
/// is 40 bytes).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessClock;

impl ProcessClock {
    /// Nanoseconds since the process's first reading.
    #[inline]
    pub fn nanos() -> u64 {
        ProcessClock::origin().elapsed().as_nanos() as u64
    }

    /// `at` in the clock's nanoseconds (0 if before its first reading): for an instant the
    /// caller has already read, which spares a clock read of its own.
    #[inline]
    pub fn nanos_at(at: Instant) -> u64 {
        at.saturating_duration_since(ProcessClock::origin()).as_nanos() as u64
    }

    fn origin() -> Instant {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        *ORIGIN.get_or_init(Instant::now)
    }
}

impl Clock for ProcessClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(ProcessClock::nanos())
    }
}

/// A refusal by a key's limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Over its rate.
    Rate(Limited),
    /// Over its quota for the period.
    Quota(Exhausted),
}

/// A quota used up: what the 429 `quota_exceeded` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// Whole seconds until the period ends (at least 1).
    pub retry_after: u64,
    pub quota: u64,
}

/// What an admitted request leaves of the tighter of the key's rate and quota: the
/// `RateLimit-Limit`, `-Remaining` and `-Reset` of the forwarded response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until the limit is whole again (the burst refilled, the period over).
    pub reset: u64,
}

/// One key's limiter and the rate it was built for.
pub struct KeyLimiter {
    pub(crate) rate: Rate,
    /// Nanoseconds between two requests at `rate` (the burst is `rate`'s).
    interval: u64,
    /// The key's own GCRA; unused when its rate is the fleet's (the fleet key holds that one).
    local: Gcra,
    /// The key's shared counters, when its rate is the fleet's or it has a quota.
    fleet: Option<Arc<FleetKey>>,
}

impl KeyLimiter {
    pub fn new(rate: Rate) -> Self {
        KeyLimiter { rate, interval: cell(rate).interval, local: Gcra::default(), fleet: None }
    }

    /// A limiter whose rate or quota is shared through `key`.
    pub(crate) fn shared(rate: Rate, key: Arc<FleetKey>) -> Self {
        KeyLimiter { fleet: Some(key), ..KeyLimiter::new(rate) }
    }

    /// The GCRA cell of `rate`.
    pub(crate) fn cell_of(rate: Rate) -> Cell {
        cell(rate)
    }

    /// What the limiter shares beside its rate: the quota it keeps, and whether its rate is
    /// the fleet's (a grant whose record asks for another shape is rebuilt).
    pub(crate) fn shape(&self) -> (Option<Quota>, bool) {
        self.fleet.as_ref().map_or((None, false), |key| key.shape())
    }

    /// Admits one request now, or says why not. Atomics only (see [`gcra`] and [`fleet`]).
    #[cfg(any(test, feature = "test-util"))]
    pub fn check(&self) -> Result<Allowance, KeyRefusal> {
        self.check_at(Instant::now())
    }

    /// [`Self::check`] as of `now`, the moment the request began (one clock read a request).
    #[inline]
    pub fn check_at(&self, now: Instant) -> Result<Allowance, KeyRefusal> {
        let now = ProcessClock::nanos_at(now);
        let cell = Cell { interval: self.interval, burst: self.rate.burst.max(1) };
        let (headroom, quota) = match &self.fleet {
            None => {
                let burst = u64::from(cell.burst);
                (self.local.check(now, cell, 1, burst).map_err(|wait| self.limited(wait))?, None)
            }
            Some(key) => key.admit(now, cell, &self.local).map_err(|refused| match refused {
                Refused::Rate(wait) => self.limited(wait),
                Refused::Quota { retry_after, quota } => KeyRefusal::Quota(Exhausted { retry_after, quota }),
            })?,
        };
        Ok(self.allowance(headroom, quota))
    }

    fn limited(&self, wait: u64) -> KeyRefusal {
        KeyRefusal::Rate(Limited::after(Duration::from_nanos(wait), self.rate))
    }

    fn allowance(&self, headroom: Headroom, quota: Option<QuotaLeft>) -> Allowance {
        let rate = Allowance {
            limit: u64::from(self.rate.burst),
            remaining: headroom.remaining,
            reset: headroom.full_in.div_ceil(1_000_000_000),
        };
        match quota {
            Some(q) if q.remaining < rate.remaining => {
                Allowance { limit: q.quota, remaining: q.remaining, reset: q.reset }
            }
            _ => rate,
        }
    }
}

fn cell(rate: Rate) -> Cell {
    // Rates are validated within MIN_RATE..=MAX_RATE; the bounds only keep this total.
    let interval = (1e9 / rate.per_second).clamp(1.0, u64::MAX as f64 / 4.0) as u64;
    Cell { interval, burst: rate.burst.max(1) }
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
        assert_eq!(limiter.check(), Err(KeyRefusal::Rate(Limited { retry_after: 2, burst: 3 })));
        let fast = KeyLimiter::new(Rate { per_second: 1000.0, burst: 1 });
        assert!(fast.check().is_ok());
        assert_eq!(fast.check(), Err(KeyRefusal::Rate(Limited { retry_after: 1, burst: 1 })));
    }

    #[test]
    fn an_admission_tells_what_is_left() {
        let limiter = KeyLimiter::new(Rate { per_second: 2.0, burst: 4 });
        assert_eq!(limiter.check(), Ok(Allowance { limit: 4, remaining: 3, reset: 1 }));
        assert_eq!(limiter.check(), Ok(Allowance { limit: 4, remaining: 2, reset: 1 }));
        assert_eq!(limiter.check(), Ok(Allowance { limit: 4, remaining: 1, reset: 2 }));
    }
}
