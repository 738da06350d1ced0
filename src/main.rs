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
    let args = keygate::cli::Args::parse();
    std::process::exit(keygate::cli::run(args));
}
