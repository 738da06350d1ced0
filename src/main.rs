//! The `keygate` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() {
    keygate::logging::init();
    let args = keygate::cli::Args::parse();
    std::process::exit(keygate::cli::run(args));
}
