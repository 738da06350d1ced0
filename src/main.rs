//! The `keygate` binary: parses the command line and hands over to the library.

use clap::Parser;

/// mimalloc instead of the system allocator: Pingora's proxy path allocates per request, and
/// glibc's malloc showed up in profiles (see the README's performance section for the gain).
/// Built without transparent huge pages (`no_thp`): with them, mimalloc's arena grew resident
/// memory in 2 MiB steps, and a process that needs 3 MB of heap held 19 MB.
/// Without the `mimalloc` feature, the system allocator, which heap profilers such as heaptrack
/// can follow.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    keygate::logging::init();
    #[cfg(feature = "mimalloc")]
    give_memory_back();
    let args = keygate::cli::Args::parse();
    std::process::exit(keygate::cli::run(args));
}

/// How often freed memory is handed back to the system, at the latest.
#[cfg(feature = "mimalloc")]
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Memory a flood took comes back once it is over. mimalloc returns freed memory to the system
/// a delay (1 s) after it was freed, but only when some thread next calls into it: a worker
/// that goes idle after a flood never does, and its share stayed resident until some later
/// call happened to purge it (33 MiB over idle after each 5 s flood at 100k req/s in
/// `benches/flood.sh`; in `tests/keygate/memory_bounds.rs`, all of it still 10 s after the
/// sweep). So a thread of ours asks mimalloc each second to purge what is past its delay
/// (`mi_collect(false)`, not forced: what was freed under a second ago, perhaps to be reused
/// at once, stays). Then it comes back within about 2 s, to within 2-5 MiB of idle. Not
/// `MIMALLOC_PURGE_DELAY=0` instead: that purges on every free, in the request path, and cost
/// the flood's requests up to twice the CPU in an interleaved comparison (README, Sizing).
#[cfg(feature = "mimalloc")]
fn give_memory_back() {
    let purge = || {
        // A thread that has not allocated yet has no mimalloc state, and then `mi_collect`
        // does nothing at all.
        // SAFETY: both are plain calls into mimalloc, valid from any thread at any time.
        unsafe { libmimalloc_sys::mi_thread_init() };
        loop {
            std::thread::sleep(PURGE_EVERY);
            // SAFETY: as above.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    };
    if let Err(e) = std::thread::Builder::new().name("keygate-purge".into()).spawn(purge) {
        log::warn!("memory freed will be given back to the system later than usual: {e}");
    }
}
