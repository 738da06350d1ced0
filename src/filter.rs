//! The membership filter, asked by the lookup when the cache has no answer: is this key id
//! possibly known at all?
//!
//! Negative caching stops repeats of one bad key, not a fresh random key per request. So each
//! gateway keeps a membership filter of every key id in the store, and a key outside it is
//! unknown without a store read. A false positive costs one store read, never a wrong answer.
//!
//! The filter is a split-block Bloom filter: 256-bit blocks of eight 32-bit words, one bit set
//! per word, so a lookup touches one cache line. At the default 12 bits per key, with the
//! filter sized for a quarter more keys than it holds, its measured false-positive rate is about
//! 0.2% at 1.9 bytes per key (18.8 MB for 10 million keys; `cargo bench --bench decision`). It
//! takes inserts (announced keys) without a lock: the words are atomics.
//!
//! It only ever rejects while it can be trusted to be complete: built at least once, and with
//! the announcement channel unbroken since its build began. Until then, and whenever
//! announcements may have been missed, every key goes on to the cache and store as before.
//! Nothing else distrusts it: not a store that stops answering lookups, nor a rebuild that
//! fails (a frozen or unreachable store), since with the channel unbroken every key written
//! since the last build was announced and is in the filter already.

pub mod rebuild;

use crate::key::KeyId;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// One multiplier per word of a block, odd constants that spread a 32-bit hash into eight
/// independent bit positions (those of the Parquet split-block Bloom filter specification).
const SALT: [u32; 8] =
    [0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31];

/// Room for keys added by announcements before the next rebuild sizes the filter anew.
const GROWTH: f64 = 1.25;
const MIN_KEYS: usize = 1024;

type Block = [AtomicU32; 8];

/// A split-block Bloom filter over key ids.
pub struct Bloom {
    blocks: Box<[Block]>,
    /// Ids inserted, for the size metric.
    len: AtomicU64,
}

impl Bloom {
    /// A filter sized for `keys` ids at `bits_per_key`.
    pub fn new(keys: usize, bits_per_key: u32) -> Self {
        let bits = (keys.max(MIN_KEYS) as f64 * GROWTH) as u64 * u64::from(bits_per_key);
        let blocks = bits.div_ceil(256).max(1) as usize;
        Bloom { blocks: (0..blocks).map(|_| Default::default()).collect(), len: AtomicU64::new(0) }
    }

    /// The block and the in-block hash of `id`. The id is already a SHA-256, so its bytes are
    /// uniformly distributed: no further hashing is needed.
    fn locate(&self, id: &KeyId) -> (&Block, u32) {
        let bytes = id.as_bytes();
        let high = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
        let low = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        // Multiply-shift maps the hash onto the block count without a division.
        let index = ((u128::from(high) * self.blocks.len() as u128) >> 64) as usize;
        (&self.blocks[index], low)
    }

    fn bit(hash: u32, word: usize) -> u32 {
        1 << (hash.wrapping_mul(SALT[word]) >> 27)
    }

    pub fn insert(&self, id: &KeyId) {
        let (block, hash) = self.locate(id);
        for (word, cell) in block.iter().enumerate() {
            cell.fetch_or(Self::bit(hash, word), Ordering::Relaxed);
        }
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    pub fn contains(&self, id: &KeyId) -> bool {
        let (block, hash) = self.locate(id);
        block.iter().enumerate().all(|(word, cell)| {
            let bit = Self::bit(hash, word);
            cell.load(Ordering::Relaxed) & bit == bit
        })
    }

    pub fn ids_inserted(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
    }
}

#[derive(Default)]
struct Channel {
    /// Counts breaks and resumptions of the channel, and announcements of everything; a build
    /// that saw it change cannot be trusted.
    epoch: u64,
    /// Whether the channel is up now.
    listening: bool,
}

/// The filter's settings (the config's `filter:` section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterConfig {
    pub enabled: bool,
    pub rebuild_interval: std::time::Duration,
    pub bits_per_key: u32,
    /// Keys asked for per SCAN call.
    pub scan_batch: usize,
    /// The pause between SCAN calls, so a rebuild never hammers the store.
    pub scan_pause: std::time::Duration,
}

impl Default for FilterConfig {
    /// The config's defaults, written once in [`FilterFile`](crate::config::file::FilterFile).
    fn default() -> Self {
        crate::config::file::FilterFile::default().into()
    }
}

/// The filter and what it takes to trust it.
pub struct KeyFilter {
    pub config: FilterConfig,
    current: RwLock<Option<Arc<Bloom>>>,
    /// Whether the current filter may reject: built, and no announcement missed since its
    /// build began. Read on the request path; written only under `channel`.
    trusted: AtomicBool,
    /// The announcement channel's state. Every change of trust happens under this lock, so a
    /// rebuild finishing can never trust a filter that a break has just distrusted.
    channel: Mutex<Channel>,
    /// While a rebuild runs: the ids announced meanwhile, added to the new filter before it is
    /// swapped in, so no announcement is lost by the swap.
    pending: Mutex<Option<Vec<KeyId>>>,
    /// When the current filter was built; before the first build, when this one was made, so
    /// the age metric never shows a filter that does not exist as fresh.
    built_at: Mutex<Instant>,
    /// Wakes the rebuild task early (after a resumption, or an announcement of everything).
    pub rebuild_now: tokio::sync::Notify,
}

impl KeyFilter {
    pub fn new(config: FilterConfig) -> Self {
        KeyFilter {
            config,
            current: RwLock::new(None),
            trusted: AtomicBool::new(false),
            channel: Mutex::new(Channel::default()),
            pending: Mutex::new(None),
            built_at: Mutex::new(Instant::now()),
            rebuild_now: tokio::sync::Notify::new(),
        }
    }

    /// True only when the filter is trusted and `id` is certainly not in the store.
    pub fn excludes(&self, id: &KeyId) -> bool {
        if !self.config.enabled || !self.trusted.load(Ordering::Acquire) {
            return false;
        }
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().is_some_and(|bloom| !bloom.contains(id))
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Whether the announcement channel is up now.
    pub fn is_listening(&self) -> bool {
        self.lock_channel().listening
    }

    /// An id was announced: it may be new, so it goes into the filter (and into the next one,
    /// if a rebuild is under way).
    pub fn announced(&self, id: &KeyId) {
        let mut pending = self.lock_pending();
        if let Some(bloom) = self.current.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            bloom.insert(id);
        }
        if let Some(ids) = pending.as_mut() {
            ids.push(*id);
        }
    }

    /// `*` was announced: any number of keys may be new, even ones a running rebuild has
    /// scanned past. Nothing is rejected until a rebuild that begins after this.
    pub fn announced_everything(&self) {
        self.distrust(None);
        self.rebuild_now.notify_one();
    }

    /// The announcement channel broke: announcements may be missed from now on.
    pub fn channel_lost(&self) {
        self.distrust(Some(false));
    }

    /// The announcement channel is (back) up: a rebuild from now on can be trusted.
    pub fn channel_resumed(&self) {
        self.distrust(Some(true));
        self.rebuild_now.notify_one();
    }

    fn distrust(&self, listening: Option<bool>) {
        let mut channel = self.lock_channel();
        channel.epoch += 1;
        if let Some(listening) = listening {
            channel.listening = listening;
        }
        self.trusted.store(false, Ordering::Release);
    }

    /// Starts a rebuild: returns what `finish_rebuild` needs to judge it.
    pub fn begin_rebuild(&self) -> RebuildTicket {
        *self.lock_pending() = Some(Vec::new());
        let channel = self.lock_channel();
        RebuildTicket { epoch: channel.epoch, listening: channel.listening }
    }

    /// Swaps in a freshly built filter, with every id announced during the build added.
    pub fn finish_rebuild(&self, ticket: RebuildTicket, bloom: Bloom) {
        let mut pending = self.lock_pending();
        for id in pending.take().unwrap_or_default() {
            bloom.insert(&id);
        }
        let old = self.current.write().unwrap_or_else(|e| e.into_inner()).replace(Arc::new(bloom));
        *self.built_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let channel = self.lock_channel();
        let unbroken = ticket.listening && ticket.epoch == channel.epoch;
        self.trusted.store(unbroken, Ordering::Release);
        drop((channel, pending));
        // Freed after the locks (megabytes at millions of keys): announcements wait for none of it.
        drop(old);
    }

    /// A rebuild failed: the current filter stays as it is, trusted or not. Announcements go
    /// on being added to it, so while the channel is unbroken it misses nothing a rebuild
    /// would have found (but keys written without an announcement, as between rebuilds).
    pub fn abandon_rebuild(&self) {
        *self.lock_pending() = None;
    }

    /// Ids held, bytes used, and seconds since the last build; for the metrics.
    pub fn stats(&self) -> (u64, usize, f64) {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let (len, bytes) = current.as_ref().map_or((0, 0), |b| (b.ids_inserted(), b.bytes()));
        let age = self.built_at.lock().unwrap_or_else(|e| e.into_inner()).elapsed().as_secs_f64();
        (len, bytes, age)
    }

    fn lock_channel(&self) -> std::sync::MutexGuard<'_, Channel> {
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<Vec<KeyId>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a rebuild saw of the announcement channel when it began.
pub struct RebuildTicket {
    epoch: u64,
    listening: bool,
}

#[cfg(test)]
mod tests;
