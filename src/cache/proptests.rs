//! The cache against a model: under any sequence of learning, forgetting and time passing, it
//! answers what the model says, and never holds a key as both known and unknown.

use super::*;
use crate::config::{CacheConfig, Rate};
use crate::key::ApiKey;
use crate::store::KeyRecord;
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Op {
    Known(u8),
    Unknown(u8),
    Forget(u8),
    ForgetAll,
    Distrust,
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(|k| Op::Known(k % 16)),
        any::<u8>().prop_map(|k| Op::Unknown(k % 16)),
        any::<u8>().prop_map(|k| Op::Forget(k % 16)),
        Just(Op::ForgetAll),
        Just(Op::Distrust),
        (0u16..400).prop_map(Op::Wait),
    ]
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Model {
    /// Known, learnt this many seconds ago, trusted (false after a distrust).
    Known(u64, bool),
    Unknown(u64),
}

const TTL: u64 = 100;
const NEGATIVE_TTL: u64 = 30;
const STALE: u64 = 200;

/// How long the model holds a known key fresh, worked out here rather than asked of the cache:
/// `TTL` less up to a tenth, by the last byte of the key's id, in 2560ths of `TTL`
/// (100 s / 2560 = 39.0625 ms a step, so byte 255 leaves 90.039 s).
fn fresh_for(id: &KeyId) -> Duration {
    let step_nanos = TTL * 1_000_000_000 / 2560;
    Duration::from_nanos(TTL * 1_000_000_000 - step_nanos * u64::from(id.as_bytes()[31]))
}

proptest! {
    #[test]
    fn the_cache_answers_as_its_model(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let config = CacheConfig {
                capacity: 1000,
                negative_capacity: 1000,
                ttl: Duration::from_secs(TTL),
                negative_ttl: Duration::from_secs(NEGATIVE_TTL),
                stale: Duration::from_secs(STALE),
            };
            let cache = KeyCache::new(&config);
            let id = |k: u8| ApiKey::from_cli(&format!("key-{k}")).id();
            let grant = || Grant::for_record(&KeyRecord::active("a"), Rate { per_second: 1.0, burst: 1 }, None);
            let mut model: HashMap<u8, Model> = HashMap::new();
            for op in ops {
                match op {
                    Op::Known(k) => { cache.remember_known(id(k), grant()); model.insert(k, Model::Known(0, true)); }
                    Op::Unknown(k) => { cache.remember_unknown(id(k)); model.insert(k, Model::Unknown(0)); }
                    Op::Forget(k) => { cache.forget(&id(k)); model.remove(&k); }
                    Op::ForgetAll => { cache.forget_all(); model.clear(); }
                    Op::Distrust => {
                        cache.distrust_all();
                        model.retain(|_, m| matches!(m, Model::Known(..)));
                        model.values_mut().for_each(|m| if let Model::Known(_, trusted) = m { *trusted = false });
                    }
                    Op::Wait(seconds) => {
                        tokio::time::advance(Duration::from_secs(seconds.into())).await;
                        model.values_mut().for_each(|m| match m {
                            Model::Known(age, _) | Model::Unknown(age) => *age += u64::from(seconds),
                        });
                    }
                }
                for k in 0..16u8 {
                    let answer = match cache.get(&id(k), &config) {
                        Cached::Fresh(_) => "fresh",
                        Cached::Stale { .. } => "stale",
                        Cached::Unknown => "unknown",
                        Cached::Miss => "miss",
                    };
                    let expected = match model.get(&k) {
                        Some(Model::Known(age, true)) if Duration::from_secs(*age) < fresh_for(&id(k)) => "fresh",
                        Some(Model::Known(age, _)) if *age < TTL + STALE => "stale",
                        Some(Model::Unknown(age)) if *age < NEGATIVE_TTL => "unknown",
                        _ => "miss",
                    };
                    prop_assert_eq!(answer, expected, "key {} after {:?}", k, model.get(&k));
                }
            }
            Ok(())
        })?;
    }
}
