//! Keeps the membership filter current: built at start, rebuilt on an interval, at once after
//! the announcement channel resumes or `*` is announced, and retried with backoff after a
//! failure. A rebuild scans the store in paced batches on the background runtime, so it never
//! stalls request handling nor hammers the store.

use super::Bloom;
use crate::lookup::KeyLookup;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Runs for ever.
pub async fn maintain(lookup: Arc<KeyLookup>, metrics: Arc<Metrics>) {
    let mut retry = FIRST_RETRY;
    loop {
        let wait = match rebuild(&lookup).await {
            Ok(count) => {
                log::info!(
                    "membership filter built: {count} key ids, trusted: {}",
                    lookup.filter.is_trusted()
                );
                metrics.filter_rebuild(true);
                retry = FIRST_RETRY;
                lookup.filter.config.rebuild_interval
            }
            Err(e) => {
                log::warn!("membership filter rebuild failed ({e}); rejecting nothing until one succeeds");
                metrics.filter_rebuild(false);
                retry = (retry * 2).min(MAX_RETRY);
                retry / 2
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = lookup.filter.rebuild_now.notified() => {}
        }
    }
}

async fn rebuild(lookup: &KeyLookup) -> Result<usize, crate::store::StoreError> {
    let filter = &lookup.filter;
    let ticket = filter.begin_rebuild();
    let scanned = async {
        let hint = lookup.store().count_hint().await?;
        let bloom = Bloom::new(hint, filter.config.bits_per_key);
        let (batch, pause) = (filter.config.scan_batch, filter.config.scan_pause);
        let count = lookup.store().scan_ids(batch, pause, &mut |id| bloom.insert(&id)).await?;
        Ok((bloom, count))
    };
    match scanned.await {
        Ok((bloom, count)) => {
            filter.finish_rebuild(ticket, bloom);
            Ok(count)
        }
        Err(e) => {
            filter.abandon_rebuild();
            Err(e)
        }
    }
}
