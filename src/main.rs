//! The `keygate` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = keygate::cli::Args::parse();
    std::process::exit(keygate::cli::run(args));
}
