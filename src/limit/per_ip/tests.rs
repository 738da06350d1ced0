use super::*;
use governor::clock::FakeRelativeClock;

#[test]
fn addresses_are_limited_apart() {
    let limiter = IpLimiter::new(Rate { per_second: 1.0, burst: 2 }, 100);
    let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    assert!(limiter.check(a).is_ok() && limiter.check(a).is_ok());
    assert!(limiter.check(a).is_err());
    assert!(limiter.check(b).is_ok());
    assert_eq!(limiter.addresses(), 2);
}

#[test]
fn the_arithmetic_follows_the_clock() {
    let clock = FakeRelativeClock::default();
    let client: IpAddr = "10.0.0.1".parse().unwrap();
    let limiter = IpLimiter::with_clock(Rate { per_second: 5.0, burst: 5 }, 100, clock.clone());
    for _ in 0..5 {
        assert!(limiter.check(client).is_ok());
    }
    assert_eq!(limiter.check(client), Err(Limited { retry_after: 1, burst: 5 }));
    // One emission interval (200 ms) later, exactly one more.
    clock.advance(Duration::from_millis(200));
    assert!(limiter.check(client).is_ok());
    assert!(limiter.check(client).is_err());

    let slow = IpLimiter::with_clock(Rate { per_second: 0.3, burst: 1 }, 100, clock.clone());
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
    let clock = FakeRelativeClock::default();
    let limiter = IpLimiter::with_clock(Rate { per_second: 1.0, burst: 2 }, 10_000, clock.clone());
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
    let clock = FakeRelativeClock::default();
    let limiter = IpLimiter::with_clock(Rate { per_second: 1.0, burst: 2 }, 10_000, clock.clone());
    for n in 0..1000u32 {
        let _ = limiter.check(IpAddr::from(n.to_be_bytes()));
    }
    let busy: IpAddr = "10.9.9.9".parse().unwrap();
    assert!(limiter.check(busy).is_ok() && limiter.check(busy).is_ok());
    assert_eq!(limiter.addresses(), 1001);
    // An address is forgotten once it is back to its whole burst: the one-request addresses
    // at 1 s, the two-request one at 2 s.
    clock.advance(Duration::from_millis(1500));
    limiter.forget_idle();
    assert_eq!(limiter.addresses(), 1);
    // It kept its state: 1.5 requests regained, so one more now, not two.
    assert!(limiter.check(busy).is_ok() && limiter.check(busy).is_err());
    clock.advance(Duration::from_secs(2));
    limiter.forget_idle();
    assert_eq!(limiter.addresses(), 0);
}

#[test]
fn a_flood_of_new_addresses_is_held_to_the_bound_and_counted() {
    let clock = FakeRelativeClock::default();
    let limiter = IpLimiter::with_clock(Rate { per_second: 1.0, burst: 2 }, 500, clock.clone());
    for n in 0..20_000u32 {
        let _ = limiter.check(IpAddr::from((0x0a00_0000 + n).to_be_bytes()));
        assert!(limiter.addresses() <= 500, "{} held after {n}", limiter.addresses());
        assert!(limiter.addresses.load().capacity() <= 500);
    }
    assert!(limiter.forgotten_early() >= 19_500, "{} forgotten early", limiter.forgotten_early());
    // A busy address in the flood keeps being limited: its state is recent, so it stays.
    let busy: IpAddr = "192.0.2.1".parse().unwrap();
    let refused = (0..10).filter(|_| limiter.check(busy).is_err()).count();
    assert_eq!(refused, 8);
}

#[test]
fn the_memory_a_flood_took_is_given_back_once_it_is_over() {
    let clock = FakeRelativeClock::default();
    let limiter = IpLimiter::with_clock(Rate { per_second: 1.0, burst: 2 }, 200_000, clock.clone());
    let held = |limiter: &IpLimiter<FakeRelativeClock>| {
        let used = limiter.addresses.load().memory_used();
        used.entries + used.map
    };
    let idle = held(&limiter);
    let mut after_each = Vec::new();
    for flood in 0..3u32 {
        for n in 0..150_000u32 {
            let _ = limiter.check(IpAddr::from((flood << 24 | n).to_be_bytes()));
        }
        assert!(held(&limiter) > idle + (1 << 20), "the flood grew the map");
        clock.advance(Duration::from_secs(3));
        limiter.forget_idle();
        assert_eq!(limiter.addresses(), 0);
        after_each.push(held(&limiter));
    }
    // Without the fresh map, each flood leaves about 8.5 MB here (seen by disabling it).
    let given_back = after_each.iter().all(|&bytes| bytes <= idle + (64 << 10));
    assert!(given_back, "idle {idle} B, after floods {after_each:?}");
}

#[test]
fn a_successor_starts_empty_and_counts_on_from_its_predecessor() {
    let flood = |limiter: &IpLimiter, from: u32| {
        for n in from..from + 1000 {
            let _ = limiter.check(IpAddr::from((0x0a00_0000 + n).to_be_bytes()));
        }
    };
    let first = IpLimiter::new(Rate { per_second: 1.0, burst: 2 }, 100);
    flood(&first, 0);
    let before = first.forgotten_early();
    assert!(before >= 900, "{before} forgotten early");
    let next = IpLimiter::succeeding(&first, Rate { per_second: 2.0, burst: 4 }, 200);
    assert_eq!((next.addresses(), next.max_addresses()), (0, 200));
    assert_eq!(next.forgotten_early(), before);
    flood(&next, 1000);
    assert!(next.forgotten_early() >= before + 800, "{} after {before}", next.forgotten_early());
}

#[test]
fn the_bound_is_exact_for_any_max_addresses() {
    for max_addresses in [1, 7, 100, 500, 999, 1000, 4097, 100_001, 1_000_000] {
        let limiter = IpLimiter::new(Rate { per_second: 1.0, burst: 2 }, max_addresses);
        let held = limiter.addresses.load().capacity();
        assert!(held <= max_addresses as u64, "{held} held for a max_addresses of {max_addresses}");
        assert!(held + 64 >= max_addresses as u64, "only {held} held for {max_addresses}");
    }
}

#[test]
fn a_charge_at_an_instant_already_read_is_at_that_instant_not_the_clocks() {
    let limiter = IpLimiter::new(Rate { per_second: 1.0, burst: 2 }, 100);
    let client: IpAddr = "10.0.0.1".parse().unwrap();
    let start = std::time::Instant::now();
    assert!(limiter.check_at(client, start).is_ok() && limiter.check_at(client, start).is_ok());
    assert_eq!(limiter.check_at(client, start), Err(Limited { retry_after: 1, burst: 2 }));
    // A second on by the instant given (the clock has hardly moved): one request more.
    let later = start + Duration::from_secs(1);
    assert!(limiter.check_at(client, later).is_ok());
    assert_eq!(limiter.check_at(client, later), Err(Limited { retry_after: 1, burst: 2 }));
    // An instant a little behind the latest charge (another request's start) is charged too.
    assert!(limiter.check_at(client, start).is_err());
}
