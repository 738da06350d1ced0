use super::*;
use crate::key::ApiKey;

fn id(n: usize) -> KeyId {
    ApiKey::from_cli(&format!("key-{n}")).id()
}

fn config() -> FilterConfig {
    FilterConfig::default()
}

fn built(ids: std::ops::Range<usize>, filter: &KeyFilter) {
    let ticket = filter.begin_rebuild();
    let bloom = Bloom::new(ids.len(), 12);
    ids.for_each(|n| bloom.insert(&id(n)));
    filter.finish_rebuild(ticket, bloom);
}

#[test]
fn no_false_negatives_and_under_one_percent_false_positives_at_under_4_bytes_a_key() {
    let keys = 100_000;
    let bloom = Bloom::new(keys, 12);
    (0..keys).for_each(|n| bloom.insert(&id(n)));
    assert!((0..keys).all(|n| bloom.contains(&id(n))));
    let false_positives = (keys..keys * 2).filter(|n| bloom.contains(&id(*n))).count();
    let rate = false_positives as f64 / keys as f64;
    assert!(rate < 0.01, "false-positive rate {rate}");
    let bytes_per_key = bloom.bytes() as f64 / keys as f64;
    assert!(bytes_per_key <= 4.0, "{bytes_per_key} bytes per key");
}

#[test]
fn nothing_is_rejected_before_the_first_build_or_without_the_channel() {
    let filter = KeyFilter::new(config());
    assert!(!filter.excludes(&id(1)), "not built yet");
    built(0..10, &filter);
    assert!(!filter.excludes(&id(1_000)), "built while not listening: not trusted");
    filter.channel_resumed();
    built(0..10, &filter);
    assert!(filter.excludes(&id(1_000)));
    assert!(!filter.excludes(&id(5)));
    filter.channel_lost();
    assert!(!filter.excludes(&id(1_000)), "announcements may be missed now");
}

#[test]
fn a_build_that_saw_the_channel_break_is_not_trusted() {
    let filter = KeyFilter::new(config());
    filter.channel_resumed();
    let ticket = filter.begin_rebuild();
    filter.channel_lost();
    filter.channel_resumed();
    filter.finish_rebuild(ticket, Bloom::new(10, 12));
    assert!(!filter.is_trusted());
}

#[test]
fn announcing_everything_during_a_rebuild_leaves_its_filter_untrusted() {
    let filter = KeyFilter::new(config());
    filter.channel_resumed();
    let ticket = filter.begin_rebuild();
    filter.announced_everything();
    filter.finish_rebuild(ticket, Bloom::new(10, 12));
    assert!(!filter.is_trusted(), "keys written behind the scan would be rejected");
}

#[test]
fn a_key_announced_during_a_rebuild_survives_the_swap() {
    let filter = KeyFilter::new(config());
    filter.channel_resumed();
    built(0..10, &filter);
    let ticket = filter.begin_rebuild();
    let bloom = Bloom::new(10, 12);
    (0..10).for_each(|n| bloom.insert(&id(n)));
    filter.announced(&id(77)); // arrives after the scan passed it
    assert!(!filter.excludes(&id(77)), "the running filter has it at once");
    filter.finish_rebuild(ticket, bloom);
    assert!(filter.is_trusted());
    assert!(!filter.excludes(&id(77)), "and so does the new one");
}

#[test]
fn announcing_everything_stops_rejections_and_a_failed_rebuild_changes_no_trust() {
    let filter = KeyFilter::new(config());
    filter.channel_resumed();
    built(0..10, &filter);
    filter.announced_everything();
    assert!(!filter.excludes(&id(1_000)));
    let _ticket = filter.begin_rebuild();
    filter.abandon_rebuild();
    assert!(!filter.excludes(&id(1_000)), "a failed rebuild trusted a filter the channel had not");
    built(0..10, &filter);
    assert!(filter.excludes(&id(1_000)));
    let _ticket = filter.begin_rebuild();
    filter.announced(&id(500)); // announced while the failing rebuild ran
    filter.abandon_rebuild();
    assert!(filter.excludes(&id(1_000)), "the channel had no gap: the last view is still exact");
    assert!(!filter.excludes(&id(500)));
    filter.channel_lost();
    assert!(!filter.excludes(&id(1_000)));
}

#[test]
fn a_disabled_filter_never_rejects() {
    let filter = KeyFilter::new(FilterConfig { enabled: false, ..config() });
    filter.channel_resumed();
    built(0..10, &filter);
    assert!(!filter.excludes(&id(1_000)));
}
