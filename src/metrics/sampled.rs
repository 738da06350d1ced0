//! Gauges read when scraped. A subsystem registers, next to its own code, how to read its size
//! (cache entries, filter bits, addresses held, peers' health); the admin endpoint then serves
//! every metric without knowing any of them.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

/// A metric that `sample` brings up to date each time it is collected.
pub struct Sampled<M> {
    metric: M,
    sample: Box<dyn Fn(&M) + Send + Sync>,
}

impl<M> Sampled<M> {
    pub fn new(metric: M, sample: impl Fn(&M) + Send + Sync + 'static) -> Self {
        Sampled { metric, sample: Box::new(sample) }
    }
}

impl<M: Collector> Collector for Sampled<M> {
    fn desc(&self) -> Vec<&Desc> {
        self.metric.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        (self.sample)(&self.metric);
        self.metric.collect()
    }
}
