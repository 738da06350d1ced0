//! The per-address limit on requests that carry no usable key, with a hard bound on memory.
//!
//! Each client address holds one GCRA state: the theoretical arrival time of its next request
//! (8 bytes) and whether it was refused in that state. The states live in a bounded cache of
//! `max_addresses` entries: past it the least recently seen addresses are forgotten, which
//! only gives a forgotten address a fresh burst (counted, so an operator sees the bound hit).
//! So a flood from ever new addresses (a botnet, or one IPv6 attacker with many /64s) costs at
//! most `max_addresses` states, however fast it comes.
//!
//! Memory returns after a flood: every sweep forgets addresses back to a full burst, and a map
//! left far larger than what it still holds is replaced by a fresh one, whose tables are sized
//! for the survivors; the old one's memory goes back to the allocator whole.

use super::{Limited, ProcessClock};
use crate::config::Rate;
use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::nanos::Nanos;
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a map starts sized for; it grows as addresses come, up to `max_addresses`.
const FIRST_ADDRESSES: usize = 1024;
/// About what one held address costs in the map (its state, its key, the cache's overhead): to
/// tell a map left oversized by a flood. Measured by `cargo bench --bench memory`.
const BYTES_PER_ADDRESS: usize = 64;

/// One address's GCRA state.
#[derive(Debug, Clone, Copy)]
struct State {
    /// When the next request is due, in the clock's nanoseconds; at or before now, the
    /// address has its whole burst.
    tat: u64,
    /// Whether a request was refused since the last one allowed.
    refused: bool,
}

/// Counts the addresses forgotten to keep the bound (not those forgotten for being idle).
#[derive(Clone, Default)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<IpAddr, State> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: IpAddr, _: State) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Addresses = Cache<IpAddr, State, UnitWeighter, DefaultHashBuilder, CountEvictions>;

/// The per-address limit. The clock is a parameter so tests can move time by hand.
pub struct IpLimiter<C: Clock<Instant = Nanos> = ProcessClock> {
    rate: Rate,
    /// The emission interval (one request's worth of time) and the burst's span, in
    /// nanoseconds: a request is allowed while the next one would be due within the span.
    interval: u64,
    span: u64,
    max_addresses: usize,
    addresses: ArcSwap<Addresses>,
    forgotten_early: CountEvictions,
    clock: C,
}

impl IpLimiter {
    pub fn new(rate: Rate, max_addresses: usize) -> Self {
        // The clock's origin is its first reading: taken now, it precedes every instant a
        // request reads for `check_at`.
        let _ = ProcessClock::nanos();
        IpLimiter::with_clock(rate, max_addresses, ProcessClock)
    }

    /// Charges one request to `client` at `at`, an instant the request has already read (its
    /// start): the request path reads the clock once, not again here.
    pub fn check_at(&self, client: IpAddr, at: std::time::Instant) -> Result<(), Limited> {
        self.charge_at(client, ProcessClock::nanos_at(at))
    }
}

impl<C: Clock<Instant = Nanos>> IpLimiter<C> {
    pub fn with_clock(rate: Rate, max_addresses: usize, clock: C) -> Self {
        IpLimiter::counting(rate, max_addresses, clock, CountEvictions::default())
    }

    /// The limiter that replaces `previous` for another rate or bound: it holds no address
    /// yet, but its count of addresses forgotten early goes on from `previous`'s (it is
    /// exported as a counter, which must never go down across a reload).
    pub fn succeeding(previous: &Self, rate: Rate, max_addresses: usize) -> Self
    where
        C: Clone,
    {
        IpLimiter::counting(rate, max_addresses, previous.clock.clone(), previous.forgotten_early.clone())
    }

    fn counting(rate: Rate, max_addresses: usize, clock: C, forgotten_early: CountEvictions) -> Self {
        let interval = (1e9 / rate.per_second).round().max(1.0) as u64;
        IpLimiter {
            rate,
            interval,
            span: interval.saturating_mul(u64::from(rate.burst.max(1))),
            max_addresses,
            addresses: ArcSwap::from_pointee(fresh(max_addresses, FIRST_ADDRESSES, &forgotten_early)),
            forgotten_early,
            clock,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now().as_u64()
    }

    /// Charges one request to `client`, now by the limiter's clock (the tests' and benchmarks'
    /// way; a request charges at its own instant, `check_at`).
    #[cfg(any(test, feature = "test-util"))]
    pub fn check(&self, client: IpAddr) -> Result<(), Limited> {
        self.charge_at(client, self.now())
    }

    /// Charges one request to `client` at `now`, in the clock's nanoseconds. An instant a
    /// little behind another request's is fine: the state only moves forward (`charge`).
    fn charge_at(&self, client: IpAddr, now: u64) -> Result<(), Limited> {
        let addresses = self.addresses.load();
        let verdict =
            match addresses.entry(&client, None, |_, state| EntryAction::Retain(self.charge(state, now))) {
                EntryResult::Retained(verdict) => verdict,
                EntryResult::Vacant(slot) => {
                    let mut state = State { tat: now, refused: false };
                    let verdict = self.charge(&mut state, now);
                    let _ = slot.insert(state);
                    verdict
                }
                // Neither is asked for (no callback removes; no timeout is given).
                EntryResult::Removed(..) | EntryResult::Replaced(..) | EntryResult::Timeout => Ok(()),
            };
        verdict
    }

    fn charge(&self, state: &mut State, now: u64) -> Result<(), Limited> {
        let next = state.tat.max(now) + self.interval;
        match next - now > self.span {
            true => {
                state.refused = true;
                Err(self.limited(next - self.span - now))
            }
            false => {
                *state = State { tat: next, refused: false };
                Ok(())
            }
        }
    }

    /// Whether `client` was refused and is still over its limit, without charging it.
    pub fn refusing(&self, client: IpAddr) -> Result<(), Limited> {
        let Some(state) = self.addresses.load().peek(&client) else { return Ok(()) };
        let now = self.now();
        let next = state.tat.max(now) + self.interval;
        match state.refused && next - now > self.span {
            true => Err(self.limited(next - self.span - now)),
            false => Ok(()),
        }
    }

    fn limited(&self, wait_nanos: u64) -> Limited {
        Limited::after(Duration::from_nanos(wait_nanos), self.rate)
    }

    /// Forgets addresses back to a full burst (an idle address costs nothing to forget), and
    /// replaces a map a flood left oversized by a fresh one holding what remains. Called
    /// periodically; a request racing the replacement may have its charge lost, which only
    /// gives its address one more request.
    pub fn forget_idle(&self) {
        let now = self.now();
        let addresses = self.addresses.load_full();
        addresses.retain(|_, state| state.tat > now);
        let used = addresses.memory_used();
        let needed = (addresses.len() + FIRST_ADDRESSES) * BYTES_PER_ADDRESS;
        if used.entries + used.map > 4 * needed {
            let survivors =
                fresh(self.max_addresses, addresses.len() + FIRST_ADDRESSES, &self.forgotten_early);
            for (address, state) in addresses.iter() {
                survivors.insert(address, state);
            }
            self.addresses.store(Arc::new(survivors));
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The bound on addresses held.
    pub fn max_addresses(&self) -> usize {
        self.max_addresses
    }

    /// Addresses with limiter state.
    pub fn addresses(&self) -> usize {
        self.addresses.load().len()
    }

    /// Addresses forgotten since start to keep within `max_addresses`, by this limiter and
    /// those it succeeded.
    pub fn forgotten_early(&self) -> u64 {
        self.forgotten_early.0.load(Ordering::Relaxed)
    }
}

/// An empty map that holds at most `max_addresses`, its tables first sized for `expected`.
fn fresh(max_addresses: usize, expected: usize, evictions: &CountEvictions) -> Addresses {
    let expected = expected.min(max_addresses).max(1);
    let make = |capacity: u64| {
        Cache::with(expected, capacity, UnitWeighter, DefaultHashBuilder::default(), evictions.clone())
    };
    // The cache splits its capacity over its shards rounding up, so it may hold a few more
    // than asked; asked for a multiple of its shards (as many: it expects as many entries), it
    // holds at most `max_addresses`.
    let bound = max_addresses as u64;
    let first = make(bound);
    let shards = first.num_shards() as u64;
    match first.capacity() > bound {
        false => first,
        true => make((bound - bound % shards).max(1)),
    }
}

#[cfg(test)]
mod tests;
