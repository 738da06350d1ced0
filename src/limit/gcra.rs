//! The per-key GCRA (generic cell rate algorithm): one `AtomicU64` holding the theoretical
//! arrival time (TAT) in nanoseconds of the [`super::ProcessClock`], checked with one
//! compare-exchange.
//!
//! Our own rather than governor's because a fleet key's limiter must also be charged with
//! requests it did not admit (those the other gateways admitted), debt allowed: `charge` pushes
//! the TAT forward unconditionally, up to a cap, so a long outage's backlog cannot block a key
//! for ever. Time is a parameter of every call, so the tests inject it.

use std::sync::atomic::{AtomicU64, Ordering};

/// The least debt a key may owe, in nanoseconds: enough to hold a fleet's charges of a few
/// sync periods for a fast key with a small burst.
const MIN_DEBT_CAP: u64 = 2_000_000_000;
/// Debt is capped at this many bursts' worth (or `MIN_DEBT_CAP`, whichever is more).
const DEBT_BURSTS: u64 = 4;

/// The shape of a limit in the GCRA's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Nanoseconds between two requests at the steady rate.
    pub interval: u64,
    /// The burst: requests allowed at once from a full limiter.
    pub burst: u32,
}

/// What an admitted request leaves: for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// Requests that could be admitted at once right now.
    pub remaining: u64,
    /// Nanoseconds until the limiter is full again.
    pub full_in: u64,
}

/// A GCRA's state: the theoretical arrival time.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

impl Gcra {
    /// Admits a request costing `cost` cells at `now` if at most `allowance` cells (the burst,
    /// or a gateway's share of it) would then be in use; else the nanoseconds to wait.
    #[inline]
    pub fn check(&self, now: u64, cell: Cell, cost: u64, allowance: u64) -> Result<Headroom, u64> {
        let tolerance = allowance.max(cost).saturating_mul(cell.interval);
        let limit = now.saturating_add(tolerance);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(cost.saturating_mul(cell.interval));
            if next > limit {
                return Err(next - limit);
            }
            match self.tat.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let remaining = (limit - next) / cell.interval.max(1);
                    return Ok(Headroom { remaining, full_in: next - now });
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Charges `cells` admitted elsewhere: the TAT moves on whatever it was, the debt capped.
    pub fn charge(&self, now: u64, cell: Cell, cells: u64) {
        if cells == 0 {
            return;
        }
        let burst = u64::from(cell.burst).saturating_mul(cell.interval);
        let cap = now.saturating_add(burst.saturating_mul(DEBT_BURSTS).max(MIN_DEBT_CAP));
        let _ = self.tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
            Some(tat.max(now).saturating_add(cells.saturating_mul(cell.interval)).min(cap.max(tat)))
        });
    }

    /// The nanoseconds of debt and use beyond `now` (0 for a full limiter), for tests.
    #[cfg(test)]
    pub fn used(&self, now: u64) -> u64 {
        self.tat.load(Ordering::Relaxed).saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    /// 10 a second, burst 5.
    const CELL: Cell = Cell { interval: SECOND / 10, burst: 5 };

    fn admitted(gcra: &Gcra, now: u64, allowance: u64) -> usize {
        (0..100).take_while(|_| gcra.check(now, CELL, 1, allowance).is_ok()).count()
    }

    #[test]
    fn a_full_limiter_admits_its_allowance_then_refills_at_the_rate() {
        let gcra = Gcra::default();
        let start = 10 * SECOND;
        assert_eq!(admitted(&gcra, start, 5), 5);
        let wait = gcra.check(start, CELL, 1, 5).unwrap_err();
        assert_eq!(wait, SECOND / 10);
        assert_eq!(admitted(&gcra, start + SECOND / 2, 5), 5, "half a second refills 5");
        let headroom = Gcra::default().check(start, CELL, 1, 5).unwrap();
        assert_eq!(headroom, Headroom { remaining: 4, full_in: SECOND / 10 });
    }

    #[test]
    fn a_share_of_the_burst_admits_only_that_share() {
        let gcra = Gcra::default();
        assert_eq!(admitted(&gcra, 10 * SECOND, 2), 2);
        // A cost above the allowance still gets through a full limiter: never zero.
        let costly = Gcra::default();
        assert!(costly.check(10 * SECOND, CELL, 3, 1).is_ok());
        assert!(costly.check(10 * SECOND, CELL, 3, 1).is_err());
        assert!(costly.check(10 * SECOND + 3 * SECOND / 10, CELL, 3, 1).is_ok(), "at rate/3");
    }

    #[test]
    fn a_charge_is_debt_that_delays_the_next_admission() {
        let gcra = Gcra::default();
        let now = 10 * SECOND;
        gcra.charge(now, CELL, 8);
        // 8 cells used of 5: 3 over, so nothing until 4 have drained.
        assert!(gcra.check(now, CELL, 1, 5).is_err());
        assert!(gcra.check(now + 3 * SECOND / 10, CELL, 1, 5).is_err());
        assert!(gcra.check(now + 4 * SECOND / 10, CELL, 1, 5).is_ok());
    }

    #[test]
    fn debt_is_capped_so_a_backlog_cannot_block_a_key_for_ever() {
        let gcra = Gcra::default();
        let now = 10 * SECOND;
        gcra.charge(now, CELL, 1_000_000);
        // The cap: 4 bursts' worth, but at least 2 s.
        assert_eq!(gcra.used(now), 2 * SECOND);
        assert!(gcra.check(now + 2 * SECOND - 5 * SECOND / 10, CELL, 1, 5).is_err());
        assert!(gcra.check(now + 2 * SECOND - 4 * SECOND / 10, CELL, 1, 5).is_ok());
        // A slow key's cap is its bursts: 1 a minute, burst 2, cap 8 minutes.
        let slow = Cell { interval: 60 * SECOND, burst: 2 };
        let gcra = Gcra::default();
        gcra.charge(now, slow, 1_000);
        assert_eq!(gcra.used(now), 8 * 60 * SECOND);
    }
}
